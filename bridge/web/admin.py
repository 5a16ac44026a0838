"""The admin API (`Authorization: Bearer <admin token>`): channels, sessions, outbox and its
dead letters, events."""

from __future__ import annotations

import time
from typing import cast

from aiohttp import web
from pydantic import ValidationError

from bridge.deadletters import Report
from bridge.errors import BadRequest, NotFound, Unauthenticated
from bridge.keys import CHANNELS, DATABASE, SETTINGS
from bridge.secrets import same_secret
from bridge.web import schemas, views
from bridge.web.common import read_body
from bridge.web.schemas import answer
from bridge.web.views import (
    ChannelAction,
    act_on_channel,
    channel_views,
    row_id,
    whole_number,
)
from connectors.wire import json_object
from storage import channels as channel_rows
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


def _limit(request: web.Request, default: int = 100) -> int:
    value = whole_number(request.query.get("limit", str(default)))
    if value is None or not 1 <= value <= 1000:
        raise BadRequest("invalid_query", "limit: must be a whole number from 1 to 1000")
    return value


@routes.get("/admin/channels")
async def list_channels(request: web.Request) -> web.Response:
    _require_admin(request)
    app = request.app
    views = await channel_views(app[SETTINGS], app[CHANNELS], app[DATABASE])
    return answer(schemas.ChannelList.model_validate({"channels": views}))


@routes.post(r"/admin/messengers/{channel_id}/{action:connect|disconnect|reconnect}")
async def channel_action(request: web.Request) -> web.Response:
    _require_admin(request)
    channel_id = request.match_info["channel_id"]
    if channel_id not in request.app[SETTINGS].messengers:
        raise NotFound("unknown_channel", "no messenger channel with this id")
    app, action = request.app, cast(ChannelAction, request.match_info["action"])
    view = await act_on_channel(app[SETTINGS], app[CHANNELS], app[DATABASE], channel_id, action)
    return answer(schemas.Channel.model_validate(view))


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
    return answer(schemas.SessionList.model_validate({"sessions": rows}))


@routes.get(r"/admin/sessions/{session_id:[0-9]+}")
async def session_detail(request: web.Request) -> web.Response:
    _require_admin(request)
    session_id = row_id(request.match_info["session_id"])
    if session_id is None:
        raise NotFound("unknown_session", "no session with this id")
    detail = await chats.session_detail(request.app[DATABASE], session_id)
    if detail is None:
        raise NotFound("unknown_session", "no session with this id")
    return answer(schemas.SessionDetail.model_validate(detail))


async def _scope(request: web.Request) -> outbox.Scope:
    """`channel` (a messenger channel configured, or one the database still knows, such as
    one removed from the config) and/or `livechat` (a configured live chat): None each when
    not given."""
    channel, livechat = request.query.get("channel"), request.query.get("livechat")
    if channel is not None and channel not in request.app[SETTINGS].messengers:
        known = {row.id for row in await channel_rows.all_channels(request.app[DATABASE])}
        if channel not in known:
            raise NotFound("unknown_channel", "no messenger channel with this id")
    if livechat is not None and livechat not in request.app[SETTINGS].livechats:
        raise NotFound("unknown_livechat", "no live chat with this id")
    return outbox.Scope(channel=channel, livechat=livechat)


@routes.get("/admin/outbox")
async def list_outbox(request: web.Request) -> web.Response:
    _require_admin(request)
    status = request.query.get("status", "dead")
    if status not in ("pending", "dead"):
        raise BadRequest("invalid_query", "status: must be 'pending' or 'dead'")
    db = request.app[DATABASE]
    rows = await outbox.list_items(db, status, _limit(request), await _scope(request))
    depth = await outbox.depth(db)
    return answer(schemas.OutboxPage.model_validate({"depth": depth, "items": rows}))


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
    return answer(schemas.EventList.model_validate({"events": rows}))


def _report(report: Report) -> web.Response:
    return answer(
        schemas.DeadLetterReport.model_validate(
            {"action": report.action, "at": time.time(), **report.counts(), "items": report.items}
        )
    )


async def _act(request: web.Request, scope: outbox.Scope) -> web.Response:
    return _report(await views.dead_letter_action(request.app, request.match_info["action"], scope))


@routes.post(r"/admin/outbox/{item_id:[0-9]+}/{action:retry|purge}")
async def item_action(request: web.Request) -> web.Response:
    """Retry or purge one dead item; an item that is pending is left alone (`skipped`)."""
    _require_admin(request)
    item_id = row_id(request.match_info["item_id"])
    if item_id is None:
        raise NotFound("unknown_item", "no outbox item with this id")
    return await _act(request, outbox.Scope(item_id=item_id))


@routes.post(r"/admin/outbox/{action:retry|purge}")
async def scope_action(request: web.Request) -> web.Response:
    """Retry or purge every dead item of `channel` and/or `livechat`, or of all with `all=1`."""
    _require_admin(request)
    scope = await _scope(request)
    everything = request.query.get("all")
    if everything not in (None, "1", "true"):
        raise BadRequest("invalid_query", "all: must be 1 or true")
    if (everything is None) == (scope.channel is None and scope.livechat is None):
        raise BadRequest("invalid_query", "give channel=ID and/or livechat=ID, or all=1 (not both)")
    return await _act(request, scope)


@routes.post(r"/admin/events/{event_id:[0-9]+}/link")
async def link_event(request: web.Request) -> web.Response:
    """Link an event, the other unlinked events of its live-chat chat id, and that chat id,
    to a session: body `{"session_id": <int>}`."""
    _require_admin(request)
    event_id = row_id(request.match_info["event_id"])
    if event_id is None:
        raise NotFound("unknown_event", "no event with this id")
    doc = json_object(await read_body(request))
    if "session_id" not in doc:
        raise BadRequest("missing_field", "session_id: required")
    try:
        session_id = schemas.EventLink.model_validate(doc).session_id
    except ValidationError:
        raise BadRequest(
            "invalid_field", "session_id: must be a session's id (an integer)"
        ) from None
    done = await views.link_event(request.app, event_id, session_id)
    return answer(
        schemas.EventLinked(
            session_id=session_id, events=list(done.events), remote_chat_id=done.remote_chat_id
        )
    )
