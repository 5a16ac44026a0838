"""`make bench`: the bridge, its baselines, the load generator and the sinks, in one run.

Load comes from wrk (C; see bench/wrk.py and the Lua scripts beside it), each request a
distinct message. Every subject is its own process (as in production); the sinks playing the
live chat and the messenger are a pool of processes; nginx gives the load generator a
fixed-answer target, to measure what it manages alone. The report (`report.py`) begins with a
paragraph on the method; the raw figures of every round go to bench/results/<time>.json.

Each round measures, in this order: the load generator alone and each sink alone; the
baselines (a bare forwarder; a bare aiohttp + aiosqlite server inserting and committing each
request, once per synchronous mode); then, per synchronous mode, one bridge on a fresh process
and database through four phases:

1. ingest with deliveries paused: the live-chat sink holds every call unanswered, so the
   delivery slots fill at once and everything else waits in the outbox (the pure ack path);
   then released, and the backlog's drain is timed (deliveries alone);
2. ingest with deliveries on, followed until every messageOutcome arrived (end to end);
3. a fixed offered load of --rate msg/s (500), after --warmup seconds at that rate;
4. a fixed offered load of 80% of what phase 2 sustained.

Then, with PostgreSQL subjects (--backends; postgresN is N bridge processes sharing a fresh
database of one PostgreSQL server started for the run with durability on, see bench/postgres.py),
each goes through phases 2 and 3, and the report sets them beside the SQLite bridge
(synchronous = full) of the same round. No proxy stands between wrk and the replicas: wrk's Lua
connects its threads to them in turn (common.lua's spread), as a layer-4 load balancer spreads
connections; an nginx proxy would take CPU from the subjects on this 2-core machine, and a real
load balancer runs on a machine of its own.

The development machine is a VM whose speed drifts from minute to minute, so ratios are
computed within a round and the report gives their median and range over the rounds. The
filled-database runs are slow: once per synchronous mode, after the rounds, each followed at once
by an empty-database run to compare it with.

    python -m bench.run                  # the full run
    python -m bench.run --quick          # shorter phases and a smaller filled database
    python -m bench.run --repeat 5       # more rounds, for steadier medians
    python -m bench.run --phase e2e --repeat 1 --synchronous normal
                                         # one phase of the bridge alone, its raw figures
    python -m bench.run --backends sqlite  # without the PostgreSQL subjects
    python -m bench.run --phase e2e --repeat 1 --backends postgres2
                                         # one phase of two replicas on PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp

from bench import nginx, wrk
from bench import postgres as pg
from bench.postgres import BenchPostgres
from bench.procs import ROOT, Proc, WalSampler, free_port, wait_http
from bench.report import report, summarise
from bench.sinks import SinkPool

CODE = "bench-confirmation-code"
WEBHOOK = "/messengers/load/webhook"
MB = 1e6


def sqlite_storage(db: str, synchronous: str) -> str:
    return f'path = "{db}"\nsynchronous = "{synchronous}"'


def postgres_storage(dsn: str) -> str:
    # The pool sizes are the defaults (pool_min 2, pool_max 10), as an operator starts with.
    return f'backend = "postgres"\ndsn = "{dsn}"'


def bridge_toml(
    port: int, sink: str, storage: str, log_level: str, loop: str, public_port: int | None = None
) -> str:
    # request_timeout outlasts the paused phase, whose calls the live-chat sink holds.
    return f"""
[server]
event_loop = "{loop}"
host = "127.0.0.1"
port = {port}
public_url = "http://127.0.0.1:{public_port or port}"
max_body_bytes = 1048576
[storage]
{storage}
[admin]
token = "bench-admin-token"
[delivery]
request_timeout = 300
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
class Bridge:
    url: str
    proc: Proc
    db: str
    addrs: tuple[str, ...] = ()  # one process: wrk connects to the URL's address

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the serving process, and the delivery process (its children)."""
        cpu = self.proc.cpu()
        return {"serving": cpu.own, "delivery": cpu.children}

    def stop(self) -> None:
        self.proc.stop()


@dataclass
class Replicas:
    """N bridge processes on one PostgreSQL database; wrk spreads its connections over them."""

    replicas: list[Bridge]
    postgres: BenchPostgres

    @property
    def url(self) -> str:
        return self.replicas[0].url

    @property
    def addrs(self) -> tuple[str, ...]:
        return (
            tuple(urlsplit(b.url).netloc for b in self.replicas) if len(self.replicas) > 1 else ()
        )

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far: the replicas' processes summed, the server's processes summed."""
        return {
            "replicas": sum(b.proc.cpu().total for b in self.replicas),
            "postgres": self.postgres.cpu(),
        }

    def stop(self) -> None:
        for bridge in self.replicas:
            bridge.proc.stop()


class Subject(Protocol):
    """What the phases measure: one bridge, or replicas."""

    @property
    def url(self) -> str: ...  # the webhook URL wrk loads

    @property
    def addrs(self) -> tuple[str, ...]: ...  # "host:port" of each replica when several

    def cpu(self) -> dict[str, float]: ...


class Wal(Protocol):
    def phase(self) -> contextlib.AbstractContextManager[dict[str, int]]: ...


class NoWal:
    """The WAL sampler's stand-in for PostgreSQL subjects (their WAL is the server's)."""

    def phase(self) -> contextlib.AbstractContextManager[dict[str, int]]:
        return contextlib.nullcontext({})


@dataclass
class Ctx:
    """What every phase needs: the options, the run's folder, the sinks and a client."""

    args: argparse.Namespace
    tmp: Path
    http: aiohttp.ClientSession
    sinks: SinkPool
    sink_procs: list[Proc]
    fixed_answer: str  # the URL of the fixed-answer target for the generator alone
    fixed_answer_kind: str
    postgres: BenchPostgres | None = None  # with PostgreSQL subjects (--backends)

    def sinks_cpu(self) -> float:
        return sum(p.cpu().total for p in self.sink_procs)

    async def closed(
        self, url: str, run: str, shape: str = "message", addrs: tuple[str, ...] = ()
    ) -> wrk.Closed:
        a = self.args
        return await wrk.closed(
            url,
            run,
            seconds=a.duration,
            connections=a.connections,
            threads=closed_threads(a.threads, len(addrs)),
            chats=a.chats,
            shape=shape,
            tmp=self.tmp,
            addrs=list(addrs),
        )

    async def paced(
        self, url: str, run: str, rate: float, seconds: float, addrs: tuple[str, ...] = ()
    ) -> wrk.Paced:
        a = self.args
        return await wrk.paced(
            url,
            run,
            rate=rate,
            seconds=seconds,
            connections=a.paced_connections,
            chats=a.chats,
            tmp=self.tmp,
            addrs=list(addrs),
        )

    async def until_arrived(self, kind: str, n: int, ids: set[str] | None = None) -> None:
        """Wait until `n` distinct ids of `kind` arrived at the sinks (with `ids`: all of
        them, since a request cut off at the load's end may arrive too, but not count), or
        until none more arrived for --stall seconds (what is missing then is counted as lost)."""
        last, last_change = -1, time.monotonic()
        while True:
            got = await self.sinks.totals(kind)
            if got >= n:
                arrived = (await self.sinks.stats())[kind]
                if arrived["unique"] >= n and (ids is None or ids <= arrived["ids"]):
                    return
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > self.args.stall:
                print(f"bench: {got} of {n} {kind} arrived; giving up", file=sys.stderr)
                return
            await asyncio.sleep(0.05)


def closed_threads(threads: int, replicas: int) -> int:
    """wrk threads for a closed loop over `replicas` (0: one address): a multiple of them, so
    that each replica gets as many connections."""
    return -(-threads // replicas) * replicas if replicas > 1 else threads


async def start_process(
    ctx: Ctx, name: str, storage: str, db: str, public_port: int | None = None
) -> Bridge:
    """A bridge process with this `[storage]`, once it is ready and its channel active."""
    args, http = ctx.args, ctx.http
    port = free_port()
    config = ctx.tmp / f"bridge-{name}-{port}.toml"
    config.write_text(
        bridge_toml(port, ctx.sinks.url, storage, args.log_level, args.event_loop, public_port)
    )
    proc = Proc(["-m", "bridge", "--config", str(config), "serve"], ctx.tmp / f"bridge-{port}.log")
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
    return Bridge(f"{base}{WEBHOOK}", proc, db)


async def start_bridge(ctx: Ctx, db: str, synchronous: str) -> Bridge:
    return await start_process(ctx, synchronous, sqlite_storage(db, synchronous), db)


async def start_replicas(ctx: Ctx, name: str, rnd: int) -> Replicas:
    """`name`'s replicas (postgresN: N) on a fresh database of the run's server, started one
    after the other (the first runs the migrations), all answering before the load starts."""
    assert ctx.postgres is not None
    database = f"bench_{name}_r{rnd}"
    dsn = await asyncio.to_thread(ctx.postgres.fresh_database, database)
    group = Replicas([], ctx.postgres)
    public: int | None = None  # the first replica's, as one URL behind a load balancer
    try:
        for _ in range(replica_count(name)):
            bridge = await start_process(ctx, name, postgres_storage(dsn), database, public)
            group.replicas.append(bridge)
            public = public or urlsplit(bridge.url).port
    except BaseException:
        group.stop()
        raise
    return group


def round_db(tmp: Path, synchronous: str, rnd: int) -> str:
    return str(tmp / f"bridge-{synchronous}-r{rnd}.sqlite3")


def per_message(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
    """CPU ms per message of each group of processes (`Subject.cpu`) between two readings."""
    return {k: (after[k] - before[k]) * 1000 / n if n else float("nan") for k in after}


def closed_loss(ok: int, stats: dict[str, Any]) -> dict[str, int]:
    """Loss after a closed-loop run, by counts: wrk cannot say which ids the requests in flight
    when it stopped carried, so an acknowledged message is lost when fewer distinct ids arrived
    than were acknowledged; `unacknowledged_arrived` are ids of requests cut off by the end of
    the run that the subject had taken (at most one per connection)."""
    lc, oc = stats["livechat"], stats["outcomes"]
    return {
        "lost": max(0, ok - lc["unique"]) + max(0, ok - oc["unique"]),
        "duplicated": lc["duplicates"] + oc["duplicates"],
        "unacknowledged_arrived": max(0, lc["unique"] - ok),
    }


async def paused_phase(ctx: Ctx, bridge: Subject, wal: Wal, tag: str) -> dict[str, Any]:
    """Ingest while the live chat holds every call: the ack path alone. Then the drain."""
    sinks = ctx.sinks
    await sinks.clear()
    await sinks.hold()
    cpu0 = bridge.cpu()
    with wal.phase() as wal_sizes:
        load = await ctx.closed(bridge.url, f"{tag}p", addrs=bridge.addrs)
    cpu1 = bridge.cpu()
    held = (await sinks.stats())["held"]
    released = time.time()
    with wal.phase() as drain_wal_sizes:
        await sinks.release()
        await ctx.until_arrived("outcomes", load.ok)
    cpu2 = bridge.cpu()
    stats = await sinks.stats(arrival=True)
    last = max(stats["outcomes"]["arrival"].values(), default=released)
    return {
        "ingest": load.rate,
        "acked": load.ok,
        "errors": load.errors,
        "closed_p50_ms": load.latency_p50_ms,
        "closed_p99_ms": load.latency_p99_ms,
        "held_calls": held,
        "cpu_ms": per_message(cpu0, cpu1, load.ok),
        "drain": load.ok / (last - released) if last > released else float("nan"),
        "drain_cpu_ms": per_message(cpu1, cpu2, load.ok),
        "wal_mb": {k: v / MB for k, v in wal_sizes.items()},
        "drain_wal_mb": {k: v / MB for k, v in drain_wal_sizes.items()},
        **closed_loss(load.ok, stats),
    }


async def on_phase(ctx: Ctx, bridge: Subject, wal: Wal, tag: str) -> dict[str, Any]:
    """Ingest with deliveries on, followed until every messageOutcome arrived."""
    sinks = ctx.sinks
    await sinks.clear()
    cpu0, sinks0 = bridge.cpu(), ctx.sinks_cpu()
    started = time.time()
    with wal.phase() as wal_sizes:
        load = await ctx.closed(bridge.url, f"{tag}o", addrs=bridge.addrs)
        await ctx.until_arrived("outcomes", load.ok)
    cpu1, sinks1 = bridge.cpu(), ctx.sinks_cpu()
    stats = await sinks.stats(arrival=True)
    last = max(stats["outcomes"]["arrival"].values(), default=started)
    n = load.ok
    return {
        "ingest": load.rate,
        "acked": n,
        "errors": load.errors,
        "closed_p50_ms": load.latency_p50_ms,
        "closed_p99_ms": load.latency_p99_ms,
        "e2e": n / (last - started) if last > started else float("nan"),
        "cpu_ms": per_message(cpu0, cpu1, n),
        "sinks_cpu_ms": (sinks1 - sinks0) * 1000 / n if n else float("nan"),
        "wrk_cpu_ms": load.wrk_cpu_s * 1000 / n if n else float("nan"),
        "wal_mb": {k: v / MB for k, v in wal_sizes.items()},
        **closed_loss(n, stats),
    }


async def fixed_phase(ctx: Ctx, bridge: Subject, wal: Wal, tag: str, rate: float) -> dict[str, Any]:
    """A fixed offered load after a warm-up at the same rate (the targets are about the steady
    state, not the first second's connection set-up). Loss is exact here: wrk's paced script
    knows which id each answer was for."""
    args, sinks = ctx.args, ctx.sinks
    if args.warmup > 0:
        warm = await ctx.paced(bridge.url, f"{tag}w", rate, args.warmup, bridge.addrs)
        await ctx.until_arrived("outcomes", len(warm.acked), set(warm.acked))
    await sinks.clear()
    cpu0 = bridge.cpu()
    with wal.phase() as wal_sizes:
        paced = await ctx.paced(bridge.url, tag, rate, args.seconds, bridge.addrs)
        await ctx.until_arrived("outcomes", len(paced.acked), set(paced.acked))
    cpu1 = bridge.cpu()
    stats = await sinks.stats(arrival=True)
    arrivals = stats["livechat"]["arrival"]
    delivery_ms = [
        (arrivals[k] - start) * 1000 for k, (start, _) in paced.acked.items() if k in arrivals
    ]
    acked = set(paced.acked)
    ack_ms = paced.ack_ms()
    return {
        "rate": rate,
        "offered": paced.offered,
        "achieved": paced.achieved,
        "acked": len(acked),
        "failed": paced.failed,
        "ack_p50_ms": wrk.pct(ack_ms, 50),
        "ack_p99_ms": wrk.pct(ack_ms, 99),
        "ack_max_ms": wrk.pct(ack_ms, 100),
        "delivery_p50_ms": wrk.pct(delivery_ms, 50),
        "delivery_p99_ms": wrk.pct(delivery_ms, 99),
        "generator_late_p99_ms": wrk.pct(paced.late_ms, 99),
        "generator_cpu_ms": paced.wrk_cpu_s * 1000 / len(acked) if acked else float("nan"),
        "busy_past_due": paced.busy_past_due,
        "cpu_ms": per_message(cpu0, cpu1, len(acked)),
        "wal_mb": {k: v / MB for k, v in wal_sizes.items()},
        "lost": len(acked - stats["livechat"]["ids"]) + len(acked - stats["outcomes"]["ids"]),
        "duplicated": stats["livechat"]["duplicates"] + stats["outcomes"]["duplicates"],
    }


async def measure_bridge(ctx: Ctx, synchronous: str, rnd: int) -> dict[str, Any]:
    """One round's bridge figures: a fresh process on a fresh database, run ids of its own."""
    db = round_db(ctx.tmp, synchronous, rnd)
    bridge = await start_bridge(ctx, db, synchronous)
    wal = WalSampler(db)
    tag = f"b{synchronous[0]}r{rnd}"
    try:
        paused = await paused_phase(ctx, bridge, wal, tag)
        on = await on_phase(ctx, bridge, wal, tag)
        fixed = await fixed_phase(ctx, bridge, wal, f"{tag}f", ctx.args.rate)
        near_max = await fixed_phase(
            ctx, bridge, wal, f"{tag}m", max(1.0, round(ctx.args.max_fraction * on["ingest"]))
        )
        serving_mb, delivery_mb = bridge.proc.peak_rss_mb()
    finally:
        bridge.proc.stop()
    return {
        "paused": paused,
        "on": on,
        "fixed": fixed,
        "near_max": near_max,
        "peak_rss_mb": {"serving": serving_mb, "delivery": delivery_mb},
    }


async def measure_postgres(ctx: Ctx, name: str, rnd: int) -> dict[str, Any]:
    """One round's figures of `name`'s replicas on a fresh PostgreSQL database: the phases
    the report compares with SQLite's (ingest with deliveries on and end to end; the first
    fixed load)."""
    assert ctx.postgres is not None
    group = await start_replicas(ctx, name, rnd)
    tag = f"{name[0]}{replica_count(name)}r{rnd}"
    try:
        on = await on_phase(ctx, group, NoWal(), tag)
        fixed = await fixed_phase(ctx, group, NoWal(), f"{tag}f", ctx.args.rate)
        rss = sum(sum(b.proc.peak_rss_mb()) for b in group.replicas)
    finally:
        group.stop()
        await asyncio.to_thread(ctx.postgres.drop_database, group.replicas[0].db)
    return {"on": on, "fixed": fixed, "peak_rss_mb": {"replicas": rss}}


PHASES = ("e2e", "fixed", "paused")  # --phase: on_phase, fixed_phase, paused_phase


async def one_phase(ctx: Ctx, subject: Subject, wal: Wal, tag: str) -> dict[str, Any]:
    if ctx.args.phase == "paused":
        return await paused_phase(ctx, subject, wal, tag)
    if ctx.args.phase == "e2e":
        return await on_phase(ctx, subject, wal, tag)
    return await fixed_phase(ctx, subject, wal, f"{tag}f", ctx.args.rate)


async def measure_phase(ctx: Ctx, synchronous: str, rnd: int) -> dict[str, Any]:
    """One phase (--phase) of a fresh bridge, for comparing a change quickly: no baselines,
    no ratios; CPU ms per message is the figure that moves least with a busy machine."""
    db = round_db(ctx.tmp, synchronous, rnd)
    bridge = await start_bridge(ctx, db, synchronous)
    try:
        return await one_phase(ctx, bridge, WalSampler(db), f"x{synchronous[0]}r{rnd}")
    finally:
        bridge.proc.stop()


async def measure_phase_postgres(ctx: Ctx, name: str, rnd: int) -> dict[str, Any]:
    """--phase for `name`'s replicas on a fresh PostgreSQL database."""
    assert ctx.postgres is not None
    group = await start_replicas(ctx, name, rnd)
    try:
        return await one_phase(ctx, group, NoWal(), f"x{name[0]}{replica_count(name)}r{rnd}")
    finally:
        group.stop()
        await asyncio.to_thread(ctx.postgres.drop_database, group.replicas[0].db)


async def measure_scale(ctx: Ctx, synchronous: str) -> dict[str, Any]:
    """Ingest (deliveries on) on a database filled with history, then at once on an empty one
    again, so that the filled-database figure has an empty-database figure taken close in time."""
    args = ctx.args
    db = round_db(ctx.tmp, synchronous, args.repeat - 1)  # it holds the bridge's schema already
    prefill_seconds = prefill(db, args.scale_sessions, args.scale_messages)
    out: dict[str, Any] = {"prefill_seconds": prefill_seconds}
    for name, path in (("filled", db), ("empty", str(ctx.tmp / f"after-{synchronous}.sqlite3"))):
        bridge = await start_bridge(ctx, path, synchronous)
        try:
            on = await on_phase(ctx, bridge, WalSampler(path), f"s{synchronous[0]}{name[0]}")
            rss = bridge.proc.peak_rss_mb()
        finally:
            bridge.proc.stop()
        out[name] = {**on, "peak_rss_mb": {"serving": rss[0], "delivery": rss[1]}}
    out["db_mb"] = os.path.getsize(db) / MB
    return out


async def measure_alone(ctx: Ctx, rnd: int) -> dict[str, Any]:
    """What the load generator and each sink manage alone, measured the same way as the
    subjects (same script, connections and duration), so a reader sees neither caps them."""
    out: dict[str, Any] = {"fixed_answer": ctx.fixed_answer_kind}
    gen = await ctx.closed(ctx.fixed_answer + WEBHOOK, f"g{rnd}")
    out["generator"] = gen.rate
    out["generator_cpu_ms"] = gen.wrk_cpu_s * 1000 / gen.ok if gen.ok else float("nan")
    check_rate = ctx.args.paced_check_rate
    paced = await ctx.paced(ctx.fixed_answer + WEBHOOK, f"gp{rnd}", check_rate, ctx.args.duration)
    out["paced"] = {
        "rate": check_rate,
        "achieved": paced.achieved,
        "late_p99_ms": wrk.pct(paced.late_ms, 99),
        "ack_p99_ms": wrk.pct(paced.ack_ms(), 99),
    }
    for name, path, shape in (
        ("livechat", "/rest/v1/conversation/c-bench/message", "livechat"),
        ("messenger", "/hook", "outcome"),
        ("forward", "/forward", "message"),
    ):
        result = await ctx.closed(ctx.sinks.url + path, f"k{name[0]}{rnd}", shape)
        out[f"sink_{name}"] = result.rate
    await ctx.sinks.clear()
    return out


async def measure_baselines(ctx: Ctx, rnd: int) -> dict[str, Any]:
    args, tmp, http = ctx.args, ctx.tmp, ctx.http
    out: dict[str, Any] = {}
    for kind, run_id in (("forward", "fwd"), ("forward_reqwest", "fwr")):
        port = free_port()
        proc = Proc(
            ["-m", "bench.baselines", kind, str(port), f"{ctx.sinks.url}/forward"],
            tmp / f"{kind}-r{rnd}.log",
        )
        try:
            await wait_http(http, f"http://127.0.0.1:{port}/")
            await ctx.sinks.clear()
            cpu0 = proc.cpu()
            result = await ctx.closed(f"http://127.0.0.1:{port}{WEBHOOK}", f"{run_id}{rnd}")
            # Each request is forwarded before it is answered: nothing is left to do now.
            cpu = (proc.cpu() - cpu0).total
            stats = await ctx.sinks.stats()
            out[kind] = result.rate
            out[f"{kind}_cpu_ms"] = cpu * 1000 / result.ok if result.ok else float("nan")
            out[f"{kind}_lost"] = max(0, result.ok - stats["forwarded"]["unique"])
            out[f"{kind}_duplicated"] = stats["forwarded"]["duplicates"]
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
            cpu0 = proc.cpu()
            result = await ctx.closed(
                f"http://127.0.0.1:{port}{WEBHOOK}", f"sql{synchronous[0]}{rnd}"
            )
            cpu = (proc.cpu() - cpu0).total
            out[f"sqlite_{synchronous}"] = result.rate
            out[f"sqlite_{synchronous}_cpu_ms"] = (
                cpu * 1000 / result.ok if result.ok else float("nan")
            )
        finally:
            proc.stop()
    return out


async def measure_all(ctx: Ctx) -> dict[str, Any]:
    """Rounds of (generator and sinks alone, baselines, bridges), interleaved so that each
    round's ratios compare measurements minutes apart at most; then the slow scale runs."""
    args = ctx.args
    rounds: list[dict[str, Any]] = []
    for rnd in range(args.repeat):
        print(f"bench: round {rnd + 1} of {args.repeat}", file=sys.stderr, flush=True)
        one: dict[str, Any] = {
            "alone": await measure_alone(ctx, rnd),
            "baselines": await measure_baselines(ctx, rnd),
            "bridge": {},
        }
        for synchronous in args.synchronous if "sqlite" in args.backends else ():
            print(f"bench: round {rnd + 1}: bridge ({synchronous})", file=sys.stderr, flush=True)
            one["bridge"][synchronous] = await measure_bridge(ctx, synchronous, rnd)
        if postgres_backends(args):
            one["postgres"] = {}
        for name in postgres_backends(args):
            print(f"bench: round {rnd + 1}: {name}", file=sys.stderr, flush=True)
            one["postgres"][name] = await measure_postgres(ctx, name, rnd)
        rounds.append(one)
    scale: dict[str, Any] = {}
    if args.scale_sessions and "sqlite" in args.backends:
        for synchronous in args.synchronous:
            print(f"bench: filled database ({synchronous})", file=sys.stderr, flush=True)
            scale[synchronous] = await measure_scale(ctx, synchronous)
    out: dict[str, Any] = {"rounds": rounds, "scale": scale}
    if ctx.postgres is not None:
        out["postgres_version"] = ctx.postgres.version
    return out


def postgres_backends(args: argparse.Namespace) -> list[str]:
    """The PostgreSQL subjects of --backends, in its order ([] in runs saved before it)."""
    return [b for b in getattr(args, "backends", ["sqlite"]) if b.startswith("postgres")]


def replica_count(name: str) -> int:
    """postgresN -> N."""
    return int(name.removeprefix("postgres"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="shorter phases, a smaller filled database")
    add("--repeat", type=int, default=3, help="rounds (default 3)")
    add("--duration", type=float, default=10.0, help="seconds of each closed-loop measurement")
    add("--connections", type=int, default=32, help="wrk connections, closed loop (default 32)")
    add("--threads", type=int, default=1, help="wrk threads, closed loop (default 1)")
    add("--chats", type=int, default=500, help="chats the messages are spread over")
    add("--rate", type=float, default=500.0, help="the first fixed offered load, msg/s")
    add("--max-fraction", type=float, default=0.8, help="the second: this much of phase 2's")
    add("--seconds", type=float, default=20.0, help="seconds of each fixed-load measurement")
    add("--warmup", type=float, default=2.0, help="seconds at a fixed load before it is measured")
    add("--paced-connections", type=int, default=32, help="wrk connections (threads), paced")
    add("--paced-check-rate", type=float, default=4000.0, help="paced generator alone, msg/s")
    add("--sink-processes", type=int, default=2, help="processes of the sink pool")
    add("--stall", type=float, default=30.0, help="give up waiting after this many idle s")
    add(
        "--worker",
        default="process",
        choices=["process", "inline"],
        help="the bridge's delivery.worker (set through its environment)",
    )
    add("--scale-sessions", type=int, default=1_000_000)
    add("--scale-messages", type=int, default=5_000_000)
    add("--synchronous", nargs="+", default=["normal", "full"])
    add(
        "--backends",
        default="sqlite,postgres1,postgres2",
        help="comma-separated subjects: sqlite (one bridge per --synchronous mode), postgresN "
        "(N replicas on one PostgreSQL database; needs the OS package postgresql); default "
        "sqlite,postgres1,postgres2",
    )
    add("--log-level", default="info")
    add("--event-loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    add(
        "--phase",
        choices=PHASES,
        help="run only this phase of the bridge (no baselines, no report): its raw figures",
    )
    add("--report", type=Path, help="print the report of a saved run (bench/results/*.json)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for name in args.backends:
        if name != "sqlite" and not re.fullmatch(r"postgres[1-9]", name):
            parser.error(f"--backends: {name!r} is neither sqlite nor postgresN (N from 1 to 9)")
    if not args.backends:
        parser.error("--backends: name at least one")
    if args.quick:
        args.duration = min(args.duration, 4.0)
        args.seconds = min(args.seconds, 6.0)
        args.warmup = min(args.warmup, 1.0)
        args.stall = min(args.stall, 15.0)
        args.scale_sessions = min(args.scale_sessions, 100_000)
        args.scale_messages = min(args.scale_messages, 500_000)
    return args


@contextlib.asynccontextmanager
async def environment(args: argparse.Namespace, tmp: Path) -> AsyncIterator[Ctx]:
    """The sink pool and the fixed-answer target running, and a client: what phases need.

    `args` needs what `Ctx` reads: duration, connections, threads, chats, paced_connections,
    stall, sink_processes, log_level, event_loop.
    """
    sink_port = free_port()
    controls = [free_port() for _ in range(args.sink_processes)]
    procs = [
        Proc(["-m", "bench.sinks", str(sink_port), str(c)], tmp / f"sinks-{c}.log")
        for c in controls
    ]
    nginx_port = free_port()
    target = nginx.start(tmp, nginx_port)
    server: BenchPostgres | None = None
    try:
        if postgres_backends(args):
            server = BenchPostgres()
            print("bench: starting PostgreSQL (initdb)", file=sys.stderr, flush=True)
            await asyncio.to_thread(server.start)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100), timeout=aiohttp.ClientTimeout(total=120)
        ) as http:
            sinks = SinkPool(sink_port, controls, http)
            for c in controls:
                await wait_http(http, f"http://127.0.0.1:{c}/")
            if target is not None:
                fixed, kind = f"http://127.0.0.1:{nginx_port}", "nginx"
                await wait_http(http, fixed + "/")
            else:
                print(
                    "bench: nginx is not installed (apt-get install nginx-light): the generator "
                    "alone is measured against the sinks' fixed answer, a Python bound",
                    file=sys.stderr,
                )
                fixed, kind = sinks.url, f"the sinks' fixed answer ({len(controls)} processes)"
            yield Ctx(args, tmp, http, sinks, procs, fixed, kind, server)
    finally:
        for proc in [*procs, *([target] if target else [])]:
            proc.stop()
        if server is not None:
            server.stop()


def reprint(path: Path) -> None:
    saved = json.loads(path.read_text(encoding="utf-8"))
    args = argparse.Namespace(**saved["args"])
    print(report(summarise(saved, args), args, saved.get("started", path.stem)))


async def main() -> None:
    args = parse_args()
    if args.report:
        reprint(args.report)
        return
    wrk.wrk_binary()  # fail early, with the install hint
    if postgres_backends(args) and (why := pg.missing()):
        raise SystemExit(f"bench: {why}; or leave PostgreSQL out: --backends sqlite")
    os.environ["BRIDGE_DELIVERY__WORKER"] = args.worker  # the bridges inherit it
    os.environ["BENCH_EVENT_LOOP"] = args.event_loop  # and the baselines this
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    if args.phase:
        with tempfile.TemporaryDirectory(prefix="bench-") as tmpdir:
            async with environment(args, Path(tmpdir)) as ctx:
                for rnd in range(args.repeat):
                    for synchronous in args.synchronous if "sqlite" in args.backends else ():
                        one = await measure_phase(ctx, synchronous, rnd)
                        print(json.dumps({"synchronous": synchronous, "round": rnd, **one}))
                    for name in postgres_backends(args):
                        one = await measure_phase_postgres(ctx, name, rnd)
                        print(json.dumps({"backend": name, "round": rnd, **one}))
        return
    with tempfile.TemporaryDirectory(prefix="bench-") as tmpdir:
        async with environment(args, Path(tmpdir)) as ctx:
            raw = await measure_all(ctx)
    summary = summarise(raw, args)
    text = report(summary, args, started)
    print(text)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (results / f"{stamp}.json").write_text(
        json.dumps(
            {"args": vars(args), "started": started, **raw, "summary": summary},
            indent=2,
            default=str,
        ),
        encoding="utf-8",
    )
    (results / f"{stamp}.txt").write_text(text + "\n", encoding="utf-8")
    print(f"\nraw results: bench/results/{stamp}.json", file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
