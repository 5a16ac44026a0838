"""The bench's summary (medians over rounds, per-round ratios) and its printed report."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import textwrap
from typing import Any

DASH = "\u2013"  # an en dash, for ranges: 0.31\u20130.40


def spread(values: list[float]) -> dict[str, float]:
    """Median, lowest and highest of `values` (NaNs left out; all NaN when nothing is left)."""
    clean = [v for v in values if isinstance(v, int | float) and not math.isnan(v)]
    if not clean:
        return {"median": math.nan, "min": math.nan, "max": math.nan}
    return {"median": statistics.median(clean), "min": min(clean), "max": max(clean)}


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """{"a": {"b": 1}} -> {"a.b": 1}, numbers only."""
    out: dict[str, float] = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = value
    return out


def _over_rounds(docs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    flat = [flatten(d) for d in docs]
    return {key: spread([f.get(key, math.nan) for f in flat]) for key in flat[0]}


def summarise(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Medians over the rounds; each ratio from the bridge and baseline of the same round."""
    rounds = raw["rounds"]
    summary: dict[str, Any] = {
        "alone": _over_rounds([r["alone"] for r in rounds]),
        "baselines": _over_rounds([r["baselines"] for r in rounds]),
        "bridge": {},
        "scale": {},
        "fixed_answer": rounds[0]["alone"]["fixed_answer"],
    }
    for sync in args.synchronous:
        bridge_rounds = [r["bridge"][sync] for r in rounds]
        b: dict[str, Any] = _over_rounds(bridge_rounds)
        pairs = [(r["baselines"], r["bridge"][sync]) for r in rounds]
        sqlite = f"sqlite_{sync}"
        b["ratio.paused_ingest"] = spread(
            [x["paused"]["ingest"] / base[sqlite] for base, x in pairs]
        )
        b["ratio.on_ingest"] = spread([x["on"]["ingest"] / base[sqlite] for base, x in pairs])
        b["ratio.e2e"] = spread([x["on"]["e2e"] / base["forward"] for base, x in pairs])
        phases = ("paused", "on", "fixed", "near_max")
        b["lost"] = sum(x[p]["lost"] for x in bridge_rounds for p in phases)
        b["duplicated"] = sum(x[p]["duplicated"] for x in bridge_rounds for p in phases)
        b["peak_rss_mb.max_total"] = max(
            x["peak_rss_mb"]["serving"] + x["peak_rss_mb"]["delivery"] for x in bridge_rounds
        )
        s = raw["scale"].get(sync)
        if s:
            empty = [x["on"]["ingest"] for x in bridge_rounds] + [s["empty"]["ingest"]]
            b["scale.ingest"] = s["filled"]["ingest"]
            b["scale.ratio"] = s["filled"]["ingest"] / statistics.median(empty)
            b["scale.ratio_after"] = s["filled"]["ingest"] / s["empty"]["ingest"]
            b["lost"] += s["filled"]["lost"] + s["empty"]["lost"]
            b["duplicated"] += s["filled"]["duplicated"] + s["empty"]["duplicated"]
        summary["bridge"][sync] = b
    return summary


def _m(s: dict[str, float], digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f}"


def _r(s: dict[str, float], digits: int = 2, unit: str = "") -> str:
    """`0.36x (0.31-0.40)`: the median, then the lowest and highest round."""
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}{DASH}{s['max']:.{digits}f})"


def _pair(a: dict[str, float], b: dict[str, float], digits: int = 1) -> str:
    return f"{a['median']:.{digits}f} / {b['median']:.{digits}f}"


def method(args: argparse.Namespace, fixed_answer: str) -> str:
    text = (
        f"Method. Load from wrk (C; Lua scripts make every request a distinct message: its own "
        f"externalMessageId, spread over {args.chats} chats). Throughput: closed loop, "
        f"{args.threads} wrk thread(s) and {args.connections} keep-alive connections for "
        f"{args.duration:g} s per measurement, counted in 2xx answers per second (a 200 from the "
        f"bridge means committed). Fixed offered loads: wrk with {args.paced_connections} "
        f"connections, one per thread, request k due at start + k/rate, for {args.seconds:g} s "
        f"after {args.warmup:g} s of warm-up; a request whose connection was still busy when it "
        f"was due is timed from when it was due (no coordinated omission). {args.repeat} rounds, "
        f"interleaved: each measures the generator alone (against {fixed_answer}) and each sink "
        f"alone, then the baselines, then each bridge on a fresh process and database. Ingest "
        f"ratio: the bridge's ingest over a bare aiohttp + aiosqlite server's that inserts and "
        f"commits each request (same synchronous mode). End-to-end ratio: messages acknowledged "
        f"per second from the load's start to the last messageOutcome at the messenger sink, over "
        f"a bare forwarder's rate (parse, one POST to a sink, answer). A ratio is computed within "
        f"a round; the report gives the median of the rounds' ratios (lowest{DASH}highest round); "
        f"other figures are medians over the rounds. Deliveries paused: the live-chat sink holds "
        f"every call unanswered during the load, so the delivery slots fill at once and the rest "
        f"waits in the outbox; then it answers them all and the backlog's drain is timed. CPU: "
        f"user + system time from /proc per acknowledged message, the serving process and the "
        f"delivery process apart. Lost and duplicated: counted at the sinks by message id "
        f"(exact at fixed loads; in a closed loop, by counts, since wrk cannot say which id a "
        f"request cut off by the end of the run carried)."
    )
    return textwrap.fill(text, width=100)


def report(summary: dict[str, Any], args: argparse.Namespace, started: str) -> str:
    alone, base, bridges = summary["alone"], summary["baselines"], summary["bridge"]
    fixed_answer = (
        "nginx's fixed answer" if summary["fixed_answer"] == "nginx" else summary["fixed_answer"]
    )
    lines = [
        f"messenger-bridge bench, {started}; {os.cpu_count()} cores; Python "
        f"{platform.python_version()}; event loop {args.event_loop}; delivery.worker "
        f"{args.worker}; log level {args.log_level}",
        "",
        method(args, fixed_answer),
        "",
        "The load generator and the sinks alone (req/s; median, lowest" + DASH + "highest round):",
        f"  wrk, closed loop, against {fixed_answer:<34} {_r(alone['generator'], 0)}"
        f"  ({alone['generator_cpu_ms']['median']:.3f} CPU ms per request)",
        f"  wrk paced at {alone['paced.rate']['median']:.0f}/s against it: achieved "
        f"{_m(alone['paced.achieved'])}/s, sends late p99 "
        f"{alone['paced.late_p99_ms']['median']:.2f} ms, answer p99 "
        f"{alone['paced.ack_p99_ms']['median']:.2f} ms",
        f"  live-chat sink ({args.sink_processes} processes)                    "
        f"{_r(alone['sink_livechat'], 0)}",
        f"  messenger sink (messageOutcome)                       {_r(alone['sink_messenger'], 0)}",
        f"  forwarding sink                                       {_r(alone['sink_forward'], 0)}",
        "",
        "Baselines (msg/s):",
        f"  bare forwarder (parse, one POST to the sink, answer)  {_r(base['forward'], 0)}"
        f"  {base['forward_cpu_ms']['median']:.2f} CPU ms per message",
    ]
    for sync in args.synchronous:
        key = f"sqlite_{sync}"
        lines.append(
            f"  insert and commit per request, aiosqlite ({sync:<6})   {_r(base[key], 0)}"
            f"  {base[key + '_cpu_ms']['median']:.2f} CPU ms per message"
        )
    lines.append("")

    rows: list[tuple[str, list[str], str]] = []

    def row(label: str, fn: Any, target: str = "") -> None:
        rows.append((label, [fn(b) for b in bridges.values()], target))

    row("ingest, deliveries paused (msg/s)", lambda b: _m(b["paused.ingest"]))
    row("  ratio to insert-and-commit", lambda b: _r(b["ratio.paused_ingest"], unit="x"), ">= 0.8")
    row("ingest, deliveries on (msg/s)", lambda b: _m(b["on.ingest"]))
    row("  ratio to insert-and-commit", lambda b: _r(b["ratio.on_ingest"], unit="x"), ">= 0.8")
    row("end to end (msg/s, to the last outcome)", lambda b: _m(b["on.e2e"]))
    row("  ratio to the forwarder", lambda b: _r(b["ratio.e2e"], unit="x"), ">= 0.35")
    row("backlog drain after the pause (msg/s)", lambda b: _m(b["paused.drain"]))
    row(
        "closed-loop ack p50 / p99 ms, paused",
        lambda b: _pair(b["paused.closed_p50_ms"], b["paused.closed_p99_ms"]),
    )
    row(
        f"ack p50 / p99 ms @{args.rate:.0f}/s",
        lambda b: _pair(b["fixed.ack_p50_ms"], b["fixed.ack_p99_ms"]),
        "p99 <= 20",
    )
    row(
        f"delivery p50 / p99 ms @{args.rate:.0f}/s",
        lambda b: _pair(b["fixed.delivery_p50_ms"], b["fixed.delivery_p99_ms"]),
        "p99 <= 50",
    )
    pct = f"{args.max_fraction:.0%}"
    row(f"fixed load at {pct} of 'on' (msg/s)", lambda b: _m(b["near_max.rate"]))
    row(
        f"ack p50 / p99 ms @{pct}",
        lambda b: _pair(b["near_max.ack_p50_ms"], b["near_max.ack_p99_ms"]),
    )
    row(
        f"delivery p50 / p99 ms @{pct}",
        lambda b: _pair(b["near_max.delivery_p50_ms"], b["near_max.delivery_p99_ms"]),
    )
    row(
        f"  achieved / offered msg/s @{pct}",
        lambda b: f"{b['near_max.achieved']['median']:.0f} / {b['near_max.rate']['median']:.0f}",
    )
    row(
        "CPU ms/msg serving: paused / on",
        lambda b: _pair(b["paused.cpu_ms.serving"], b["on.cpu_ms.serving"], 3),
    )
    row(
        "CPU ms/msg delivery process: paused / on",
        lambda b: _pair(b["paused.cpu_ms.delivery"], b["on.cpu_ms.delivery"], 3),
    )
    row(
        "CPU ms/msg of the drain: serving / delivery",
        lambda b: _pair(b["paused.drain_cpu_ms.serving"], b["paused.drain_cpu_ms.delivery"], 3),
    )
    row(
        f"CPU ms/msg @{args.rate:.0f}/s: serving / delivery",
        lambda b: _pair(b["fixed.cpu_ms.serving"], b["fixed.cpu_ms.delivery"], 3),
    )
    row(
        "CPU ms/msg, 'on': sinks / wrk",
        lambda b: _pair(b["on.sinks_cpu_ms"], b["on.wrk_cpu_ms"], 3),
    )
    row(
        "peak RSS MB: serving / delivery",
        lambda b: _pair(b["peak_rss_mb.serving"], b["peak_rss_mb.delivery"], 0),
        "sum <= 150",
    )
    row(
        "peak WAL MB: paused / on / @fixed loads",
        lambda b: (
            f"{b['paused.wal_peak_mb']['max']:.1f} / {b['on.wal_peak_mb']['max']:.1f} / "
            f"{max(b['fixed.wal_peak_mb']['max'], b['near_max.wal_peak_mb']['max']):.1f}"
        ),
    )
    if args.scale_sessions:
        row("ingest on the filled database (msg/s)", lambda b: f"{b['scale.ingest']:.0f}")
        row("  ratio to the empty database", lambda b: f"{b['scale.ratio']:.2f}x", ">= 0.8")
        row("  to the empty-database run just after", lambda b: f"{b['scale.ratio_after']:.2f}x")
    row("lost / duplicated at the sinks", lambda b: f"{b['lost']} / {b['duplicated']}", "0 / 0")

    width = max(len(label) for label, _, _ in rows) + 1
    col = 22
    lines.append(f"{'bridge':{width}}" + "".join(f"{name:>{col}}" for name in bridges) + "  target")
    lines += [
        f"{label:{width}}" + "".join(f"{v:>{col}}" for v in values) + (f"  {t}" if t else "")
        for label, values, t in rows
    ]
    lines += ["", headroom(summary)]
    return "\n".join(lines)


def headroom(summary: dict[str, Any]) -> str:
    """Whether the generator or a sink could have capped a subject: their rates alone against
    the fastest subject's."""
    alone, base, bridges = summary["alone"], summary["baselines"], summary["bridge"]
    fastest = max(
        [base["forward"]["max"]]
        + [v["max"] for k, v in base.items() if k.startswith("sqlite_") and "cpu" not in k]
        + [b["paused.ingest"]["max"] for b in bridges.values()]
    )
    generator = alone["generator"]["min"]
    sink = min(alone[k]["min"] for k in ("sink_livechat", "sink_messenger", "sink_forward"))
    verdict = (
        "neither caps a subject"
        if min(generator, sink) >= 1.5 * fastest
        else "WARNING: within 1.5x of a subject, which it may cap"
    )
    return textwrap.fill(
        f"Headroom: the generator alone reached at least {generator:,.0f} req/s and the slowest "
        f"sink alone at least {sink:,.0f} req/s (lowest rounds), against {fastest:,.0f} msg/s "
        f"for the fastest subject in any round: {verdict}.",
        width=100,
    )
