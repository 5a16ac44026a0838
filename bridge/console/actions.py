"""The console's actions (POST), each answered with a redirect back to its page (post, redirect,
get), whose flash line says what was done: signing in and out, a channel's connect,
disconnect and reconnect, dead letters' retry and purge, an event's link.

The gate (guard.py) has checked the session and the CSRF token before any of these runs, except
for signing in.
"""

from __future__ import annotations

from typing import cast

from aiohttp import web

from bridge.console.auth import (
    SESSIONS,
    ConsoleSession,
    end_session,
    failed_sign_in,
    session_of,
    start_session,
    token_matches,
)
from bridge.console.render import render
from bridge.errors import BadRequest, NotFound
from bridge.keys import CHANNELS, DATABASE, SETTINGS
from bridge.web.views import (
    ChannelAction,
    act_on_channel,
    dead_letter_action,
    link_event,
    row_id,
)
from storage.outbox import Scope

routes = web.RouteTableDef()

HOME = "/admin/"


def _back(to: str) -> web.Response:
    return web.Response(status=303, headers={"Location": to})


def _session(request: web.Request) -> ConsoleSession:
    session = session_of(request)
    assert session is not None  # the gate let only signed-in admins through
    return session


# --- signing in and out -------------------------------------------------------------------


@routes.get("/admin/login", name="console.public.login")
async def login_page(request: web.Request) -> web.Response:
    if session_of(request) is not None:
        return _back(HOME)
    return render(request, "login.html", {"title": "Sign in", "error": None})


@routes.post("/admin/login", name="console.public.sign_in")
async def sign_in(request: web.Request) -> web.Response:
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not token_matches(request, token.strip()):
        failed_sign_in(request)
        await request.app[SESSIONS].slow_down()
        return render(
            request,
            "login.html",
            {
                "title": "Sign in",
                "error": "Wrong admin token. Use the [admin] token of the config.",
            },
            status=401,
        )
    response = _back(HOME)
    start_session(request, response)
    return response


@routes.post("/admin/logout", name="console.action.sign_out")
async def sign_out(request: web.Request) -> web.Response:
    response = _back("/admin/login")
    end_session(request, response)
    return response


# --- channels -----------------------------------------------------------------------------


@routes.post(
    r"/admin/ui/channels/{channel_id}/{action:connect|disconnect|reconnect}",
    name="console.action.channel",
)
async def channel_action(request: web.Request) -> web.Response:
    app, channel_id = request.app, request.match_info["channel_id"]
    if channel_id not in app[SETTINGS].messengers:
        raise NotFound("unknown_channel", "No messenger channel with this id.")
    action = cast(ChannelAction, request.match_info["action"])  # the route's pattern
    view = await act_on_channel(app[SETTINGS], app[CHANNELS], app[DATABASE], channel_id, action)
    _session(request).flash = f"{channel_id}: {action} done; the channel is {view['state']}."
    return _back("/admin/ui/channels")


# --- outbox: dead letters -----------------------------------------------------------------


def _item_id(request: web.Request) -> int:
    item_id = row_id(request.match_info["item_id"])
    if item_id is None:
        raise NotFound("unknown_item", "No outbox item with this id.")
    return item_id


@routes.post(r"/admin/ui/outbox/{item_id:[0-9]+}/retry", name="console.action.retry")
async def retry(request: web.Request) -> web.Response:
    item_id = _item_id(request)
    report = await dead_letter_action(request.app, "retry", Scope(item_id=item_id))
    _session(request).flash = (
        f"Item {item_id} is queued again."
        if report.retried or report.adopted
        else f"Item {item_id} is not dead."
    )
    return _back("/admin/ui/outbox")


@routes.post("/admin/ui/outbox/retry-all", name="console.action.retry_all")
async def retry_all(request: web.Request) -> web.Response:
    report = await dead_letter_action(request.app, "retry", Scope())
    _session(request).flash = f"{report.retried + report.adopted} dead items queued again."
    return _back("/admin/ui/outbox")


@routes.post(r"/admin/ui/outbox/{item_id:[0-9]+}/purge", name="console.action.purge")
async def purge(request: web.Request) -> web.Response:
    item_id = _item_id(request)
    report = await dead_letter_action(request.app, "purge", Scope(item_id=item_id))
    _session(request).flash = (
        f"Item {item_id} purged." if report.purged else f"Item {item_id} is not a dead letter."
    )
    return _back("/admin/ui/outbox")


@routes.post("/admin/ui/outbox/purge-all", name="console.action.purge_all")
async def purge_all(request: web.Request) -> web.Response:
    report = await dead_letter_action(request.app, "purge", Scope())
    _session(request).flash = f"{report.purged} dead items purged."
    return _back("/admin/ui/outbox")


# --- events -------------------------------------------------------------------------------


@routes.post(r"/admin/ui/events/{event_id:[0-9]+}/link", name="console.action.link")
async def link(request: web.Request) -> web.Response:
    event_id = row_id(request.match_info["event_id"])
    form = await request.post()
    raw = form.get("session_id")
    session_id = row_id(raw.strip()) if isinstance(raw, str) else None
    if event_id is None or session_id is None:
        raise BadRequest("invalid_field", "Give the session's number to link the event to.")
    done = await link_event(request.app, event_id, session_id)
    linked = ", ".join(str(e) for e in done.events)
    _session(request).flash = f"Event(s) {linked} linked to session {session_id}."
    return _back("/admin/ui/events?unlinked=1")
