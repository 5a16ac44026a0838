"""The HTTP edge, driven with raw sockets as a slow, broken or hostile client would: bodies that
stall, lie about their compression or expand a thousandfold, clients that vanish mid-request,
requests that are not HTTP at all. None of them is a 500, and none writes a traceback."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from bridge.logs import configure_logging
from bridge.settings import LoggingSettings
from tests import stored
from tests.conftest import CODE, World, eventually
from tests.procs import user_message

READ_TIMEOUT = 0.5


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line of the in-process bridge, the standard library's (aiohttp's) included,
    rendered as `serve` renders them."""
    buf = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(LoggingSettings(level="debug", format="json"), [CODE], stream=buf)
    try:
        yield buf
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = saved


def log_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def assert_no_traceback(buf: io.StringIO) -> None:
    for line in log_lines(buf):
        assert line["level"] not in ("error", "critical"), line
        assert "Traceback" not in json.dumps(line), line


async def start(world: World) -> tuple[str, int]:
    bridge = await world.start_bridge(server={"read_timeout": READ_TIMEOUT})
    return "127.0.0.1", bridge.settings.server.port


def head(path: str, length: int, **headers: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {length}",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def exchange(host: str, port: int, *pieces: bytes, wait: float = 5.0) -> bytes:
    """Send the pieces, a moment apart, then read until the bridge closes the connection (or
    `wait` passes)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for index, piece in enumerate(pieces):
            if index:
                await asyncio.sleep(0.1)
            writer.write(piece)
            await writer.drain()
        chunks = []
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
        return b"".join(chunks)
    finally:
        writer.close()


def status_and_body(answer: bytes) -> tuple[int, Any]:
    head_part, _, body = answer.partition(b"\r\n\r\n")
    status = int(head_part.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


async def metric_statuses(world: World) -> dict[str, float]:
    """bridge_http_requests_total by status, summed over routes."""
    assert world.bridge is not None
    async with world.http.get(f"{world.bridge.url}/metrics") as r:
        text = await r.text()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("bridge_http_requests_total{"):
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def webhook_path() -> str:
    return "/messengers/acme/webhook"


def message_body(message_id: str, text: str = "hello") -> bytes:
    return json.dumps(user_message(message_id, "edge", text)).encode()


async def test_a_stalled_body_is_cut_with_408(world: World, captured_logs: io.StringIO) -> None:
    host, port = await start(world)
    body = message_body("stall-1")
    started = time.monotonic()
    answer = await exchange(host, port, head(webhook_path(), len(body)) + body[:20])
    elapsed = time.monotonic() - started
    # Cut, and the connection closed at once: aiohttp alone would linger 10 s more.
    assert READ_TIMEOUT <= elapsed < READ_TIMEOUT + 3
    status, error = status_and_body(answer)
    assert (status, error["errcode"]) == (408, "read_timeout")
    assert "connection: close" in answer.lower().decode()
    counts = await metric_statuses(world)
    assert counts.get("408") == 1 and "500" not in counts
    assert await stored.count_messages(world.bridge.store) == 0  # type: ignore[union-attr]
    assert_no_traceback(captured_logs)


async def test_content_encoding_is_checked_and_bounded(world: World) -> None:
    host, port = await start(world)
    path = webhook_path()
    plain = message_body("enc-plain")
    for coding in ("gzip", "deflate", "gzip, deflate"):
        status, error = status_and_body(
            await exchange(host, port, head(path, len(plain), Content_Encoding=coding) + plain)
        )
        expected = (415, "unsupported_encoding") if "," in coding else (400, "invalid_encoding")
        assert (status, error["errcode"]) == expected, coding
    for coding in ("br", "zstd", "compress", "x-unknown"):
        status, error = status_and_body(
            await exchange(host, port, head(path, len(plain), Content_Encoding=coding) + plain)
        )
        assert (status, error["errcode"]) == (415, "unsupported_encoding"), coding
    # Cut short: the first half of a real gzip body.
    packed = gzip.compress(message_body("enc-cut"))
    half = packed[: len(packed) // 2]
    status, error = status_and_body(
        await exchange(host, port, head(path, len(half), Content_Encoding="gzip") + half)
    )
    assert (status, error["errcode"]) == (400, "invalid_encoding")

    # A zip bomb: 64 KiB on the wire (the limit), far more once decompressed.
    limit = world.bridge.settings.server.max_body_bytes  # type: ignore[union-attr]
    bomb = gzip.compress(b'{"type": "message", "data": {"text": "' + b" " * (limit * 200))
    assert len(bomb) < limit
    status, error = status_and_body(
        await exchange(host, port, head(path, len(bomb), Content_Encoding="gzip") + bomb)
    )
    assert (status, error["errcode"]) == (413, "body_too_large")

    # What is honestly compressed is read: gzip, zlib-wrapped and raw deflate.
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for index, (coding, pack) in enumerate(
        [
            ("gzip", gzip.compress),
            ("deflate", zlib.compress),
            ("deflate", lambda b: raw_deflate.compress(b) + raw_deflate.flush()),
            ("identity", lambda b: b),
        ]
    ):
        packed = pack(message_body(f"enc-ok-{index}", f"packed {index}"))
        status, _ = status_and_body(
            await exchange(host, port, head(path, len(packed), Content_Encoding=coding) + packed)
        )
        assert status == 200, coding
    rows = await stored.all_messages(world.bridge.store)  # type: ignore[union-attr]
    assert [m["text"] for m in rows] == [f"packed {i}" for i in range(4)]
    counts = await metric_statuses(world)
    assert "500" not in counts and counts["415"] == 5 and counts["413"] == 1


async def test_a_client_gone_mid_body_is_no_500(world: World, captured_logs: io.StringIO) -> None:
    host, port = await start(world)
    body = message_body("gone-1")
    for _ in range(3):
        _, writer = await asyncio.open_connection(host, port)
        writer.write(head(webhook_path(), len(body)) + body[: len(body) // 2])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        await writer.wait_closed()

    async def counted() -> dict[str, float]:
        return {k: v for k, v in (await metric_statuses(world)).items() if k != "200"}

    assert await eventually(counted, what="the requests counted") == {"499": 3}
    assert await stored.count_messages(world.bridge.store) == 0  # type: ignore[union-attr]
    assert_no_traceback(captured_logs)
    gone = [line for line in log_lines(captured_logs) if line.get("status") == 499]
    assert len(gone) == 3 and all(line["level"] == "info" for line in gone)


async def test_malformed_http_logs_one_line_without_traceback(
    world: World, captured_logs: io.StringIO
) -> None:
    host, port = await start(world)
    body = message_body("chunk-1")
    bad_requests = [
        b"GARBAGE\r\n\r\n",  # no request line at all
        b"POST /messengers/acme/webhook HTTP/9.9 extra\r\nHost: x\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n",
        # Chunked framing broken inside the body: a chunk size that is not hexadecimal.
        b"POST /messengers/acme/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n" + body[:5] + b"\r\nzz\r\n" + body[5:],
    ]
    for raw in bad_requests:
        answer = await exchange(host, port, raw)
        if answer:  # answered before the connection closed: a 4xx, never a 5xx
            assert 400 <= status_and_body(answer)[0] < 500, raw[:40]
    # The same broken chunk, arriving while the handler already reads the body: aiohttp's
    # pure-Python parser hands the error to the body (400), its C parser stops feeding it
    # (the read timeout's 408). Either way the connection is closed.
    chunked = b"POST /messengers/acme/webhook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
    answer = await exchange(host, port, chunked + b"\r\n\r\n5\r\n" + body[:5], b"\r\nzz\r\n")
    status, error = status_and_body(answer)
    assert (status, error["errcode"]) in ((400, "invalid_body"), (408, "read_timeout"))
    counts = await metric_statuses(world)
    assert not any(status.startswith("5") for status in counts), counts
    assert_no_traceback(captured_logs)
    malformed = [
        line
        for line in log_lines(captured_logs)
        if str(line.get("event", "")).startswith("http.malformed_request")
    ]
    assert len(malformed) >= len(bad_requests) - 2, log_lines(captured_logs)
    assert all(line["level"] == "info" for line in malformed)
    # The bridge still serves.
    status, _ = status_and_body(await exchange(host, port, head(webhook_path(), len(body)) + body))
    assert status == 200
