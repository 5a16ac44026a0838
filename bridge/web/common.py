"""What every handler shares: reading a bounded body, the error middleware, the access log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from bridge.core.errors import InvalidInput
from bridge.errors import (
    ApiError,
    BadRequest,
    ClientGone,
    RequestTimeout,
    TooLarge,
    UnreadableBody,
    UnsupportedEncoding,
    answer_for,
)
from bridge.keys import METRICS, SETTINGS
from bridge.logs import debug_enabled
from bridge.web.schemas import Error
from storage.port import StorageUnavailable

log = structlog.get_logger("http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HTTP_ERRCODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}

# Not an answer anyone receives: what /metrics and the log count a request as when its client
# disconnected before it was read (nginx's "client closed request").
CLIENT_GONE = 499


def json_error(status: int, errcode: str, message: str, **headers: str) -> web.Response:
    body = Error(error=message, errcode=errcode).model_dump()
    return web.json_response(body, status=status, headers=headers)


OK_BODY = json.dumps({"result": "ok"}).encode()


def ok(body: Any = None) -> web.Response:
    if body is None:  # the answer to nearly every request: serialised once
        return web.Response(body=OK_BODY, content_type="application/json", charset="utf-8")
    return web.json_response(body)


# Content codings a sender may compress a body with (RFC 9110 section 8.4.1). aiohttp's own
# decompression is off (see `bridge.app`): its errors surfaced as 500s, and a coding it
# lacked a library for was refused before any handler could answer in the bridge's terms.
CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


async def read_body(request: web.Request) -> bytes:
    """The request's body, decompressed, at most `server.max_body_bytes` long.

    Raises `TooLarge` (413 `body_too_large`, also for a compressed body that would
    decompress beyond the limit), `UnsupportedEncoding` (415 `unsupported_encoding`: a
    Content-Encoding other than gzip, deflate or identity), `BadRequest` (400
    `invalid_encoding`: the body is not what its Content-Encoding says; `invalid_body`: its
    chunked framing is broken), `RequestTimeout` (408 `read_timeout`: it did not arrive in
    full within `server.read_timeout` seconds) and `ClientGone` (the client disconnected).
    """
    server = request.app[SETTINGS].server
    limit = server.max_body_bytes
    coding = _content_coding(request)
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge("body_too_large", f"the body is over the limit of {limit} bytes")
    try:
        async with asyncio.timeout(server.read_timeout):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(
            "read_timeout", f"the body did not arrive within {server.read_timeout:g} s"
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge("body_too_large", f"the body is over the limit of {limit} bytes") from None
    except (ConnectionError, HttpProcessingError) as exc:
        if request.transport is None or request.transport.is_closing():
            raise ClientGone() from None
        # Still connected: the framing itself is wrong (a bad chunk size, say).
        reason = exc.message if isinstance(exc, HttpProcessingError) else type(exc).__name__
        raise UnreadableBody("invalid_body", f"the body cannot be read: {reason}") from None
    return raw if coding is None else _decompress(raw, coding, limit)


def _content_coding(request: web.Request) -> str | None:
    """The one content coding applied to the body (None: none), or `UnsupportedEncoding`."""
    header = request.headers.get(hdrs.CONTENT_ENCODING, "")
    codings = [c.strip().lower() for c in header.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in CODINGS:
        raise UnsupportedEncoding(
            "unsupported_encoding", "Content-Encoding: only gzip or deflate, once, is accepted"
        )
    return codings[0]


def _decompress(raw: bytes, coding: str, limit: int) -> bytes:
    """`raw` decoded, never more than `limit` bytes of output held (a small gzip can expand a
    thousandfold: a zip bomb stops here at `limit` + 1 bytes)."""
    wbits = CODINGS[coding]
    if coding == "deflate" and raw[:1] and raw[0] & 0x0F != 8:
        wbits = -zlib.MAX_WBITS  # raw deflate without the zlib header, as some senders send
    out = bytearray()
    rest = raw
    try:
        while rest:  # gzip allows several members, one after another
            decoder = zlib.decompressobj(wbits)
            out += decoder.decompress(rest, limit + 1 - len(out))  # never 0: that is unbounded
            if len(out) > limit:
                raise TooLarge(
                    "body_too_large",
                    f"the body is over the limit of {limit} bytes once decompressed",
                )
            if not decoder.eof:
                raise BadRequest("invalid_encoding", f"the {coding} body is cut short")
            rest = decoder.unused_data
    except zlib.error:
        raise BadRequest("invalid_encoding", f"the body is not valid {coding} data") from None
    return bytes(out)


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
        if exc.closes_connection:
            await _answer_and_close(request, response)
    except InvalidInput as exc:  # a connector could not read the body, or the relay refused it
        error = answer_for(exc)
        response = json_error(error.status, error.errcode, error.message)
    except ClientGone:
        response = json_error(CLIENT_GONE, "client_gone", "the client disconnected")
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
    metrics.child(metrics.requests, route, request.method, str(response.status)).inc()
    metrics.child(metrics.request_seconds, route).observe(elapsed)
    # Successes are counted in /metrics; logging each at info would cost more than the request.
    level = "debug" if response.status < 400 else "info" if response.status < 500 else "error"
    if level != "debug" or debug_enabled():
        getattr(log, level)(
            "http.request",
            method=request.method,
            route=route,
            status=response.status,
            ms=round(elapsed * 1000, 2),
        )
    return response


async def _answer_and_close(request: web.Request, response: web.StreamResponse) -> None:
    """Send `response` and close the connection at once: the rest of a stalled or broken body
    is not waited for (aiohttp would otherwise linger, reading it, for up to 10 s more)."""
    response.force_close()
    with contextlib.suppress(ConnectionError):
        await response.prepare(request)
        await response.write_eof()
    request.protocol.force_close()  # closes once what was written is flushed
