"""`make bench`: the bridge and its baselines, side by side in one run, on 127.0.0.1.

Every subject is its own process (as in production); the sinks are another; the load
generator is this process. Figures printed: ingest and end-to-end throughput with their ratios
to the baselines, ack and delivery latency at a fixed offered load, the ingest figure on a
database already holding many sessions and messages, peak RSS, and loss and duplicates counted
at the sinks by message id.

    python -m bench.run                  # the full run (scale: 1,000,000 sessions, 5,000,000 messages)
    python -m bench.run --quick          # smaller numbers, for a first look
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CODE = "bench-confirmation-code"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._file = log.open("w")
        self.popen = subprocess.Popen(
            [sys.executable, *args], stdout=self._file, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._file.close()


async def wait_http(http: aiohttp.ClientSession, url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with http.get(url) as r:
                if r.status < 500:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {url} did not come up")
        await asyncio.sleep(0.05)


def message(run: str, i: int, chats: int) -> tuple[str, dict[str, Any]]:
    ext = f"{run}-{i}"
    return ext, {
        "type": "message",
        "token": CODE,
        "data": {
            "externalMessageId": ext,
            "externalChatId": f"{run}-chat-{i % chats}",
            "externalUserId": f"user-{i % chats}",
            "text": ext,
        },
    }


@dataclass
class LoadResult:
    sent: int
    ok: int
    elapsed: float
    ack_ms: list[float] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0


async def closed_loop(
    http: aiohttp.ClientSession, url: str, run: str, n: int, concurrency: int, chats: int
) -> LoadResult:
    """`concurrency` clients, each sending its next message as soon as the last was answered."""
    next_i = 0
    result = LoadResult(sent=n, ok=0, elapsed=0.0)

    async def client() -> None:
        nonlocal next_i
        while next_i < n:
            i, next_i = next_i, next_i + 1
            ext, body = message(run, i, chats)
            result.sent_at[ext] = time.time()
            async with http.post(url, json=body) as r:
                await r.read()
                if r.status == 200:
                    result.ok += 1
                else:
                    result.errors[str(r.status)] = result.errors.get(str(r.status), 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result


async def open_loop(
    http: aiohttp.ClientSession, url: str, run: str, rate: float, seconds: float, chats: int
) -> LoadResult:
    """A fixed offered load: message k leaves at start + k/rate, whether or not others returned."""
    n = int(rate * seconds)
    result = LoadResult(sent=n, ok=0, elapsed=0.0)

    async def one(i: int, at: float) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        ext, body = message(run, i, chats)
        result.sent_at[ext] = time.time()
        t0 = time.perf_counter()
        async with http.post(url, json=body) as r:
            await r.read()
            if r.status == 200:
                result.ok += 1
                result.ack_ms.append((time.perf_counter() - t0) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one(i, started + i / rate) for i in range(n)))
    result.elapsed = time.perf_counter() - started
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
        if q < 100
        else max(values)
    )


async def sink_stats(http: aiohttp.ClientSession, sink: str, arrival: bool = False) -> Any:
    async with http.get(f"{sink}/stats" + ("?arrival=1" if arrival else "")) as r:
        return await r.json()


async def until_delivered(
    http: aiohttp.ClientSession, sink: str, key: str, n: int, seconds: float = 600
) -> float:
    """Wait until `n` distinct ids arrived at the sink under `key`; return the time it happened."""
    deadline = time.monotonic() + seconds
    while True:
        stats = await sink_stats(http, sink)
        if stats[key]["unique"] >= n:
            return time.time()
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: only {stats[key]['unique']} of {n} arrived at {key}")
        await asyncio.sleep(0.05)


def bridge_toml(port: int, sink: str, db: str, synchronous: str, log_level: str, loop: str) -> str:
    return f"""
[server]
event_loop = "{loop}"
host = "127.0.0.1"
port = {port}
public_url = "http://127.0.0.1:{port}"
max_body_bytes = 1048576
[storage]
path = "{db}"
synchronous = "{synchronous}"
[admin]
token = "bench-admin-token"
[delivery]
request_timeout = 10
retry_base = 0.05
retry_cap = 1
concurrency = 128
[logging]
level = "{log_level}"
format = "json"
[livechats.bench]
kind = "chatvisor"
api_url = "{sink}/rest/v1"
api_token = "bench-api-token"
hook_token = "bench-hook-token"
[messengers.load]
name = "Load"
livechat = "bench"
webhook = "{sink}/hook"
confirmation_code = "{CODE}"
"""


def prefill(db: str, sessions: int, messages: int) -> float:
    """Fill the bridge's schema with delivered history, as a long-running bridge would have."""
    started = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    now = time.time() - 86400
    base = (
        conn.execute(
            "SELECT max(max(coalesce((SELECT max(id) FROM chats), 0),"
            " coalesce((SELECT max(id) FROM sessions), 0)))"
        ).fetchone()[0]
        + 1
    )
    ids = range(base, base + sessions)
    conn.executemany(
        "INSERT INTO chats (id, channel_id, external_chat_id, user_id, client_key, livechat_id,"
        " customer_id, created_at) VALUES (?, 'load', ?, ?, ?, 'bench', ?, ?)",
        ((i, f"old-{i}", f"old-user-{i}", f"load:old-{i}", f"c-{i}", now) for i in ids),
    )
    conn.executemany(
        "INSERT INTO sessions (id, chat_id, livechat_id, status, opened_by, opened_at, closed_at)"
        " VALUES (?, ?, 'bench', 'closed', 'user', ?, ?)",
        ((i, i, now, now) for i in ids),
    )
    per = max(1, messages // sessions)
    conn.executemany(
        "INSERT INTO messages (uid, dedupe_key, session_id, chat_id, direction, external_id,"
        " user_id, text, status, created_at) VALUES (?, ?, ?, ?, 'in', ?, ?, ?, 'delivered', ?)",
        (
            (
                uuid.uuid4().hex,
                f"in:load:old-{k}",
                base + k // per % sessions,
                base + k // per % sessions,
                f"old-{k}",
                f"old-user-{k // per}",
                f"history message {k}",
                now,
            )
            for k in range(messages)
        ),
    )
    conn.execute("COMMIT")
    conn.close()
    return time.perf_counter() - started


@dataclass
class Subject:
    name: str
    url: str
    proc: Proc


async def start_bridge(
    tmp: Path,
    sink: str,
    db: str,
    synchronous: str,
    log_level: str,
    http: aiohttp.ClientSession,
    loop: str = "auto",
) -> Subject:
    port = free_port()
    config = tmp / f"bridge-{synchronous}-{port}.toml"
    config.write_text(bridge_toml(port, sink, db, synchronous, log_level, loop))
    proc = Proc(["-m", "bridge", "--config", str(config), "serve"], tmp / f"bridge-{port}.log")
    base = f"http://127.0.0.1:{port}"
    await wait_http(http, f"{base}/readyz")
    headers = {"Authorization": "Bearer bench-admin-token"}
    deadline = time.monotonic() + 30
    while True:  # the channel must be active before the load starts
        async with http.get(f"{base}/admin/channels", headers=headers) as r:
            if (await r.json())["channels"][0]["state"] == "active":
                break
        if time.monotonic() > deadline:
            raise SystemExit("bench: the bridge's channel did not become active")
        await asyncio.sleep(0.05)
    return Subject(f"bridge ({synchronous})", f"{base}/messengers/load/webhook", proc)


async def measure_bridge(
    args: argparse.Namespace, tmp: Path, sink: str, synchronous: str, http: aiohttp.ClientSession
) -> dict[str, Any]:
    db = str(tmp / f"bridge-{synchronous}.sqlite3")
    bridge = await start_bridge(tmp, sink, db, synchronous, args.log_level, http, args.event_loop)
    out: dict[str, Any] = {}
    try:
        await http.post(f"{sink}/clear")
        run = f"ing{synchronous[0]}"
        started = time.time()
        ingest = await closed_loop(http, bridge.url, run, args.n, args.concurrency, args.chats)
        last_outcome = await until_delivered(http, sink, "outcomes", ingest.ok)
        stats = await sink_stats(http, sink)
        out["ingest"] = ingest.rate
        out["ingest_errors"] = ingest.errors
        out["e2e"] = ingest.ok / (last_outcome - started)
        out["loss"] = ingest.ok - stats["livechat"]["unique"]
        out["duplicates"] = stats["livechat"]["duplicates"] + stats["outcomes"]["duplicates"]
        out["outcome_loss"] = ingest.ok - stats["outcomes"]["unique"]

        await http.post(f"{sink}/clear")
        run = f"lat{synchronous[0]}"
        fixed = await open_loop(http, bridge.url, run, args.rate, args.seconds, args.chats)
        await until_delivered(http, sink, "livechat", fixed.ok)
        arrivals = (await sink_stats(http, sink, arrival=True))["livechat"]["arrival"]
        delivery_ms = [(arrivals[k] - t) * 1000 for k, t in fixed.sent_at.items() if k in arrivals]
        out["ack_p50"], out["ack_p99"] = pct(fixed.ack_ms, 50), pct(fixed.ack_ms, 99)
        out["delivery_p50"], out["delivery_p99"] = pct(delivery_ms, 50), pct(delivery_ms, 99)
        out["fixed_ok"] = fixed.ok
        out["fixed_sent"] = fixed.sent
        out["peak_rss_mb"] = bridge.proc.peak_rss_mb()
    finally:
        bridge.proc.stop()

    if args.scale_sessions:
        prefill_s = prefill(db, args.scale_sessions, args.scale_messages)
        out["prefill_seconds"] = prefill_s
        bridge = await start_bridge(
            tmp, sink, db, synchronous, args.log_level, http, args.event_loop
        )
        try:
            await http.post(f"{sink}/clear")
            scale = await closed_loop(
                http, bridge.url, f"scl{synchronous[0]}", args.n, args.concurrency, args.chats
            )
            await until_delivered(http, sink, "outcomes", scale.ok)
            stats = await sink_stats(http, sink)
            out["scale_ingest"] = scale.rate
            out["scale_loss"] = scale.ok - stats["livechat"]["unique"]
            out["scale_duplicates"] = (
                stats["livechat"]["duplicates"] + stats["outcomes"]["duplicates"]
            )
            out["scale_peak_rss_mb"] = bridge.proc.peak_rss_mb()
        finally:
            bridge.proc.stop()
        out["db_mb"] = os.path.getsize(db) / 1e6
    return out


async def measure_baselines(
    args: argparse.Namespace, tmp: Path, sink: str, http: aiohttp.ClientSession
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    port = free_port()
    proc = Proc(
        ["-m", "bench.baselines", "forward", str(port), f"{sink}/forward"], tmp / "forward.log"
    )
    try:
        await wait_http(http, f"http://127.0.0.1:{port}/")
        await http.post(f"{sink}/clear")
        result = await closed_loop(
            http,
            f"http://127.0.0.1:{port}/messengers/load/webhook",
            "fwd",
            args.n,
            args.concurrency,
            args.chats,
        )
        stats = await sink_stats(http, sink)
        out["forward"] = result.rate
        out["forward_loss"] = result.ok - stats["forwarded"]["unique"]
    finally:
        proc.stop()
    for synchronous in args.synchronous:
        port = free_port()
        db = str(tmp / f"baseline-{synchronous}.sqlite3")
        proc = Proc(
            ["-m", "bench.baselines", "sqlite", str(port), db, synchronous], tmp / "sqlite.log"
        )
        try:
            await wait_http(http, f"http://127.0.0.1:{port}/")
            result = await closed_loop(
                http,
                f"http://127.0.0.1:{port}/messengers/load/webhook",
                f"sql{synchronous[0]}",
                args.n,
                args.concurrency,
                args.chats,
            )
            out[f"sqlite_{synchronous}"] = result.rate
        finally:
            proc.stop()
    return out


def report(
    base: dict[str, Any], bridges: dict[str, dict[str, Any]], args: argparse.Namespace
) -> str:
    lines = [
        f"messages per run: {args.n}, clients: {args.concurrency}, chats: {args.chats}; "
        f"fixed load: {args.rate:.0f} msg/s for {args.seconds:.0f} s; "
        f"scale: {args.scale_sessions:,} sessions, {args.scale_messages:,} messages; "
        f"log level {args.log_level}; event loop {args.event_loop}",
        "",
        f"baseline: bare aiohttp forwarding with one POST: {base['forward']:8.0f} msg/s",
    ]
    for synchronous in args.synchronous:
        lines.append(
            f"baseline: bare aiohttp + SQLite insert and commit per request ({synchronous}):"
            f" {base[f'sqlite_{synchronous}']:8.0f} msg/s"
        )
    lines.append("")
    header = f"{'':38}" + "".join(f"{name:>22}" for name in bridges)
    lines.append(header)

    def row(label: str, fn: Any) -> None:
        lines.append(f"{label:38}" + "".join(f"{fn(sync, b):>22}" for sync, b in bridges.items()))

    row("ingest msg/s (200 = committed)", lambda s, b: f"{b['ingest']:.0f}")
    row(
        "  ratio to SQLite-per-request (>=0.8)",
        lambda s, b: f"{b['ingest'] / base['sqlite_' + s]:.2f}x",
    )
    row("end to end msg/s (outcome sent)", lambda s, b: f"{b['e2e']:.0f}")
    row("  ratio to forwarding (>=0.35)", lambda s, b: f"{b['e2e'] / base['forward']:.2f}x")
    row(
        f"ack p50 / p99 ms @{args.rate:.0f}/s (p99<=15)",
        lambda s, b: f"{b['ack_p50']:.1f} / {b['ack_p99']:.1f}",
    )
    row(
        "delivery p50 / p99 ms (p99<=50)",
        lambda s, b: f"{b['delivery_p50']:.1f} / {b['delivery_p99']:.1f}",
    )
    if args.scale_sessions:
        row("ingest msg/s on the filled database", lambda s, b: f"{b['scale_ingest']:.0f}")
        row(
            "  ratio to the empty database (>=0.8)",
            lambda s, b: f"{b['scale_ingest'] / b['ingest']:.2f}x",
        )
        row(
            "peak RSS MB (<=150)",
            lambda s, b: f"{max(b['peak_rss_mb'], b['scale_peak_rss_mb']):.0f}",
        )
    else:
        row("peak RSS MB (<=150)", lambda s, b: f"{b['peak_rss_mb']:.0f}")
    row(
        "lost / duplicated at the sinks",
        lambda s, b: (
            f"{b['loss'] + b['outcome_loss'] + b.get('scale_loss', 0)}"
            f" / {b['duplicates'] + b.get('scale_duplicates', 0)}"
        ),
    )
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller numbers for a first look")
    parser.add_argument("--n", type=int, default=20000, help="messages per throughput run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--chats", type=int, default=500)
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--scale-sessions", type=int, default=1_000_000)
    parser.add_argument("--scale-messages", type=int, default=5_000_000)
    parser.add_argument("--synchronous", nargs="+", default=["normal", "full"])
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--event-loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    args = parser.parse_args()
    if args.quick:
        args.n, args.seconds = min(args.n, 5000), min(args.seconds, 10.0)
        args.scale_sessions = min(args.scale_sessions, 100_000)
        args.scale_messages = min(args.scale_messages, 500_000)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmpdir:
        tmp = Path(tmpdir)
        sink_port = free_port()
        sink = f"http://127.0.0.1:{sink_port}"
        sinks = Proc(["-m", "bench.sinks", str(sink_port)], tmp / "sinks.log")
        connector = aiohttp.TCPConnector(limit=max(args.concurrency, 1000))
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        ) as http:
            try:
                await wait_http(http, f"{sink}/stats")
                base = await measure_baselines(args, tmp, sink, http)
                bridges = {}
                for synchronous in args.synchronous:
                    bridges[synchronous] = await measure_bridge(args, tmp, sink, synchronous, http)
            finally:
                sinks.stop()
        text = report(base, bridges, args)
        print(text)
        results = ROOT / "bench" / "results"
        results.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        (results / f"{stamp}.json").write_text(
            json.dumps({"args": vars(args), "baselines": base, "bridge": bridges}, indent=2)
        )
        (results / f"{stamp}.txt").write_text(text + "\n")


if __name__ == "__main__":
    asyncio.run(main())
