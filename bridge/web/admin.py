"""The admin API (`Authorization: Bearer <admin token>`): channels, sessions, outbox, events."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from bridge.errors import BadRequest, NotFound, Unauthenticated
from bridge.keys import CHANNELS, DATABASE, LIVECHATS, RELAY, SETTINGS
from bridge.model import LiveChatEvent
from bridge.secrets import same_secret
from bridge.web.common import read_body
from connectors.wire import json_object
from storage import chats, events, outbox

routes = web.RouteTableDef()


def _require_admin(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected = request.app[SETTINGS].admin.token.get_secret_value()
    if scheme.lower() != "bearer" or not same_secret(token.strip(), expected):
        raise Unauthenticated(
            "unauthorized", "missing or wrong admin token (Authorization: Bearer ...)"
        )


def _iso(ts: float | None) -> str | None:
    return (
        None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    )


SQLITE_MAX_INTEGER = 2**63 - 1


def _whole_number(raw: str) -> int | None:
    """`raw` as a whole number written in ASCII digits, or None. str.isdigit() alone also takes
    digits int() refuses ("²") and lengths it refuses (over 4300 digits)."""
    if not (raw.isascii() and raw.isdigit()):
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _limit(request: web.Request, default: int = 100) -> int:
    value = _whole_number(request.query.get("limit", str(default)))
    if value is None or not 1 <= value <= 1000:
        raise BadRequest("invalid_query", "limit: must be a whole number from 1 to 1000")
    return value


async def _channel_view(request: web.Request, channel_id: str, held: int) -> dict[str, Any]:
    messenger = request.app[SETTINGS].messengers[channel_id]
    row = request.app[CHANNELS].row(channel_id)
    return {
        "id": channel_id,
        "name": messenger.name,
        "livechat": messenger.livechat,
        "state": row.state,
        "since": _iso(row.since),
        "last_error": row.last_error,
        "enabled": row.enabled,
        "held_messages": held,
    }


@routes.get("/admin/channels")
async def list_channels(request: web.Request) -> web.Response:
    _require_admin(request)
    held = await outbox.pending_by_channel(request.app[DATABASE])
    views = [
        await _channel_view(request, cid, held.get(cid, 0))
        for cid in sorted(request.app[SETTINGS].messengers)
    ]
    return web.json_response({"channels": views})


@routes.post(r"/admin/messengers/{channel_id}/{action:connect|disconnect|reconnect}")
async def channel_action(request: web.Request) -> web.Response:
    _require_admin(request)
    channel_id = request.match_info["channel_id"]
    if channel_id not in request.app[SETTINGS].messengers:
        raise NotFound("unknown_channel", "no messenger channel with this id")
    channels = request.app[CHANNELS]
    action = request.match_info["action"]
    if action == "disconnect":
        await channels.disconnect(channel_id)
    else:
        await channels.connect(channel_id, force=action == "reconnect")
    held = await outbox.pending_by_channel(request.app[DATABASE])
    return web.json_response(await _channel_view(request, channel_id, held.get(channel_id, 0)))


@routes.get("/admin/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    _require_admin(request)
    messenger = request.query.get("messenger")
    if messenger is not None and messenger not in request.app[SETTINGS].messengers:
        raise NotFound("unknown_channel", "no messenger channel with this id")
    status = request.query.get("status")
    if status not in (None, "open", "closed"):
        raise BadRequest("invalid_query", "status: must be 'open' or 'closed'")
    rows = await chats.list_sessions(request.app[DATABASE], messenger, status, _limit(request))
    for row in rows:
        row["opened_at"], row["closed_at"] = _iso(row["opened_at"]), _iso(row["closed_at"])
    return web.json_response({"sessions": rows})


@routes.get(r"/admin/sessions/{session_id:[0-9]+}")
async def session_detail(request: web.Request) -> web.Response:
    _require_admin(request)
    session_id = _whole_number(request.match_info["session_id"])
    if session_id is None or session_id > SQLITE_MAX_INTEGER:  # SQLite cannot even bind it
        raise NotFound("unknown_session", "no session with this id")
    detail = await chats.session_detail(request.app[DATABASE], session_id)
    if detail is None:
        raise NotFound("unknown_session", "no session with this id")
    for key in ("opened_at", "closed_at"):
        detail[key] = _iso(detail[key])
    for message in detail["messages"]:
        message["created_at"] = _iso(message["created_at"])
    return web.json_response(detail)


@routes.get("/admin/outbox")
async def list_outbox(request: web.Request) -> web.Response:
    _require_admin(request)
    status = request.query.get("status", "dead")
    if status not in ("pending", "dead"):
        raise BadRequest("invalid_query", "status: must be 'pending' or 'dead'")
    db = request.app[DATABASE]
    rows = await outbox.list_items(db, status, _limit(request))
    for row in rows:
        for key in ("next_attempt_at", "created_at", "updated_at"):
            row[key] = _iso(row[key])
    return web.json_response({"depth": await outbox.depth(db), "items": rows})


@routes.get("/admin/events")
async def list_events(request: web.Request) -> web.Response:
    _require_admin(request)
    livechat = request.query.get("livechat")
    if livechat is not None and livechat not in request.app[SETTINGS].livechats:
        raise NotFound("unknown_livechat", "no live chat with this id")
    unlinked = request.query.get("unlinked", "0")
    if unlinked not in ("0", "1"):
        raise BadRequest("invalid_query", "unlinked: must be 0 or 1")
    rows = await events.list_events(
        request.app[DATABASE],
        livechat,
        request.query.get("event"),
        _limit(request),
        unlinked=unlinked == "1",
    )
    for row in rows:
        row["received_at"] = _iso(row["received_at"])
    return web.json_response({"events": rows})


HAND_LINK_ERRORS = {"unknown_event": NotFound, "unknown_session": NotFound}


@routes.post(r"/admin/events/{event_id:[0-9]+}/link")
async def link_event(request: web.Request) -> web.Response:
    """Link an event, the other unlinked events of its live-chat chat id, and that chat id,
    to a session: body `{"session_id": <int>}`."""
    _require_admin(request)
    event_id = _whole_number(request.match_info["event_id"])
    if event_id is None or event_id > SQLITE_MAX_INTEGER:
        raise NotFound("unknown_event", "no event with this id")
    doc = json_object(await read_body(request))
    session_id = doc.get("session_id")
    if "session_id" not in doc:
        raise BadRequest("missing_field", "session_id: required")
    if type(session_id) is not int or not 1 <= session_id <= SQLITE_MAX_INTEGER:
        raise BadRequest("invalid_field", "session_id: must be a session's id (an integer)")
    livechats = request.app[LIVECHATS]

    def parse(livechat_id: str, payload: dict[str, Any]) -> list[LiveChatEvent]:
        connector = livechats.get(livechat_id)
        return [] if connector is None else connector.parse_hook(json.dumps(payload).encode())

    done = await request.app[RELAY].link_by_hand(event_id, session_id, parse)
    if done.error is not None:
        errcode, message = done.error
        raise HAND_LINK_ERRORS.get(errcode, BadRequest)(errcode, message)
    return web.json_response(
        {
            "session_id": session_id,
            "events": list(done.events),
            "remote_chat_id": done.remote_chat_id,
        }
    )
