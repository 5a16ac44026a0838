"""The console's pages (GET): overview, channels, sessions, one session, outbox, events.

Each reads through the same storage functions and ChannelManager as the JSON admin API.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from bridge.console.overview import call_times, hourly_chart
from bridge.console.render import render
from bridge.core.model import ChannelState
from bridge.core.outbox_kinds import MESSAGE_DELIVERIES
from bridge.errors import NotFound
from bridge.keys import CHANNELS, DATABASE, METRICS, SETTINGS
from bridge.web.views import channel_views, row_id
from storage import chats, events, outbox, stats

routes = web.RouteTableDef()

LIST_LIMIT = 100
DAY = 86400.0


@routes.get("/admin", name="console.public.bare")
async def bare(request: web.Request) -> web.Response:
    return web.Response(status=308, headers={"Location": "/admin/"})


@routes.get("/admin/", name="console.page.overview")
async def overview(request: web.Request) -> web.Response:
    app = request.app
    db, now = app[DATABASE], time.time()
    today = now - now % DAY  # midnight, UTC
    traffic = await stats.traffic(db, today, now)
    depth = await outbox.depth(db)
    oldest = depth["oldest_created_at"]
    views = await channel_views(app[SETTINGS], app[CHANNELS], db)
    hours = traffic.hours
    context = {
        "title": "Overview",
        "traffic": traffic,
        "depth": depth,
        "oldest_age": None if oldest is None else now - oldest,
        "not_active": [v for v in views if v["state"] != ChannelState.ACTIVE],
        "channel_count": len(views),
        "calls": call_times(app[METRICS].delivery_seconds),
        "chart": hourly_chart(hours),
        "chart_delivered": sum(h.delivered for h in hours),
        "chart_failed": sum(h.failed for h in hours),
    }
    return render(request, "overview.html", context)


@routes.get("/admin/ui/channels", name="console.page.channels")
async def channels(request: web.Request) -> web.Response:
    app = request.app
    views = await channel_views(app[SETTINGS], app[CHANNELS], app[DATABASE])
    return render(request, "channels.html", {"title": "Channels", "channels": views})


def _filter(request: web.Request, name: str) -> str | None:
    value = request.query.get(name, "").strip()
    return value or None


@routes.get("/admin/ui/sessions", name="console.page.sessions")
async def sessions(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    messenger, status = _filter(request, "messenger"), _filter(request, "status")
    problems = []
    if messenger is not None and messenger not in settings.messengers:
        problems.append("No messenger channel with this id.")
    if status not in (None, "open", "closed"):
        problems.append("Status must be open or closed.")
    chat_id, user_id = _filter(request, "chat_id"), _filter(request, "user_id")
    rows: list[dict[str, Any]] = []
    if not problems:
        rows = await chats.list_sessions(
            request.app[DATABASE],
            messenger,
            status,
            LIST_LIMIT,
            external_chat_id=chat_id,
            user_id=user_id,
        )
    context = {
        "title": "Sessions",
        "sessions": rows,
        "problems": problems,
        "messengers": sorted(settings.messengers),
        "query": {
            "messenger": messenger or "",
            "chat_id": chat_id or "",
            "user_id": user_id or "",
            "status": status or "",
        },
        "limit": LIST_LIMIT,
    }
    return render(request, "sessions.html", context)


@routes.get(r"/admin/ui/sessions/{session_id:[0-9]+}", name="console.page.session")
async def session(request: web.Request) -> web.Response:
    db = request.app[DATABASE]
    session_id = row_id(request.match_info["session_id"])
    detail = None if session_id is None else await chats.session_detail(db, session_id)
    if session_id is None or detail is None:
        raise NotFound("unknown_session", "No session with this id.")
    items = await outbox.items_of_session(db, session_id, MESSAGE_DELIVERIES)
    context = {
        "title": f"Session {session_id}",
        "s": detail,
        "items": items,
    }
    return render(request, "session.html", context)


@routes.get("/admin/ui/outbox", name="console.page.outbox")
async def outbox_page(request: web.Request) -> web.Response:
    db, now = request.app[DATABASE], time.time()
    depth = await outbox.depth(db)
    oldest = depth["oldest_created_at"]
    context = {
        "title": "Outbox",
        "depth": depth,
        "oldest_age": None if oldest is None else now - oldest,
        "dead": await outbox.list_items(db, "dead", LIST_LIMIT),
        "limit": LIST_LIMIT,
    }
    return render(request, "outbox.html", context)


@routes.get("/admin/ui/events", name="console.page.events")
async def events_page(request: web.Request) -> web.Response:
    app = request.app
    livechat, name = _filter(request, "livechat"), _filter(request, "event")
    unlinked = request.query.get("unlinked") == "1"
    problems = []
    if livechat is not None and livechat not in app[SETTINGS].livechats:
        problems.append("No live chat with this id.")
    rows: list[dict[str, Any]] = []
    if not problems:
        rows = await events.list_events(
            app[DATABASE], livechat, name, LIST_LIMIT, unlinked=unlinked
        )
    context = {
        "title": "Events",
        "events": rows,
        "problems": problems,
        "livechats": sorted(app[SETTINGS].livechats),
        "names": await events.recent_names(app[DATABASE]),
        "query": {"livechat": livechat or "", "event": name or "", "unlinked": unlinked},
        "limit": LIST_LIMIT,
    }
    return render(request, "events.html", context)
