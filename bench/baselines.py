"""The baselines the bridge is measured against, each a bare aiohttp server.

- `forward PORT TARGET`: parses the messenger's JSON and forwards it with one POST (aiohttp's
  client); no storage. The end-to-end ratio divides by its rate.
- `forward_reqwest PORT TARGET`: the same, the POST made with the bridge's own outside client
  (pyreqwest, connectors/http.py), so that a reader sees how much of the ratio the client is.
- `sqlite PORT DB SYNCHRONOUS`: parses the JSON, inserts it and commits, per request (WAL).

`BENCH_EVENT_LOOP` (auto, uvloop, asyncio) picks their event loop the way the bridge's
`server.event_loop` picks its own, so that both sides of a ratio run on the same loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import aiohttp
import aiosqlite
from aiohttp import web

from bridge.loop import new_event_loop
from connectors import http as outside


def forward(target: str) -> web.Application:
    app = web.Application()

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession() as http:
            app["http"] = http
            yield

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        async with request.app["http"].post(target, json=body) as resp:
            await resp.read()
        return web.json_response({"result": "ok"})

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/messengers/{channel_id}/webhook", handle)
    return app


def forward_reqwest(target: str) -> web.Application:
    app = web.Application()

    async def client_ctx(app: web.Application) -> AsyncIterator[None]:
        async with outside.Client(15, 5, limit=256) as http:
            app["http"] = http
            yield

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        answer = await outside.request(request.app["http"], "POST", target, body)
        if not isinstance(answer, outside.Response) or answer.status != 200:
            raise web.HTTPBadGateway()
        return web.json_response({"result": "ok"})

    app.cleanup_ctx.append(client_ctx)
    app.router.add_post("/messengers/{channel_id}/webhook", handle)
    return app


def sqlite(path: str, synchronous: str) -> web.Application:
    app = web.Application()

    async def db_ctx(app: web.Application) -> AsyncIterator[None]:
        async with aiosqlite.connect(path, isolation_level=None) as db:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute(f"PRAGMA synchronous={synchronous.upper()}")
            await db.execute(
                "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY, ext TEXT, body TEXT)"
            )
            app["db"] = db
            app["lock"] = asyncio.Lock()  # one connection: one transaction at a time
            yield

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        db = request.app["db"]
        async with request.app["lock"]:
            await db.execute("BEGIN")
            await db.execute(
                "INSERT INTO messages (ext, body) VALUES (?, ?)",
                (body["data"]["externalMessageId"], json.dumps(body)),
            )
            await db.execute("COMMIT")
        return web.json_response({"result": "ok"})

    app.cleanup_ctx.append(db_ctx)
    app.router.add_post("/messengers/{channel_id}/webhook", handle)
    return app


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    application = (
        forward(sys.argv[3])
        if kind == "forward"
        else forward_reqwest(sys.argv[3])
        if kind == "forward_reqwest"
        else sqlite(sys.argv[3], sys.argv[4])
    )
    loop = new_event_loop(os.environ.get("BENCH_EVENT_LOOP", "auto"))
    web.run_app(application, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)
