"""`GET /metrics`: Prometheus text format. Gauges that live in the database are read per scrape."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bridge.channels import STATES
from bridge.keys import CHANNELS, DATABASE, METRICS
from storage import chats, outbox

routes = web.RouteTableDef()


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    m, db, channels = request.app[METRICS], request.app[DATABASE], request.app[CHANNELS]
    depth = await outbox.depth(db)
    m.outbox_pending.set(depth["pending"])
    m.outbox_dead.set(depth["dead"])
    oldest = depth["oldest_created_at"]
    m.outbox_oldest_age.set(0 if oldest is None else max(0.0, time.time() - oldest))
    m.sessions_open.set(await chats.count_open_sessions(db))
    for channel_id in request.app[CHANNELS].channel_ids():
        current = channels.state(channel_id)
        for state in STATES:
            m.channel_state.labels(channel_id, state).set(1 if state == current else 0)
    body = generate_latest(m.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
