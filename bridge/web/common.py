"""What every handler shares: reading a bounded body, the error middleware, the access log."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from bridge.errors import ApiError, TooLarge
from bridge.keys import METRICS, SETTINGS
from storage.database import StorageUnavailable

log = structlog.get_logger("http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_ERRCODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


def json_error(status: int, errcode: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message, "errcode": errcode}, status=status, headers=headers)


OK_BODY = json.dumps({"result": "ok"}).encode()


def ok(body: Any = None) -> web.Response:
    if body is None:  # the answer to nearly every request: serialised once
        return web.Response(body=OK_BODY, content_type="application/json", charset="utf-8")
    return web.json_response(body)


async def read_body(request: web.Request) -> bytes:
    limit = request.app[SETTINGS].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge("body_too_large", f"the body is over the limit of {limit} bytes")
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge("body_too_large", f"the body is over the limit of {limit} bytes") from None


def _route(request: web.Request) -> str:
    # The route's pattern, not the path: paths can hold a hook token.
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(unmatched)"


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    # Requests on a kept-alive connection can share a task: start each with no ids bound.
    structlog.contextvars.clear_contextvars()
    response: web.StreamResponse
    try:
        response = await handler(request)
    except ApiError as exc:
        response = json_error(exc.status, exc.errcode, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        errcode = HTTP_ERRCODES.get(exc.status, "http_error")
        response = json_error(exc.status, errcode, exc.reason)
    except StorageUnavailable:
        # Nothing was stored: the sender must keep the message and retry.
        response = json_error(
            503,
            "storage_unavailable",
            "the bridge cannot store this now; retry later",
            **{"Retry-After": "1"},
        )
    except Exception:
        log.exception("http.unhandled", method=request.method, route=_route(request))
        response = json_error(500, "internal_error", "internal error; it has been logged")
    elapsed = time.perf_counter() - started
    route = _route(request)
    metrics = request.app[METRICS]
    metrics.requests.labels(route, request.method, str(response.status)).inc()
    metrics.request_seconds.labels(route).observe(elapsed)
    # Successes are counted in /metrics; logging each at info would cost more than the request.
    level = "debug" if response.status < 400 else "info" if response.status < 500 else "error"
    getattr(log, level)(
        "http.request",
        method=request.method,
        route=route,
        status=response.status,
        ms=round(elapsed * 1000, 2),
    )
    return response
