"""One outside HTTP call: bounded in time, never raising, its outcome in the bridge's terms.

Error texts name the failure, never the URL: some live-chat URLs carry a secret in their path.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge.model import Delivered, DeliveryResult, Failed, Retry
from bridge.settings import DeliverySettings

JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
USER_AGENT = "messenger-bridge/0.1"


def session(cfg: DeliverySettings) -> aiohttp.ClientSession:
    """The one HTTP client for every outside call of a process: its timeouts and pool size."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=cfg.request_timeout, connect=cfg.connect_timeout),
        connector=aiohttp.TCPConnector(limit=cfg.concurrency * 2),
        headers={"User-Agent": USER_AGENT},
    )


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes
    retry_after: float | None

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
    data = (
        raw
        if raw is not None
        else None
        if body is None
        else json.dumps(body, ensure_ascii=False).encode()
    )
    all_headers = {**JSON_HEADERS, **(headers or {})} if data is not None else headers
    extra: dict[str, Any] = (
        {} if seconds is None else {"timeout": aiohttp.ClientTimeout(total=seconds)}
    )
    try:
        async with http.request(method, url, data=data, headers=all_headers, **extra) as resp:
            payload = await resp.content.read(max_body)
            return Response(resp.status, payload, _retry_after(resp.headers.get("Retry-After")))
    except TimeoutError:
        return NoResponse("timed out")
    except aiohttp.ClientConnectorError as exc:
        return NoResponse(f"cannot connect to {exc.host}:{exc.port}")
    except (aiohttp.ClientError, asyncio.IncompleteReadError, OSError) as exc:
        return NoResponse(f"connection failed: {type(exc).__name__}")


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare enough that our own back-off does fine


def classify(outcome: Response | NoResponse) -> DeliveryResult:
    """The common REST reading: 2xx done; 408, 429, 5xx and no answer retry; other 4xx final."""
    if isinstance(outcome, NoResponse):
        return Retry(outcome.error)
    if 200 <= outcome.status < 300:
        return Delivered()
    if outcome.status in (408, 429) or outcome.status >= 500:
        return Retry(f"HTTP {outcome.status}", after=outcome.retry_after)
    return Failed(f"HTTP {outcome.status}: {_snippet(outcome.body)}")


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace").strip()
    return text or "(empty body)"
