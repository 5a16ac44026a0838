"""Fast sinks: a Chatvisor-style live chat, a messenger and a forwarding target that only count
and time what arrives, by message id, so that loss and duplicates are measured where they hurt.

`python -m bench.sinks PORT CONTROL_PORT` is one process of a pool: every process of the pool
listens on PORT with SO_REUSEPORT (the kernel spreads the connections over them) and on a
CONTROL_PORT of its own, where the bench reads and resets its counts (`SinkPool` merges them).

The HTTP/1.1 server is a bare asyncio protocol on uvloop rather than aiohttp's web server: it
costs a fraction of the CPU per request, and on a 2-core machine whatever a sink spends is taken
from the subject it measures. It understands what the bench's clients send (keep-alive,
Content-Length bodies) and answers anything else with 400 and a closed connection.

Traffic port:
- POST /rest/v1/customer                      -> {"customerId": "c-" + id}
- POST /rest/v1/conversation/{id}/message     counted by its `text` (the messenger's message id)
- POST /hook                                  messageOutcome counted by `data.messageId`;
                                              userInfo answered with a profile
- POST /forward                               counted by `data.externalMessageId`
- anything else                               {"result": "ok"}: a fixed answer
While held (POST /hold on the control port), the live chat's two calls are not answered until
POST /release: the bridge's deliveries then wait, and acks are measured alone.

Control port: GET /stats (`?arrival=1`: first-arrival times too), GET /totals (distinct ids
per kind, cheap to poll), POST /clear, /hold, /release.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import aiohttp

KINDS = ("livechat", "outcomes", "forwarded")
HOLD_PREFIX = "/rest/v1/"
OK = b'{"result":"ok"}'
Handler = Callable[["HttpProtocol", str, str, bytes], "bytes | None"]


def response(status: int, payload: bytes, close: bool = False) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode("latin-1") + payload


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 requests with Content-Length bodies, one at a time per connection."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while self.transport is not None:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
            try:
                method, target, _ = lines[0].split(" ", 2)
                length, close = 0, False
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "connection":
                        close = value.strip().lower() == "close"
                    elif name in ("transfer-encoding", "expect"):
                        raise ValueError(name)
            except ValueError:
                self.transport.write(response(400, b'{"error":"unsupported request"}', True))
                self.transport.close()
                return
            if len(self._buf) < end + 4 + length:
                return
            body = bytes(self._buf[end + 4 : end + 4 + length])
            del self._buf[: end + 4 + length]
            answer = self._handler(self, method, target, body)
            if answer is not None:
                self.transport.write(answer)
            if close:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class Sink:
    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = {k: {} for k in KINDS}
        self.arrival: dict[str, dict[str, float]] = {k: {} for k in KINDS}
        self.holding = False
        self.held: list[tuple[HttpProtocol, bytes]] = []

    def _count(self, kind: str, key: str) -> None:
        counts = self.counts[kind]
        if key in counts:
            counts[key] += 1
        else:
            counts[key] = 1
            self.arrival[kind][key] = time.time()

    def serve(self, conn: HttpProtocol, method: str, target: str, body: bytes) -> bytes | None:
        path = target.partition("?")[0]
        try:
            if method != "POST" or not body:
                return response(200, OK)
            doc: Any = json.loads(body)
            if path.startswith(HOLD_PREFIX):
                if path == "/rest/v1/customer":
                    answer = json.dumps({"customerId": "c-" + doc["id"]}).encode()
                else:
                    self._count("livechat", doc["text"])
                    answer = json.dumps({"id": "lc-" + doc["id"]}).encode()
                if self.holding:
                    self.held.append((conn, response(200, answer)))
                    return None
                return response(200, answer)
            if path == "/hook":
                kind = doc.get("type")
                if kind == "messageOutcome":
                    self._count("outcomes", doc["data"]["messageId"])
                elif kind == "userInfo":
                    user = doc["data"]["userId"]
                    return response(200, json.dumps({"id": user, "username": "bench"}).encode())
                return response(200, OK)
            if path == "/forward":
                self._count("forwarded", doc["data"]["externalMessageId"])
            return response(200, OK)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return response(400, json.dumps({"error": repr(exc)}).encode())

    def control(self, conn: HttpProtocol, method: str, target: str, body: bytes) -> bytes | None:
        path, _, query = target.partition("?")
        if path == "/stats":
            out = {
                k: {
                    "counts": self.counts[k],
                    **({"arrival": self.arrival[k]} if "arrival=1" in query else {}),
                }
                for k in KINDS
            }
            out["held"] = len(self.held)  # type: ignore[assignment]
            return response(200, json.dumps(out).encode())
        if path == "/totals":  # cheap: polled while waiting for deliveries
            totals = {k: len(self.counts[k]) for k in KINDS}
            return response(200, json.dumps(totals).encode())
        if path == "/clear":
            self.counts = {k: {} for k in KINDS}
            self.arrival = {k: {} for k in KINDS}
        elif path == "/hold":
            self.holding = True
        elif path == "/release":
            self.holding = False
            held, self.held = self.held, []
            for held_conn, answer in held:
                if held_conn.transport is not None:
                    held_conn.transport.write(answer)
        return response(200, OK)


async def serve(port: int, control_port: int) -> None:
    loop = asyncio.get_running_loop()
    sink = Sink()
    await loop.create_server(
        lambda: HttpProtocol(sink.serve), "127.0.0.1", port, reuse_port=True, backlog=4096
    )
    await loop.create_server(lambda: HttpProtocol(sink.control), "127.0.0.1", control_port)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


class SinkPool:
    """The bench's side of a pool of sink processes: their merged counts, and hold/release."""

    def __init__(self, port: int, control_ports: list[int], http: aiohttp.ClientSession) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self._controls = [f"http://127.0.0.1:{p}" for p in control_ports]
        self._http = http

    async def _each(self, method: str, path: str) -> list[Any]:
        async def one(base: str) -> Any:
            async with self._http.request(method, base + path) as r:
                r.raise_for_status()
                return await r.json()

        return list(await asyncio.gather(*(one(base) for base in self._controls)))

    async def clear(self) -> None:
        await self._each("POST", "/clear")

    async def hold(self) -> None:
        await self._each("POST", "/hold")

    async def release(self) -> None:
        await self._each("POST", "/release")

    async def totals(self, kind: str) -> int:
        """Distinct ids of `kind`, summed over the processes (an id that reached two processes
        counts twice here: `stats` is exact)."""
        return sum(t[kind] for t in await self._each("GET", "/totals"))

    async def stats(self, arrival: bool = False) -> dict[str, Any]:
        """Per kind: `unique` ids, `duplicates` (arrivals beyond each id's first), `ids` (the
        set), and with `arrival` each id's first arrival (wall-clock seconds)."""
        parts = await self._each("GET", "/stats" + ("?arrival=1" if arrival else ""))
        out: dict[str, Any] = {}
        for kind in KINDS:
            counts: dict[str, int] = {}
            first: dict[str, float] = {}
            for part in parts:
                for key, n in part[kind]["counts"].items():
                    counts[key] = counts.get(key, 0) + n
                for key, t in part[kind].get("arrival", {}).items():
                    first[key] = min(t, first.get(key, t))
            out[kind] = {
                "unique": len(counts),
                "duplicates": sum(counts.values()) - len(counts),
                "ids": set(counts),
                "arrival": first,
            }
        out["held"] = sum(part["held"] for part in parts)
        return out


def main() -> None:
    try:
        import uvloop

        runner: Callable[..., None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        runner = asyncio.run
    runner(serve(int(sys.argv[1]), int(sys.argv[2])))


if __name__ == "__main__":
    main()
