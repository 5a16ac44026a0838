"""The console's buttons whose work other parts of the bridge provide: retrying and purging dead
letters (issue "Nothing lost, unattended for months") and linking an unlinked live-chat event to
a session by hand (issue "The live chats as they really are").

Each hook is an async function of the application, so it can reach the database, the clock and
the delivery worker as the JSON endpoint for the same action does. A hook left None shows its
button disabled, saying what it waits for, and its POST answers 404.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from bridge.deadletters import UnknownItem
from bridge.errors import NotFound
from bridge.keys import DEAD_LETTERS
from storage.outbox import Scope

# Item id -> True if it was dead and is now pending again (same item, same stable id).
RetryDead = Callable[[web.Application, int], Awaitable[bool]]
# -> how many dead items are pending again.
RetryAllDead = Callable[[web.Application], Awaitable[int]]
# One dead item's id, or None for every dead item -> how many were deleted.
PurgeDead = Callable[[web.Application, int | None], Awaitable[int]]
# (event id, session id) -> None; raises bridge.errors.ApiError when it refuses.
LinkEvent = Callable[[web.Application, int, int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Hooks:
    retry_dead: RetryDead | None = None
    retry_all_dead: RetryAllDead | None = None
    purge_dead: PurgeDead | None = None
    link_event: LinkEvent | None = None


HOOKS = web.AppKey("console_hooks", Hooks)


async def _retry_dead(app: web.Application, item_id: int) -> bool:
    try:
        report = await app[DEAD_LETTERS].retry(Scope(item_id=item_id))
    except UnknownItem:
        raise NotFound("unknown_item", "No outbox item with this id.") from None
    return bool(report.retried or report.adopted)


async def _retry_all_dead(app: web.Application) -> int:
    report = await app[DEAD_LETTERS].retry(Scope())
    return report.retried + report.adopted


async def _purge_dead(app: web.Application, item_id: int | None) -> int:
    try:
        return (await app[DEAD_LETTERS].purge(Scope(item_id=item_id))).purged
    except UnknownItem:
        raise NotFound("unknown_item", "No outbox item with this id.") from None


def wired_hooks() -> Hooks:
    """The hooks this build provides: dead letters through `DeadLetters` (the same work as the
    JSON endpoints `POST /admin/outbox/.../retry|purge`).

    TODO(integration, wt-livechats): link_event, over its manual link of an event to a session
    (raising NotFound / BadRequest as its JSON endpoint does).
    """
    return Hooks(retry_dead=_retry_dead, retry_all_dead=_retry_all_dead, purge_dead=_purge_dead)
