"""What the JSON admin API and the admin console both decide: a channel as an admin sees it, an
admin action on a channel, a session id taken from a path, an event linked by hand.

Times stay Unix seconds (floats) here; each surface formats them its own way (ISO 8601 in JSON,
a readable UTC time in the console).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from aiohttp import web

from bridge.channels import ChannelManager
from bridge.core.model import LiveChatEvent
from bridge.deadletters import Report, UnknownItem
from bridge.errors import ApiError, BadRequest, Conflict, NotFound
from bridge.keys import DEAD_LETTERS, LIVECHATS, RELAY
from bridge.relay import HandLink
from bridge.settings import Settings
from storage import outbox
from storage.outbox import Scope
from storage.port import Store

ChannelAction = Literal["connect", "disconnect", "reconnect"]

SQLITE_MAX_INTEGER = 2**63 - 1


def whole_number(raw: str) -> int | None:
    """`raw` as a whole number written in ASCII digits, or None. str.isdigit() alone also takes
    digits int() refuses ("²") and lengths it refuses (over 4300 digits)."""
    if not (raw.isascii() and raw.isdigit()):
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def row_id(raw: str) -> int | None:
    """A row id from a path (`/sessions/{id}`), or None when no row can have it: SQLite cannot
    even bind a number over its largest integer."""
    value = whole_number(raw)
    return value if value is not None and value <= SQLITE_MAX_INTEGER else None


def channel_view(
    settings: Settings, channels: ChannelManager, channel_id: str, held: int
) -> dict[str, Any]:
    """`{id, name, livechat, state, since (Unix s), last_error, enabled, held_messages}`;
    `channel_id` must be a configured messenger. No secret: the webhook URL and the
    confirmation code are left out."""
    messenger = settings.messengers[channel_id]
    row = channels.row(channel_id)
    return {
        "id": channel_id,
        "name": messenger.name,
        "livechat": messenger.livechat,
        "state": row.state,
        "since": row.since,
        "last_error": row.last_error,
        "enabled": row.enabled,
        "held_messages": held,
    }


async def channel_views(
    settings: Settings, channels: ChannelManager, db: Store
) -> list[dict[str, Any]]:
    """Every configured messenger channel's view, by id."""
    held = await outbox.pending_by_channel(db)
    return [
        channel_view(settings, channels, cid, held.get(cid, 0))
        for cid in sorted(settings.messengers)
    ]


async def act_on_channel(
    settings: Settings,
    channels: ChannelManager,
    db: Store,
    channel_id: str,
    action: ChannelAction,
) -> dict[str, Any]:
    """Run an admin's action and return the channel's view after its first attempt.

    `connect` leaves an active channel alone, `reconnect` sends `connect` even then,
    `disconnect` holds the channel's messages until it is connected again.
    """
    if action == "disconnect":
        await channels.disconnect(channel_id)
    else:
        await channels.connect(channel_id, force=action == "reconnect")
    held = await outbox.pending_by_channel(db)
    return channel_view(settings, channels, channel_id, held.get(channel_id, 0))


async def dead_letter_action(app: web.Application, action: str, scope: Scope) -> Report:
    """Retry (`action` "retry") or purge dead items through `DeadLetters`. Raises NotFound
    (`unknown_item`) for an item id that names nothing."""
    dead_letters = app[DEAD_LETTERS]
    try:
        if action == "retry":
            return await dead_letters.retry(scope)
        return await dead_letters.purge(scope)
    except UnknownItem:
        raise NotFound(
            "unknown_item", "no outbox item with this id (delivered items are deleted)"
        ) from None


HAND_LINK_ERRORS: dict[str, type[ApiError]] = {
    "unknown_event": NotFound,
    "unknown_session": NotFound,
    "already_linked": Conflict,
}


async def link_event(app: web.Application, event_id: int, session_id: int) -> HandLink:
    """An admin links an event (and the other unlinked events of its live-chat chat id, and
    that chat id) to a session; see `Relay.link_by_hand`. Raises NotFound (`unknown_event`,
    `unknown_session`) or BadRequest for a link the relay refuses."""
    livechats = app[LIVECHATS]

    def parse(livechat_id: str, payload: dict[str, Any]) -> list[LiveChatEvent]:
        connector = livechats.get(livechat_id)
        return [] if connector is None else connector.parse_hook(json.dumps(payload).encode())

    done = await app[RELAY].link_by_hand(event_id, session_id, parse)
    if done.error is not None:
        errcode, message = done.error
        raise HAND_LINK_ERRORS.get(errcode, BadRequest)(errcode, message)
    return done
