"""One outside HTTP call: bounded in time, never raising, its outcome in the bridge's terms.

Error texts name the failure, never the URL: some live-chat URLs carry a secret in their path.

No call follows a redirect. A live chat answering 307 would otherwise get the body re-sent to
wherever its `Location` points, and that party's 200 would count as delivered although the live
chat never took the message. A 3xx is a failed call like any other non-2xx answer, retried with
back-off. The client is built unable to follow one (`follow_redirects(False)`; a request cannot
ask otherwise), so no call, however made, can.

The client is pyreqwest (Rust's reqwest and hyper under a Python API), not aiohttp's: a call
costs about 40 µs of CPU against aiohttp's 95 (20,000 POSTs, 64 at a time, on uvloop), and
outside calls are most of what the delivery process spends (docs/decisions.md: "The outside
HTTP client"). aiohttp still serves the bridge's own endpoints.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, timedelta
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Protocol

from pyreqwest.client import Client as _Reqwest
from pyreqwest.client import ClientBuilder
from pyreqwest.exceptions import ConnectError, PyreqwestError, RequestTimeoutError
from pyreqwest.request import RequestBuilder
from pyreqwest.response import ResponseBodyReader
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


class Client:
    """The HTTP client for outside calls, one per process; an async context manager (its
    connections close on exit).

    `timeout`: seconds for a whole call (connect, send, answer and body), unless `request`
    is given `seconds`; `connect_timeout`: seconds to open a connection; `limit`: calls in
    flight at once (more wait for a slot, within their own timeout). It never follows a
    redirect, ignores the environment's proxy variables (as aiohttp's client did: an
    `HTTP_PROXY` set for something else must not reroute deliveries), sends no `Referer`,
    and keeps connections alive between calls.
    """

    def __init__(self, timeout: float, connect_timeout: float, limit: int) -> None:
        self._client: _Reqwest = (
            ClientBuilder()
            .follow_redirects(False)
            .no_proxy()
            .referer(False)
            .error_for_status(False)
            .user_agent(USER_AGENT)
            .timeout(timedelta(seconds=timeout))
            .connect_timeout(timedelta(seconds=connect_timeout))
            .max_connections(limit)
            .build()
        )

    async def __aenter__(self) -> Client:
        await self._client.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.close()

    def prepare(self, method: str, url: str) -> RequestBuilder:
        """A request to build on. Raises ValueError for a URL it cannot call."""
        return self._client.request(method, url)


def session(cfg: ClientLimits) -> Client:
    """The one HTTP client for every outside call of a process: its timeouts and pool size."""
    return Client(cfg.request_timeout, cfg.connect_timeout, cfg.concurrency * 2)


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
    http: Client,
    method: str,
    url: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
    max_body: int = 1 << 20,
    seconds: float | None = None,
    raw: bytes | None = None,
) -> Response | NoResponse:
    """One call, bounded by the client's timeout or `seconds`. `raw` sends bytes as they are
    (a signed body must not be re-serialised). At most `max_body` bytes of the answer are read
    (the rest is dropped unread)."""
    data = raw if raw is not None else None if body is None else _ENCODE_JSON(body).encode()
    all_headers = {**JSON_HEADERS, **(headers or {})} if data is not None else headers
    try:
        builder = http.prepare(method, url)
        if all_headers:
            builder = builder.headers(all_headers)
        if data is not None:
            builder = builder.body_bytes(data)
        if seconds is not None:
            builder = builder.timeout(timedelta(seconds=seconds))
        async with builder.build_streamed() as resp:
            payload = await _read(resp.body_reader, max_body)
            status = resp.status
            return Response(
                status,
                payload,
                retry_after(resp.get_header("Retry-After")),
                location_host(resp.get_header("Location")) if 300 <= status < 400 else None,
            )
    except RequestTimeoutError:
        return NoResponse("timed out")
    except ConnectError:
        return NoResponse(f"cannot connect to {_host_port(url)}")
    except (PyreqwestError, OSError) as exc:
        # Not str(exc): pyreqwest's texts quote the URL.
        return NoResponse(f"connection failed: {type(exc).__name__}")
    except ValueError:  # the URL itself (settings validate theirs; this is the last guard)
        return NoResponse("not a URL that can be called")


async def _read(reader: ResponseBodyReader, limit: int) -> bytes:
    body = bytearray()
    while len(body) < limit:
        chunk = await reader.read(limit - len(body))
        if chunk is None:
            break
        body += chunk
    return bytes(body)


def _host_port(url: str) -> str:
    try:
        parsed = URL(url)
    except (ValueError, TypeError):
        return "(not a URL)"
    return f"{parsed.host}:{parsed.port}"


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
