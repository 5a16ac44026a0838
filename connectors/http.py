"""One outside HTTP call: bounded in time, never raising, its outcome in the bridge's terms.

Error texts name the failure, never the URL: some live-chat URLs carry a secret in their path.

No call follows a redirect. A live chat answering 307 would otherwise get the body re-sent to
wherever its `Location` points, and that party's 200 would count as delivered although the live
chat never took the message. A 3xx is a failed call like any other non-2xx answer, retried with
back-off. This is enforced here twice: `request` asks for no redirects, and every session made
by `client_session` refuses any redirect answer to a call made some other way (which might have
asked to follow it).
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp
from yarl import URL

from bridge.core.model import Delivered, DeliveryResult, Failed, Retry

JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
# json.dumps with any option builds a new encoder per call; one kept encodes the same bytes.
_ENCODE_JSON = json.JSONEncoder(ensure_ascii=False).encode
USER_AGENT = "messenger-bridge/0.1"


class ClientLimits(Protocol):
    """What the HTTP client is made with (bridge.settings.DeliverySettings has it): seconds."""

    @property
    def connect_timeout(self) -> float: ...

    @property
    def request_timeout(self) -> float: ...

    @property
    def concurrency(self) -> int: ...


def session(cfg: ClientLimits) -> aiohttp.ClientSession:
    """The one HTTP client for every outside call of a process: its timeouts and pool size."""
    return client_session(
        aiohttp.ClientTimeout(total=cfg.request_timeout, connect=cfg.connect_timeout),
        limit=cfg.concurrency * 2,
    )


def client_session(timeout: aiohttp.ClientTimeout, *, limit: int = 100) -> aiohttp.ClientSession:
    """Any HTTP client the bridge makes (the CLI's too): it never follows a redirect.

    A call made other than through `request` (which asks for no redirects and reads a 3xx as
    a failed call) fails with RedirectRefused on a redirect answer, before anything is sent to
    the `Location`, whether or not it asked to follow it.
    """
    # A client middleware, not a TraceConfig's on_request_redirect: a trace config makes
    # aiohttp create and await a trace for every step of every call (about 20 µs of CPU per
    # call, a tenth of a delivery's), and `request` skips the middleware altogether.
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=aiohttp.TCPConnector(limit=limit),
        headers={"User-Agent": USER_AGENT},
        middlewares=(_refuse_redirect,),
    )


class RedirectRefused(aiohttp.ClientError):
    """A session of ours was asked to follow a redirect. The text names the `Location`'s host
    only: its path or query may carry a secret."""


_FOLLOWED = frozenset({301, 302, 303, 307, 308})  # the answers aiohttp would follow


async def _refuse_redirect(
    req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    # Runs before aiohttp would follow the redirect: raising here is what stops it.
    resp = await handler(req)
    if resp.status not in _FOLLOWED:
        return resp
    text = _redirect_text(resp.status, location_host(resp.headers.get("Location")))
    resp.close()
    raise RedirectRefused(text)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    retry_after: float | None  # seconds from when the answer was read, never negative
    location_host: str | None = None  # of a 3xx answer's `Location` (host[:port] only)

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class NoResponse:
    error: str


async def request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    max_body: int = 1 << 20,
    seconds: float | None = None,
    raw: bytes | None = None,
) -> Response | NoResponse:
    """One call, bounded by the session's timeout or `seconds`. `raw` sends bytes as they are
    (a signed body must not be re-serialised)."""
    data = raw if raw is not None else None if body is None else _ENCODE_JSON(body).encode()
    all_headers = {**JSON_HEADERS, **(headers or {})} if data is not None else headers
    extra: dict[str, Any] = (
        {} if seconds is None else {"timeout": aiohttp.ClientTimeout(total=seconds)}
    )
    try:
        async with http.request(
            method,
            url,
            data=data,
            headers=all_headers,
            allow_redirects=False,
            middlewares=(),  # only _refuse_redirect, for calls that might follow one
            **extra,
        ) as resp:
            payload = await resp.content.read(max_body)
            return Response(
                resp.status,
                payload,
                retry_after(resp.headers.get("Retry-After")),
                location_host(resp.headers.get("Location")) if 300 <= resp.status < 400 else None,
            )
    except TimeoutError:
        return NoResponse("timed out")
    except aiohttp.ClientConnectorError as exc:
        return NoResponse(f"cannot connect to {exc.host}:{exc.port}")
    except (aiohttp.ClientError, asyncio.IncompleteReadError, OSError) as exc:
        return NoResponse(f"connection failed: {type(exc).__name__}")


def retry_after(value: str | None) -> float | None:
    """Seconds to wait from `Retry-After` (RFC 9110 section 10.2.3): delay-seconds or an
    HTTP-date; a date already past means now (0.0). None when absent or unreadable. Not capped
    here: the delivery worker caps it at `delivery.retry_cap`."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def location_host(value: str | None) -> str | None:
    """`host` or `host:port` of a `Location` header, for logs and error texts: never its path,
    query or user info (they may carry a secret). "the same host" for a relative reference."""
    if not value:
        return None
    try:
        url = URL(value.strip())
        host = url.host
        port = url.explicit_port
    except (ValueError, TypeError):
        return "(not a URL)"
    if not url.is_absolute() or not host:
        return "the same host"
    if ":" in host:
        host = f"[{host}]"
    shown = f"{host}:{port}" if port is not None else host
    return "".join(c for c in shown if c.isprintable())[:100]


def is_redirect(outcome: Response | NoResponse) -> bool:
    return isinstance(outcome, Response) and 300 <= outcome.status < 400


def describe(outcome: Response | NoResponse) -> str:
    """A short text for a failed call: the error, or the status (with where a redirect
    pointed, by host only)."""
    if isinstance(outcome, NoResponse):
        return outcome.error
    if is_redirect(outcome):
        return _redirect_text(outcome.status, outcome.location_host)
    return f"HTTP {outcome.status}"


def _redirect_text(status: int, host: str | None) -> str:
    where = f"to {host}" if host else "without a Location"
    return f"HTTP {status}: redirect {where} not followed"


def classify(outcome: Response | NoResponse) -> DeliveryResult:
    """The common REST reading: 2xx done; 3xx (never followed), 408, 429, 5xx and no answer
    retry; other 4xx final."""
    if isinstance(outcome, NoResponse):
        return Retry(outcome.error)
    if 200 <= outcome.status < 300:
        return Delivered()
    if is_redirect(outcome) or outcome.status in (408, 429) or outcome.status >= 500:
        return Retry(describe(outcome), after=outcome.retry_after)
    return Failed(f"HTTP {outcome.status}: {_snippet(outcome.body)}")


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return text or "(empty body)"
