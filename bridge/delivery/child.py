"""The delivery process's work, run by `bridge.delivery.child_main` (its entry point) only.

Reads the settings, then items, from the socket it was handed; performs each item in its own
task (the serving process sends a lane's next item only after the last one settled, so order
holds); answers with what each attempt did. It only reads the database. Once it can take items
(the database and the outside HTTP session open) it says READY; the serving process sends none
before that.

It exits as soon as the socket closes (the serving process stopped or died), whatever it is
doing: waiting for the settings, opening the database, or performing items. Settings that do
not arrive within SETTINGS_TIMEOUT end it too (exit code EXIT_NO_SETTINGS).
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Collection
from typing import Any

import structlog

from bridge.core.model import Retry
from bridge.core.tasks import cancel_and_wait
from bridge.delivery.calls import CallResult, LocalCaller
from bridge.delivery.link import READY, Link, connect
from bridge.logs import configure_logging
from bridge.loop import new_event_loop
from bridge.settings import Settings
from connectors import http as outside
from connectors.registry import build_connectors
from storage.open import build_reader
from storage.outbox import OutboxItem

log = structlog.get_logger("delivery.process")

SETTINGS_TIMEOUT = 30.0  # seconds; the serving process sends them right after starting us
EXIT_NO_SETTINGS = 4


class NoSettings(Exception):
    """The settings did not arrive within SETTINGS_TIMEOUT."""


class ChildLoop:
    """Takes the serving process's messages: the settings first, then items and the set of
    active channels (which come only after this process said READY)."""

    def __init__(self) -> None:
        self.settings: asyncio.Future[Settings] = asyncio.get_running_loop().create_future()
        self.link: Link | None = None
        self.caller: LocalCaller | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._active: Collection[str] = frozenset()

    def received(self, message: Any) -> None:
        if isinstance(message, Settings):
            self.settings.set_result(message)
        elif message[0] == "active":
            self._active = message[1]
        else:
            task = asyncio.create_task(self._one(message[1], message[2], self._active))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _one(self, seq: int, item: OutboxItem, active: Collection[str]) -> None:
        assert self.caller is not None and self.link is not None
        try:
            done = await self.caller.call(item, active)
        except Exception as exc:
            log.exception("delivery.attempt_crashed", item=item.id, kind=item.kind)
            done = CallResult(Retry(f"internal error: {type(exc).__name__}"))
        # Dropped if the serving process is gone: the item stays in its outbox, to be sent again.
        self.link.send((seq, done))

    async def run(self, link: Link) -> None:
        """Every stage of the work, until cancelled (the socket closed)."""
        try:
            async with asyncio.timeout(SETTINGS_TIMEOUT):
                settings = await self.settings
        except TimeoutError:
            raise NoSettings from None
        configure_logging(settings.logging, settings.secrets())
        db = build_reader(settings.storage)
        assert db is not None  # a delivery process runs only beside a database file
        try:
            await db.open_reader()
            async with outside.session(settings.delivery) as http:
                connectors = build_connectors(settings.livechats, settings.messengers, http)
                self.caller = LocalCaller(db, settings, http, connectors)
                link.send(READY)
                try:
                    await asyncio.get_running_loop().create_future()  # until cancelled
                finally:  # before the session closes under them
                    for task in list(self.tasks):
                        task.cancel()
                    await asyncio.gather(*self.tasks, return_exceptions=True)
        finally:
            await db.close()


async def serve(sock: socket.socket) -> None:
    """Runs the work until the socket closes. Raises NoSettings."""
    child_loop = ChildLoop()
    link = child_loop.link = await connect(sock, child_loop.received)
    work = asyncio.ensure_future(child_loop.run(link))
    try:
        await asyncio.wait([work, link.closed], return_when=asyncio.FIRST_COMPLETED)
    finally:
        try:
            await cancel_and_wait(work)
        finally:
            link.close()


def main(fd: int, event_loop: str) -> None:
    sock = socket.socket(fileno=fd)
    loop = new_event_loop(event_loop)
    try:
        loop.run_until_complete(serve(sock))
    except NoSettings:
        sys.exit(EXIT_NO_SETTINGS)
    finally:
        loop.close()
