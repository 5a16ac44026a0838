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


def postgres_subjects(args: argparse.Namespace) -> list[str]:
    """The PostgreSQL subjects of --backends ([] in runs saved before it)."""
    return [b for b in getattr(args, "backends", ["sqlite"]) if b.startswith("postgres")]


def reference(args: argparse.Namespace) -> str | None:
    """The SQLite bridge the PostgreSQL subjects are compared with: synchronous = "full" (as
    durable as PostgreSQL's commit), else the last mode run; None when SQLite did not run."""
    if "sqlite" not in getattr(args, "backends", ["sqlite"]):
        return None
    return "full" if "full" in args.synchronous else args.synchronous[-1]


def _cpu_total(phase: dict[str, Any]) -> float:
    """CPU ms per message of every process of a subject, summed."""
    return float(sum(phase["cpu_ms"].values()))


def summarise_postgres(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Per PostgreSQL subject: medians over the rounds, and ratios to the SQLite reference
    bridge of the same round (its figures too, under "sqlite")."""
    rounds, ref = raw["rounds"], reference(args)
    phases = ("on", "fixed")
    out: dict[str, Any] = {"reference": ref, "version": raw.get("postgres_version"), "subjects": {}}
    if ref is not None:
        refs = [r["bridge"][ref] for r in rounds]
        out["sqlite"] = {
            "on.cpu_ms.total": spread([_cpu_total(x["on"]) for x in refs]),
            "fixed.cpu_ms.total": spread([_cpu_total(x["fixed"]) for x in refs]),
            "peak_rss_mb.total": spread(
                [x["peak_rss_mb"]["serving"] + x["peak_rss_mb"]["delivery"] for x in refs]
            ),
            "lost": sum(x[p]["lost"] for x in refs for p in phases),
            "duplicated": sum(x[p]["duplicated"] for x in refs for p in phases),
        }
    for name in postgres_subjects(args):
        runs = [r["postgres"][name] for r in rounds]
        s: dict[str, Any] = _over_rounds(runs)
        for p in phases:
            s[f"{p}.cpu_ms.total"] = spread([_cpu_total(x[p]) for x in runs])
        s["lost"] = sum(x[p]["lost"] for x in runs for p in phases)
        s["duplicated"] = sum(x[p]["duplicated"] for x in runs for p in phases)
        if ref is not None:
            pairs = [(r["bridge"][ref], r["postgres"][name]) for r in rounds]
            for key, fn in (
                ("on_ingest", lambda x: x["on"]["ingest"]),
                ("e2e", lambda x: x["on"]["e2e"]),
                ("fixed_ack_p99", lambda x: x["fixed"]["ack_p99_ms"]),
                ("on_cpu", lambda x: _cpu_total(x["on"])),
                ("fixed_cpu", lambda x: _cpu_total(x["fixed"])),
            ):
                s[f"ratio.{key}"] = spread([fn(x) / fn(b) for b, x in pairs])
        out["subjects"][name] = s
    return out


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
    for sync in args.synchronous if reference(args) is not None else ():
        bridge_rounds = [r["bridge"][sync] for r in rounds]
        b: dict[str, Any] = _over_rounds(bridge_rounds)
        pairs = [(r["baselines"], r["bridge"][sync]) for r in rounds]
        sqlite = f"sqlite_{sync}"
        b["ratio.paused_ingest"] = spread(
            [x["paused"]["ingest"] / base[sqlite] for base, x in pairs]
        )
        b["ratio.on_ingest"] = spread([x["on"]["ingest"] / base[sqlite] for base, x in pairs])
        b["ratio.e2e"] = spread([x["on"]["e2e"] / base["forward"] for base, x in pairs])
        if all("forward_reqwest" in base for base, _ in pairs):  # runs saved before it: none
            b["ratio.e2e_reqwest"] = spread(
                [x["on"]["e2e"] / base["forward_reqwest"] for base, x in pairs]
            )
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
    if postgres_subjects(args):
        summary["postgres"] = summarise_postgres(raw, args)
    return summary


def _m(s: dict[str, float], digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f}"


def _r(s: dict[str, float], digits: int = 2, unit: str = "") -> str:
    """`0.36x (0.31-0.40)`: the median, then the lowest and highest round."""
    return f"{s['median']:.{digits}f}{unit} ({s['min']:.{digits}f}{DASH}{s['max']:.{digits}f})"


def _pair(a: dict[str, float], b: dict[str, float], digits: int = 1) -> str:
    return f"{a['median']:.{digits}f} / {b['median']:.{digits}f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def method(args: argparse.Namespace, fixed_answer: str, version: int | None = None) -> str:
    text = (
        f"Method. Load from wrk (C; Lua scripts make every request a distinct message: its own "
        f"externalMessageId, spread over {args.chats} chats). Throughput: closed loop, "
        f"{_plural(args.threads, 'wrk thread')} and {args.connections} keep-alive connections "
        f"for {args.duration:g} s per measurement, counted in 2xx answers per second (a 200 from "
        f"the bridge means committed). Fixed offered loads: wrk with {args.paced_connections} "
        f"connections, one per thread, request k due at start + k/rate, for {args.seconds:g} s "
        f"after {args.warmup:g} s of warm-up; a request whose connection was still busy when it "
        f"was due is timed from when it was due (no coordinated omission). "
        f"{_plural(args.repeat, 'round')}, interleaved: each measures the generator alone "
        f"(against {fixed_answer}) and each sink alone, then the baselines, then each bridge on a "
        f"fresh process and database. Ingest ratio: the bridge's ingest over that of a bare "
        f"aiohttp + aiosqlite server inserting and committing each request (same synchronous "
        f"mode). End-to-end ratio: messages acknowledged per second from the load's start to the "
        f"last messageOutcome at the messenger sink, over a bare forwarder's rate (parse, one "
        f"POST to a sink, answer). Ratios are computed within a round; the report gives the "
        f"median of the rounds' ratios (lowest{DASH}highest round); other figures are medians "
        f"over the rounds. Deliveries paused: the live-chat sink holds every call unanswered "
        f"during the load, so the bridge's delivery slots fill at once and the rest waits in the "
        f"outbox (the ack path alone); then it answers them all and the backlog's drain is timed. "
        f"CPU: user + system time from /proc per acknowledged message, the serving process and "
        f"the delivery process apart. WAL: the -wal file's size sampled every 20 ms. Lost and "
        f"duplicated: counted at the sinks by message id (exactly at fixed loads; after a closed "
        f"loop by counts, as wrk cannot say which ids the requests cut off at its end carried)."
    )
    if postgres_subjects(args):
        text += " " + postgres_method(args, version)
    return textwrap.fill(text, width=100)


def postgres_method(args: argparse.Namespace, version: int | None) -> str:
    """The method's sentences on the PostgreSQL subjects."""
    threads = -(-args.threads // 2) * 2
    return (
        f'PostgreSQL subjects (postgresN: N bridge processes with storage.backend = "postgres" '
        f"on one database): PostgreSQL {version or '?'} from the OS's packages, one server for the "
        f"run in a fresh cluster, set up as an operator would run it: fsync, synchronous_commit "
        f"and full_page_writes on (a commit is on disk when it answers, as with SQLite's "
        f"synchronous = full, the mode they are compared with), shared_buffers 128 MB, the rest "
        f"PostgreSQL's defaults; the bridges' pools at their defaults (pool_min 2, pool_max 10); "
        f"deliveries run in each replica's serving process (the delivery process is SQLite's). "
        f"Each subject gets a fresh database and a CHECKPOINT before it starts, and runs in each "
        f"round after the SQLite bridges: ingest with deliveries on followed to the last outcome, "
        f"then the fixed load of {args.rate:.0f} msg/s. No proxy stands in front of the "
        f"replicas: wrk's threads connect to them in turn (closed loop: {threads} threads with "
        f"{args.connections // threads} connections each for two replicas; paced: connection k "
        f"to replica k mod N), as a layer-4 load balancer spreads connections, so that no proxy "
        f"takes CPU from the subjects on this machine. CPU: the replicas' processes summed, and "
        f"the server's (the postmaster and every process under it, exited ones included) summed."
    )


def report(summary: dict[str, Any], args: argparse.Namespace, started: str) -> str:
    alone, base, bridges = summary["alone"], summary["baselines"], summary["bridge"]
    fixed_answer = (
        "nginx's fixed answer" if summary["fixed_answer"] == "nginx" else summary["fixed_answer"]
    )

    def line(label: str, value: str, extra: str = "") -> str:
        return f"  {label:55}{value:>21}" + (f"  {extra}" if extra else "")

    paced = f"wrk paced at {alone['paced.rate']['median']:.0f}/s against it: achieved"
    paced_detail = (
        f"    (its sends late p99 {alone['paced.late_p99_ms']['median']:.2f} ms, "
        f"answers p99 {alone['paced.ack_p99_ms']['median']:.2f} ms)"
    )
    lines = [
        f"messenger-bridge bench, {started}; {os.cpu_count()} cores; Python "
        f"{platform.python_version()}; event loop {args.event_loop}; delivery.worker "
        f"{args.worker}; log level {args.log_level}",
        "",
        method(args, fixed_answer, summary.get("postgres", {}).get("version")),
        "",
        f"The load generator and the sinks alone (req/s; median (lowest{DASH}highest round)):",
        line(
            f"wrk, closed loop, against {fixed_answer}",
            _r(alone["generator"], 0),
            f"{alone['generator_cpu_ms']['median']:.3f} CPU ms/req",
        ),
        line(paced, _r(alone["paced.achieved"], 0)),
        paced_detail,
        line(
            f"live-chat sink (a pool of {args.sink_processes} processes)",
            _r(alone["sink_livechat"], 0),
        ),
        line("messenger sink (messageOutcome)", _r(alone["sink_messenger"], 0)),
        line("forwarding sink", _r(alone["sink_forward"], 0)),
        "",
        "Baselines (msg/s):",
        line(
            "bare forwarder (parse, one POST to the sink, answer)",
            _r(base["forward"], 0),
            f"{base['forward_cpu_ms']['median']:.3f} CPU ms/msg",
        ),
    ]
    if "forward_reqwest" in base:
        lines.append(
            line(
                "the same, its POST on the bridge's client (pyreqwest)",
                _r(base["forward_reqwest"], 0),
                f"{base['forward_reqwest_cpu_ms']['median']:.3f} CPU ms/msg",
            )
        )
    for sync in args.synchronous:
        key = f"sqlite_{sync}"
        lines.append(
            line(
                f"insert + commit per request, aiosqlite ({sync})",
                _r(base[key], 0),
                f"{base[key + '_cpu_ms']['median']:.3f} CPU ms/msg",
            )
        )
    lines.append("")

    rows: list[tuple[str, list[str], str]] = []

    def row(label: str, fn: Any, target: str = "") -> None:
        rows.append((label, [fn(b) for b in bridges.values()], target))

    def both(a: str, b: str, digits: int = 1) -> Any:
        return lambda x: _pair(x[a], x[b], digits)

    row("ingest, deliveries paused (msg/s)", lambda b: _m(b["paused.ingest"]))
    row("  ratio to insert-and-commit", lambda b: _r(b["ratio.paused_ingest"], unit="x"), ">= 0.8")
    row("ingest, deliveries on (msg/s)", lambda b: _m(b["on.ingest"]))
    row("  ratio to insert-and-commit", lambda b: _r(b["ratio.on_ingest"], unit="x"), ">= 0.8")
    row("end to end (msg/s, to the last outcome)", lambda b: _m(b["on.e2e"]))
    row("  ratio to the forwarder", lambda b: _r(b["ratio.e2e"], unit="x"), ">= 0.35")
    if any("ratio.e2e_reqwest" in b for b in bridges.values()):
        row(
            "  to the forwarder on pyreqwest",
            lambda b: _r(b["ratio.e2e_reqwest"], unit="x") if "ratio.e2e_reqwest" in b else "-",
        )
    row("backlog drain after the pause (msg/s)", lambda b: _m(b["paused.drain"]))
    row(
        "ack p50 / p99 ms, closed loop, paused",
        both("paused.closed_p50_ms", "paused.closed_p99_ms"),
    )
    near = f"{args.max_fraction:.0%} of 'on'"
    for key, label, ack_target, delivery_target in (
        ("fixed", f"{args.rate:.0f}/s", "p99 <= 20", "p99 <= 50"),
        ("near_max", near, "", ""),
    ):
        if key == "near_max":
            row(f"fixed load at {near} (msg/s)", lambda b: _m(b["near_max.rate"]))
        row(
            f"ack p50 / p99 ms @{label}", both(f"{key}.ack_p50_ms", f"{key}.ack_p99_ms"), ack_target
        )
        row(
            f"delivery p50 / p99 ms @{label}",
            both(f"{key}.delivery_p50_ms", f"{key}.delivery_p99_ms"),
            delivery_target,
        )
        row(f"  achieved / offered msg/s @{label}", both(f"{key}.achieved", f"{key}.rate", 0))
        row(
            f"  wrk's sends late p99 ms @{label}",
            lambda b, k=key: _m(b[f"{k}.generator_late_p99_ms"], 2),
        )
    row("CPU ms/msg, serving: paused / on", both("paused.cpu_ms.serving", "on.cpu_ms.serving", 3))
    row(
        "CPU ms/msg, delivery process: paused / on",
        both("paused.cpu_ms.delivery", "on.cpu_ms.delivery", 3),
    )
    row(
        "CPU ms/msg, the drain: serving / delivery",
        both("paused.drain_cpu_ms.serving", "paused.drain_cpu_ms.delivery", 3),
    )
    row(
        f"CPU ms/msg @{args.rate:.0f}/s: serving / delivery",
        both("fixed.cpu_ms.serving", "fixed.cpu_ms.delivery", 3),
    )
    row("CPU ms/msg, 'on': sinks / wrk", both("on.sinks_cpu_ms", "on.wrk_cpu_ms", 3))
    row(
        "peak RSS MB: serving / delivery",
        both("peak_rss_mb.serving", "peak_rss_mb.delivery", 0),
        "sum <= 150",
    )
    row(
        "peak WAL MB: paused (from empty) / all",
        lambda b: (
            f"{b['paused.wal_mb.peak']['median']:.1f} / "
            f"{max(b[k]['median'] for k in b if k.endswith('wal_mb.peak')):.1f}"
        ),
    )
    if args.scale_sessions:
        row("ingest on the filled database (msg/s)", lambda b: f"{b['scale.ingest']:.0f}")
        row("  ratio to the empty database", lambda b: f"{b['scale.ratio']:.2f}x", ">= 0.8")
        row("  to the empty-database run just after", lambda b: f"{b['scale.ratio_after']:.2f}x")
    row("lost / duplicated at the sinks", lambda b: f"{b['lost']} / {b['duplicated']}", "0 / 0")

    width = max(len(label) for label, _, _ in rows) + 1
    col = 22
    if bridges:
        lines.append(
            f"{'bridge':{width}}" + "".join(f"{name:>{col}}" for name in bridges) + "  target"
        )
        lines += [
            f"{label:{width}}" + "".join(f"{v:>{col}}" for v in values) + (f"  {t}" if t else "")
            for label, values, t in rows
        ]
        lines.append("")
    lines.append(headroom(summary))
    if "postgres" in summary:
        lines += ["", *postgres_section(summary, args)]
    return "\n".join(lines)


def postgres_section(summary: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The PostgreSQL subjects beside the SQLite bridge they are compared with."""
    pg = summary["postgres"]
    ref: str | None = pg["reference"]
    subjects: dict[str, dict[str, Any]] = pg["subjects"]
    columns: dict[str, dict[str, Any]] = {}
    if ref is not None:
        columns[f"sqlite ({ref})"] = {**summary["bridge"][ref], **pg["sqlite"], "reference": True}
    columns.update(subjects)
    rate = f"{args.rate:.0f}/s"
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Any) -> None:
        rows.append((label, [fn(c) for c in columns.values()]))

    def ratio(key: str) -> Any:
        return lambda c: "reference" if c.get("reference") else _r(c[f"ratio.{key}"], unit="x")

    def split(phase: str) -> Any:
        def cell(c: dict[str, Any]) -> str:
            if c.get("reference"):
                return f"{c[f'{phase}.cpu_ms.total']['median']:.3f} / {DASH}"
            return _pair(c[f"{phase}.cpu_ms.replicas"], c[f"{phase}.cpu_ms.postgres"], 3)

        return cell

    against = f"SQLite ({ref})"
    row("ingest, deliveries on (msg/s)", lambda c: _m(c["on.ingest"]))
    if ref:
        row(f"  ratio to {against}", ratio("on_ingest"))
    row("end to end (msg/s, to the last outcome)", lambda c: _m(c["on.e2e"]))
    if ref:
        row(f"  ratio to {against}", ratio("e2e"))
    row(f"ack p50 / p99 ms @{rate}", lambda c: _pair(c["fixed.ack_p50_ms"], c["fixed.ack_p99_ms"]))
    if ref:
        row(f"  p99's ratio to {against}", ratio("fixed_ack_p99"))
    row(
        f"delivery p50 / p99 ms @{rate}",
        lambda c: _pair(c["fixed.delivery_p50_ms"], c["fixed.delivery_p99_ms"]),
    )
    row(
        f"  achieved / offered msg/s @{rate}",
        lambda c: _pair(c["fixed.achieved"], c["fixed.rate"], 0),
    )
    row("CPU ms/msg, 'on': bridge processes / PostgreSQL", split("on"))
    if ref:
        row(f"  the sum's ratio to {against}", ratio("on_cpu"))
    row(f"CPU ms/msg @{rate}: bridge processes / PostgreSQL", split("fixed"))
    if ref:
        row(f"  the sum's ratio to {against}", ratio("fixed_cpu"))
    row(
        "peak RSS MB, bridge processes summed",
        lambda c: _m(c["peak_rss_mb.total" if c.get("reference") else "peak_rss_mb.replicas"]),
    )
    row("lost / duplicated at the sinks", lambda c: f"{c['lost']} / {c['duplicated']}")

    width = max(len(label) for label, _ in rows) + 1
    col = 22
    head = (
        "PostgreSQL: postgresN is N replicas on one database"
        + (
            f"; each ratio is to the SQLite bridge ({ref}) of the same round, the median of the "
            f"rounds' (lowest{DASH}highest round): below 1, a rate is lower; above 1, a latency "
            f"is longer or a cost higher"
            if ref
            else " (SQLite not run: no ratios)"
        )
        + ":"
    )
    lines = [textwrap.fill(head, width=100)]
    lines.append(f"{'':{width}}" + "".join(f"{name:>{col}}" for name in columns))
    lines += [f"{label:{width}}" + "".join(f"{v:>{col}}" for v in values) for label, values in rows]
    lines += [
        "",
        textwrap.fill(
            f"{os.cpu_count()} cores: the replicas, the PostgreSQL server, wrk and the sinks share "
            f"them, so these figures show what coordinating through one database costs (a "
            f"network round trip per statement, lane leases, NOTIFY), not the scaling replicas "
            f"on machines of their own, with the database on another, would give.",
            width=100,
        ),
    ]
    return lines


def headroom(summary: dict[str, Any]) -> str:
    """Whether the generator or a sink could have capped a subject: their rates alone against
    the fastest subject's."""
    alone, base, bridges = summary["alone"], summary["baselines"], summary["bridge"]
    replicas = summary.get("postgres", {}).get("subjects", {}).values()
    fastest = max(
        [base["forward"]["max"]]
        + [v["max"] for k, v in base.items() if k.startswith("sqlite_") and "cpu" not in k]
        + [b["paused.ingest"]["max"] for b in bridges.values()]
        + [s["on.ingest"]["max"] for s in replicas]
    )
    generator = alone["generator"]["min"]
    sink = min(alone[k]["min"] for k in ("sink_livechat", "sink_messenger", "sink_forward"))
    verdict = (
        "neither caps a subject"
        if min(generator, sink) >= 1.5 * fastest
        else "WARNING: within 1.5x of a subject, which it may cap"
    )
    highest = max(
        [b["near_max.rate"]["max"] for b in bridges.values()]
        + [s["fixed.rate"]["max"] for s in replicas]
    )
    paced = alone["paced.achieved"]["min"]
    paced_verdict = (
        "above every fixed load offered"
        if paced >= highest
        else "WARNING: below the highest fixed load offered"
    )
    return textwrap.fill(
        f"Headroom: the generator alone reached at least {generator:,.0f} req/s and the slowest "
        f"sink alone at least {sink:,.0f} req/s (lowest rounds), against {fastest:,.0f} msg/s "
        f"for the fastest subject in any round: {verdict}. Paced, the generator alone kept "
        f"{paced:,.0f} req/s (lowest round) against at most {highest:,.0f} msg/s offered to a "
        f"bridge: {paced_verdict}.",
        width=100,
    )
