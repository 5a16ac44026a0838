"""Stopping background tasks: one way to cancel them and wait until they have ended."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel each of `tasks` (None: skipped; one already done: left as it is) and return once
    all have ended. A task that ended by its cancellation, or returned, is done with; one that
    failed raises its exception here (the first such in the order given, as awaiting each in
    turn would).

    Unlike `with suppress(CancelledError): await task`, a cancellation of the caller itself
    while it waits is not swallowed (that idiom cannot tell the task's CancelledError from the
    caller's): the tasks are still waited for to their end, then CancelledError is raised in the
    caller."""
    pending = [task for task in tasks if task is not None]
    if not pending:
        return
    for task in pending:
        task.cancel()
    interrupted = False
    while True:
        try:
            await asyncio.wait(pending)
            break
        except asyncio.CancelledError:  # ours, not a task's: asyncio.wait raises no task's
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError
    for task in pending:
        if not task.cancelled():
            task.result()
