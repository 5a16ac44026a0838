"""Liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from bridge.keys import DATABASE, LIVECHATS
from storage.migrations import LATEST

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    db = request.app[DATABASE]
    if (fault := db.write_fault) is not None:
        # Writes fail (the file deleted or replaced, disk full, read-only, locked, the server
        # down...): every message would get a 503, so a load balancer should send it
        # elsewhere. Known without asking the database, so answered at once.
        return web.json_response(
            {"status": "unavailable", "database": f"writes failing: {fault}"}, status=503
        )
    if not await db.readable():
        fault = db.write_fault or "cannot read"
        return web.json_response(
            {"status": "unavailable", "database": f"writes failing: {fault}"}, status=503
        )
    if db.schema_version != LATEST:
        return web.json_response(
            {"status": "unavailable", "database": f"schema {db.schema_version}, want {LATEST}"},
            status=503,
        )
    livechats = {lc_id: await c.readiness() for lc_id, c in request.app[LIVECHATS].items()}
    return web.json_response(
        {"status": "ready", "schema_version": db.schema_version, "livechats": livechats}
    )
