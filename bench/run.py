"""`make bench`: the bridge and its baselines, side by side in one run, on 127.0.0.1.

Every subject is its own process (as in production); the sinks are another; the load
generator is this process. Figures printed: ingest and end-to-end throughput with their ratios
to the baselines, ack and delivery latency at a fixed offered load, CPU time per message, the
ingest figure on a database already holding many sessions and messages, peak RSS, the peak size
of the WAL file (sampled every 20 ms through every phase), and loss and duplicates counted at
the sinks by message id.

The development machine is a VM whose speed changes by up to 2x from minute to minute, so the
measurements are repeated in rounds (`--repeat`): each round measures the baselines, then each
bridge in a fresh process on a fresh database. A ratio is computed within one round, from
measurements minutes apart at most, and the report gives the median of the per-round ratios
with their range; other figures are medians over the rounds. CPU milliseconds per message (the
subject and every process it started) is the figure the noise moves least. The filled-database
run is slow, so it is done once per synchronous mode, after the rounds, and followed at once by
one more empty-database run; its ratio is to the median of all empty-database ingest figures.

    python -m bench.run                  # the full run (scale: 1,000,000 sessions, 5,000,000 messages)
    python -m bench.run --quick          # smaller numbers, for a first look
    python -m bench.run --repeat 5       # more rounds, for steadier medians
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

CODE = "bench-confirmation-code"
ROOT = Path(__file__).resolve().parent.parent
DASH = "\u2013"  # an en dash, for ranges: 0.31\u20130.40


def _all_proc_stats() -> dict[int, list[str]]:
    """/proc/<pid>/stat of every process, split into the fields after the command name."""
    stats = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            text = Path(entry.path, "stat").read_text()
        except OSError:  # it exited between the listing and the read
            continue
        # The name, in brackets, may hold spaces and brackets: split after the last one.
        stats[int(entry.name)] = text.rpartition(")")[2].split()
    return stats


def _tree(root: int, stats: dict[int, list[str]]) -> list[int]:
    """`root` and all its descendants, found through every process's parent id."""
    children: defaultdict[int, list[int]] = defaultdict(list)
    for pid, fields in stats.items():
        children[int(fields[1])].append(pid)  # fields[1] is the ppid (field 4 of stat)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            found.append(pid)
            todo.extend(children[pid])
    return found


def tree_peak_rss_mb(root: int) -> float:
    """The sum of the peak RSS of `root` and of its descendants alive now (the bridge and its
    delivery process: the memory the service needs)."""
    total = 0
    for pid in _tree(root, _all_proc_stats()):
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(x.split()[1]) for x in lines if x.startswith("VmHWM:")), 0)
    return total / 1024


def tree_cpu_seconds(root: int) -> float:
    """CPU time (user + system, all threads) of `root` and all its descendants.

    Descendants are found by scanning every process's parent id, because
    /proc/<pid>/task/*/children is missing on kernels built without CONFIG_PROC_CHILDREN (as on
    the development VM). The children's CPU times that each process has reaped are included, so
    a descendant that exits between two samples is still counted, through its parent.
    """
    stats = _all_proc_stats()
    ticks = sum(
        sum(int(t) for t in stats[pid][11:15])  # utime, stime, cutime, cstime
        for pid in _tree(root, stats)
    )
    return ticks / os.sysconf("SC_CLK_TCK")


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
        """Peak RSS of this process plus its children's (the bridge's delivery process)."""
        return tree_peak_rss_mb(self.popen.pid)

    def cpu_seconds(self) -> float:
        """CPU time of this process and of every process it started, as far as now."""
        return tree_cpu_seconds(self.popen.pid)

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


class WalSampler:
    """The largest size the `-wal` file beside `db` reached while sampled (every `every` s):
    the storage.wal_max_bytes bound, seen from outside."""

    def __init__(self, db: str, every: float = 0.02) -> None:
        self.path, self.every, self.peak = f"{db}-wal", every, 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(FileNotFoundError):
                self.peak = max(self.peak, os.stat(self.path).st_size)
            await asyncio.sleep(self.every)

    def __enter__(self) -> WalSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def peak_mb(self) -> float:
        return self.peak / 1e6


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


def round_db(tmp: Path, synchronous: str, rnd: int) -> str:
    return str(tmp / f"bridge-{synchronous}-r{rnd}.sqlite3")


@dataclass
class Ingest:
    """A closed-loop ingest run, followed until every messageOutcome arrived at the sinks."""

    load: LoadResult
    e2e: float  # messages per second, from the start of the load to the last messageOutcome
    cpu_ms: float  # per message, of the bridge and every process it started
    lost: int
    duplicated: int


async def ingest_run(
    args: argparse.Namespace, http: aiohttp.ClientSession, sink: str, bridge: Subject, run: str
) -> Ingest:
    await http.post(f"{sink}/clear")
    cpu_before = bridge.proc.cpu_seconds()
    started = time.time()
    load = await closed_loop(http, bridge.url, run, args.n, args.concurrency, args.chats)
    last_outcome = await until_delivered(http, sink, "outcomes", load.ok)
    # Sampled while the bridge still runs: a delivery process it started is still there to count.
    cpu = bridge.proc.cpu_seconds() - cpu_before
    stats = await sink_stats(http, sink)
    return Ingest(
        load=load,
        e2e=load.ok / (last_outcome - started),
        cpu_ms=cpu * 1000 / load.ok if load.ok else float("nan"),
        lost=(load.ok - stats["livechat"]["unique"]) + (load.ok - stats["outcomes"]["unique"]),
        duplicated=stats["livechat"]["duplicates"] + stats["outcomes"]["duplicates"],
    )


async def latency_run(
    args: argparse.Namespace, http: aiohttp.ClientSession, sink: str, bridge: Subject, run: str
) -> dict[str, Any]:
    # Warm-up at the same load, not recorded: the targets are about the steady state, not the
    # first second's connection set-up.
    if args.warmup > 0:
        warm = await open_loop(http, bridge.url, f"{run}w", args.rate, args.warmup, args.chats)
        await until_delivered(http, sink, "livechat", warm.ok)
    await http.post(f"{sink}/clear")
    fixed = await open_loop(http, bridge.url, run, args.rate, args.seconds, args.chats)
    await until_delivered(http, sink, "livechat", fixed.ok)
    livechat = (await sink_stats(http, sink, arrival=True))["livechat"]
    arrivals = livechat["arrival"]
    delivery_ms = [(arrivals[k] - t) * 1000 for k, t in fixed.sent_at.items() if k in arrivals]
    return {
        "ack_p50": pct(fixed.ack_ms, 50),
        "ack_p99": pct(fixed.ack_ms, 99),
        "delivery_p50": pct(delivery_ms, 50),
        "delivery_p99": pct(delivery_ms, 99),
        "fixed_ok": fixed.ok,
        "fixed_sent": fixed.sent,
        "fixed_duplicated": livechat["duplicates"],
    }


async def measure_bridge(
    args: argparse.Namespace,
    tmp: Path,
    sink: str,
    synchronous: str,
    http: aiohttp.ClientSession,
    rnd: int,
) -> dict[str, Any]:
    """One round's bridge figures: a fresh process on a fresh database, run ids of its own."""
    db = round_db(tmp, synchronous, rnd)
    bridge = await start_bridge(tmp, sink, db, synchronous, args.log_level, http, args.event_loop)
    try:
        with WalSampler(db) as wal:
            ingest = await ingest_run(args, http, sink, bridge, f"ing{synchronous[0]}r{rnd}")
            latency = await latency_run(args, http, sink, bridge, f"lat{synchronous[0]}r{rnd}")
        peak_rss_mb = bridge.proc.peak_rss_mb()
    finally:
        bridge.proc.stop()
    return {
        "ingest": ingest.load.rate,
        "ingest_errors": ingest.load.errors,
        "e2e": ingest.e2e,
        "cpu_ms_per_message": ingest.cpu_ms,
        "lost": ingest.lost,
        "duplicated": ingest.duplicated + latency.pop("fixed_duplicated"),
        **latency,
        "peak_rss_mb": peak_rss_mb,
        "peak_wal_mb": wal.peak_mb,
    }


async def measure_scale(
    args: argparse.Namespace, tmp: Path, sink: str, synchronous: str, http: aiohttp.ClientSession
) -> dict[str, Any]:
    """Ingest on a database filled with history, then at once on an empty one again, so that
    the filled-database figure has an empty-database figure taken close in time."""
    db = round_db(tmp, synchronous, args.repeat - 1)  # it holds the bridge's schema already
    prefill_seconds = prefill(db, args.scale_sessions, args.scale_messages)
    bridge = await start_bridge(tmp, sink, db, synchronous, args.log_level, http, args.event_loop)
    try:
        with WalSampler(db) as scale_wal:
            scale = await ingest_run(args, http, sink, bridge, f"scl{synchronous[0]}")
        scale_rss_mb = bridge.proc.peak_rss_mb()
    finally:
        bridge.proc.stop()

    empty_db = str(tmp / f"bridge-{synchronous}-after-scale.sqlite3")
    bridge = await start_bridge(
        tmp, sink, empty_db, synchronous, args.log_level, http, args.event_loop
    )
    try:
        with WalSampler(empty_db) as after_wal:
            after = await ingest_run(args, http, sink, bridge, f"aft{synchronous[0]}")
        after_rss_mb = bridge.proc.peak_rss_mb()
    finally:
        bridge.proc.stop()
    return {
        "prefill_seconds": prefill_seconds,
        "scale_ingest": scale.load.rate,
        "scale_cpu_ms_per_message": scale.cpu_ms,
        "empty_ingest_after": after.load.rate,
        "lost": scale.lost + after.lost,
        "duplicated": scale.duplicated + after.duplicated,
        "peak_rss_mb": max(scale_rss_mb, after_rss_mb),
        "peak_wal_mb": max(scale_wal.peak_mb, after_wal.peak_mb),
        "db_mb": os.path.getsize(db) / 1e6,
    }


async def measure_baselines(
    args: argparse.Namespace, tmp: Path, sink: str, http: aiohttp.ClientSession, rnd: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    port = free_port()
    proc = Proc(
        ["-m", "bench.baselines", "forward", str(port), f"{sink}/forward"],
        tmp / f"forward-r{rnd}.log",
    )
    try:
        await wait_http(http, f"http://127.0.0.1:{port}/")
        await http.post(f"{sink}/clear")
        cpu_before = proc.cpu_seconds()
        result = await closed_loop(
            http,
            f"http://127.0.0.1:{port}/messengers/load/webhook",
            f"fwdr{rnd}",
            args.n,
            args.concurrency,
            args.chats,
        )
        # Each request is forwarded before it is answered: nothing is left to do at this point.
        cpu = proc.cpu_seconds() - cpu_before
        stats = await sink_stats(http, sink)
        out["forward"] = result.rate
        out["forward_cpu_ms_per_message"] = cpu * 1000 / result.ok if result.ok else float("nan")
        out["forward_loss"] = result.ok - stats["forwarded"]["unique"]
    finally:
        proc.stop()
    for synchronous in args.synchronous:
        port = free_port()
        db = str(tmp / f"baseline-{synchronous}-r{rnd}.sqlite3")  # empty, as the bridge's is
        proc = Proc(
            ["-m", "bench.baselines", "sqlite", str(port), db, synchronous],
            tmp / f"sqlite-{synchronous}-r{rnd}.log",
        )
        try:
            await wait_http(http, f"http://127.0.0.1:{port}/")
            result = await closed_loop(
                http,
                f"http://127.0.0.1:{port}/messengers/load/webhook",
                f"sql{synchronous[0]}r{rnd}",
                args.n,
                args.concurrency,
                args.chats,
            )
            out[f"sqlite_{synchronous}"] = result.rate
        finally:
            proc.stop()
    return out


LATENCIES = ("ack_p50", "ack_p99", "delivery_p50", "delivery_p99")


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(
    base_rounds: list[dict[str, Any]],
    bridge_rounds: dict[str, list[dict[str, Any]]],
    scale: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Medians over the rounds; each ratio from the bridge and baseline of the same round."""
    baselines = {
        key: spread([b[key] for b in base_rounds])
        for key in base_rounds[0]
        if key != "forward_loss"
    }
    bridges: dict[str, Any] = {}
    for synchronous, rounds in bridge_rounds.items():
        pairs = list(zip(base_rounds, rounds, strict=True))
        b: dict[str, Any] = {
            key: spread([r[key] for r in rounds])
            for key in ("ingest", "e2e", "cpu_ms_per_message", *LATENCIES)
        }
        b["ingest_ratio"] = spread(
            [r["ingest"] / base[f"sqlite_{synchronous}"] for base, r in pairs]
        )
        b["e2e_ratio"] = spread([r["e2e"] / base["forward"] for base, r in pairs])
        b["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
        b["peak_wal_mb"] = max(r["peak_wal_mb"] for r in rounds)
        b["lost"] = sum(r["lost"] for r in rounds)
        b["duplicated"] = sum(r["duplicated"] for r in rounds)
        if synchronous in scale:
            s = scale[synchronous]
            empty = [r["ingest"] for r in rounds] + [s["empty_ingest_after"]]
            b["scale_ingest"] = s["scale_ingest"]
            b["scale_ratio"] = s["scale_ingest"] / statistics.median(empty)
            b["scale_ratio_after"] = s["scale_ingest"] / s["empty_ingest_after"]
            b["peak_rss_mb"] = max(b["peak_rss_mb"], s["peak_rss_mb"])
            b["peak_wal_mb"] = max(b["peak_wal_mb"], s["peak_wal_mb"])
            b["lost"] += s["lost"]
            b["duplicated"] += s["duplicated"]
        bridges[synchronous] = b
    return {"baselines": baselines, "bridge": bridges}


def with_range(s: dict[str, float], digits: int = 2, unit: str = "") -> str:
    """`0.36x (0.31-0.40)`, with an en dash: the median, then the lowest and highest round."""
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}{DASH}{s['max']:.{digits}f})"


def report(summary: dict[str, Any], args: argparse.Namespace) -> str:
    base, bridges = summary["baselines"], summary["bridge"]
    lines = [
        f"messages per run: {args.n}, clients: {args.concurrency}, chats: {args.chats}; "
        f"fixed load: {args.rate:.0f} msg/s for {args.seconds:.0f} s; "
        f"scale: {args.scale_sessions:,} sessions, {args.scale_messages:,} messages; "
        f"log level {args.log_level}; event loop {args.event_loop}; "
        f"delivery.worker {args.worker}; {args.warmup:.0f} s warm-up before the fixed load",
        f"{args.repeat} rounds (baselines, then bridges); figures: the median over the rounds; "
        f"ratios: computed per round, then the median of the per-round ratios "
        f"(lowest{DASH}highest round)",
        "",
        f"baseline: bare aiohttp forwarding with one POST: {base['forward']['median']:8.0f} msg/s,"
        f" {base['forward_cpu_ms_per_message']['median']:.2f} CPU ms per message",
    ]
    for synchronous in args.synchronous:
        lines.append(
            f"baseline: bare aiohttp + SQLite insert and commit per request ({synchronous}):"
            f" {base[f'sqlite_{synchronous}']['median']:8.0f} msg/s"
        )
    lines.append("")

    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Any) -> None:
        rows.append((label, [fn(b) for b in bridges.values()]))

    row("ingest msg/s (200 = committed)", lambda b: f"{b['ingest']['median']:.0f}")
    row("  ratio to SQLite-per-request (>=0.8)", lambda b: with_range(b["ingest_ratio"], unit="x"))
    row("end to end msg/s (outcome sent)", lambda b: f"{b['e2e']['median']:.0f}")
    row("  ratio to forwarding (>=0.35)", lambda b: with_range(b["e2e_ratio"], unit="x"))
    row(
        "bridge CPU ms per message (all processes of the subject)",
        lambda b: with_range(b["cpu_ms_per_message"]),
    )
    row(
        f"ack p50 / p99 ms @{args.rate:.0f}/s (p99<=15)",
        lambda b: f"{b['ack_p50']['median']:.1f} / {b['ack_p99']['median']:.1f}",
    )
    row(
        "delivery p50 / p99 ms (p99<=50)",
        lambda b: f"{b['delivery_p50']['median']:.1f} / {b['delivery_p99']['median']:.1f}",
    )
    if args.scale_sessions:
        row("ingest msg/s on the filled database", lambda b: f"{b['scale_ingest']:.0f}")
        row("  ratio to the empty database (>=0.8)", lambda b: f"{b['scale_ratio']:.2f}x")
        row("  to the empty-database run just after", lambda b: f"{b['scale_ratio_after']:.2f}x")
    row("peak RSS MB, bridge + delivery process (<=150)", lambda b: f"{b['peak_rss_mb']:.0f}")
    row("peak WAL MB (<=67: wal_max_bytes, 64 MiB)", lambda b: f"{b['peak_wal_mb']:.1f}")
    row("lost / duplicated at the sinks", lambda b: f"{b['lost']} / {b['duplicated']}")

    width = max(len(label) for label, _ in rows) + 2
    lines.append(f"{'':{width}}" + "".join(f"{name:>22}" for name in bridges))
    lines += [f"{label:{width}}" + "".join(f"{v:>22}" for v in values) for label, values in rows]
    return "\n".join(lines)


async def measure_all(
    args: argparse.Namespace, tmp: Path, sink: str, http: aiohttp.ClientSession
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """Rounds of baselines then bridges, interleaved so that each round's ratios compare
    measurements taken close in time on a machine whose speed drifts; then the slow scale runs."""
    base_rounds: list[dict[str, Any]] = []
    bridge_rounds: dict[str, list[dict[str, Any]]] = {s: [] for s in args.synchronous}
    for rnd in range(args.repeat):
        print(f"bench: round {rnd + 1} of {args.repeat}", file=sys.stderr, flush=True)
        base_rounds.append(await measure_baselines(args, tmp, sink, http, rnd))
        for synchronous in args.synchronous:
            bridge_rounds[synchronous].append(
                await measure_bridge(args, tmp, sink, synchronous, http, rnd)
            )
    scale: dict[str, dict[str, Any]] = {}
    if args.scale_sessions:
        for synchronous in args.synchronous:
            print(f"bench: filled database ({synchronous})", file=sys.stderr, flush=True)
            scale[synchronous] = await measure_scale(args, tmp, sink, synchronous, http)
    return base_rounds, bridge_rounds, scale


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
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds at the fixed load before it is measured"
    )
    parser.add_argument(
        "--worker",
        default="process",
        choices=["process", "inline"],
        help="the bridge's delivery.worker (set through its environment)",
    )
    parser.add_argument("--scale-sessions", type=int, default=1_000_000)
    parser.add_argument("--scale-messages", type=int, default=5_000_000)
    parser.add_argument("--synchronous", nargs="+", default=["normal", "full"])
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--event-loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of baselines and bridges (default 3)"
    )
    args = parser.parse_args()
    os.environ["BRIDGE_DELIVERY__WORKER"] = args.worker  # the bridges inherit it
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
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
                base_rounds, bridge_rounds, scale = await measure_all(args, tmp, sink, http)
            finally:
                sinks.stop()
        summary = summarise(base_rounds, bridge_rounds, scale)
        text = report(summary, args)
        print(text)
        results = ROOT / "bench" / "results"
        results.mkdir(exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        raw = {"baselines": base_rounds, "bridge": bridge_rounds, "scale": scale}
        (results / f"{stamp}.json").write_text(
            json.dumps({"args": vars(args), "rounds": raw, "summary": summary}, indent=2),
            encoding="utf-8",
        )
        (results / f"{stamp}.txt").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
