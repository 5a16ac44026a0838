"""The load generator: wrk (C, one event loop per thread) driven by the Lua scripts beside this
file, which make every request a distinct message.

- `closed`: `connections` keep-alive connections on `threads` threads, each sending its next
  request as soon as the last was answered (load.lua): what a subject sustains.
- `paced`: a fixed offered rate (paced.lua): request k is due at start + k / rate, one
  connection per wrk thread, and a request's latency is counted from when it was due whenever
  its connection was still busy then, so that a slow answer is not hidden by the requests it
  delayed (the coordinated omission that a closed loop with a delay has). Neither wrk2 nor oha is
  packaged for Debian; this gives the same correction with the wrk that is.

wrk's own CPU time is measured with wait4(2), so the report can say what the generator cost.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit(
            "bench: wrk is not installed (Debian/Ubuntu: apt-get install wrk); "
            "it is the load generator"
        )
    return found


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0 < q <= 100) of `values`, NaN when empty."""
    if not values:
        return float("nan")
    if q >= 100 or len(values) == 1:
        return max(values)
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


def _env(addrs: list[str] | None) -> dict[str, str] | None:
    """wrk's environment: with several `addrs` ("host:port"), the Lua scripts connect thread k
    to the (k mod n)-th (common.lua's spread)."""
    if not addrs or len(addrs) < 2:
        return None
    return {**os.environ, "BENCH_WRK_ADDRS": ",".join(addrs)}


async def _run(argv: list[str], log: Path, addrs: list[str] | None = None) -> float:
    """Runs wrk to its end in a thread (the caller's loop keeps sampling); returns its CPU s."""

    def run() -> float:
        with log.open("w") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=_env(addrs))
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"bench: wrk failed ({proc.returncode}): {log.read_text()[-2000:]}")
        return usage.ru_utime + usage.ru_stime

    return await asyncio.to_thread(run)


@dataclass
class Closed:
    """A closed-loop run. `ok` requests were answered 2xx; `issued - ok - errors` were in flight
    when wrk stopped (whether the subject took them is unknown to wrk)."""

    ok: int
    issued: int
    errors: int
    seconds: float
    latency_p50_ms: float
    latency_p99_ms: float
    wrk_cpu_s: float
    raw: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def unknown(self) -> int:
        return self.issued - self.ok - self.errors


async def closed(
    url: str,
    run: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    chats: int,
    shape: str,
    tmp: Path,
    addrs: list[str] | None = None,
) -> Closed:
    """With several `addrs`, wrk's threads connect to them in turn (`threads` should be a
    multiple of their number, so that each gets as many connections)."""
    out = tmp / f"wrk-{run}.json"
    argv = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{math.ceil(seconds)}s",  # wrk takes whole seconds
        "--timeout",
        "30s",
        "-s",
        str(HERE / "load.lua"),
        url,
        "--",
        run,
        str(chats),
        shape,
        str(out),
    ]
    cpu = await _run(argv, tmp / f"wrk-{run}.log", addrs)
    raw = json.loads(out.read_text())
    completed = int(raw["completed"])
    status_errors = int(raw["status_errors"])
    errors = status_errors + sum(
        int(raw[k]) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return Closed(
        ok=completed - status_errors,
        issued=int(raw["issued"]),
        errors=errors,
        seconds=float(raw["duration_s"]),
        latency_p50_ms=float(raw["latency_p50_ms"]),
        latency_p99_ms=float(raw["latency_p99_ms"]),
        wrk_cpu_s=cpu,
        raw=raw,
    )


@dataclass
class Paced:
    """A fixed-rate run: per answered request its id, and when it was due, sent and answered."""

    rate: float
    seconds: float
    offered: int
    issued: int
    wrk_cpu_s: float
    # id -> (start, answered): start is when the request was due if its connection was still
    # busy then (coordinated omission counted against the subject), else when it was sent
    acked: dict[str, tuple[float, float]] = field(default_factory=dict)
    failed: int = 0
    late_ms: list[float] = field(default_factory=list)  # the generator's own lateness
    busy_past_due: int = 0  # requests whose connection was still waiting when they were due

    def ack_ms(self) -> list[float]:
        return [(answered - start) * 1000 for start, answered in self.acked.values()]

    @property
    def achieved(self) -> float:
        return len(self.acked) / self.seconds if self.seconds else 0.0


async def paced(
    url: str,
    run: str,
    *,
    rate: float,
    seconds: float,
    connections: int,
    chats: int,
    tmp: Path,
    tail: float = 3.0,
    addrs: list[str] | None = None,
) -> Paced:
    """`rate` requests per second for `seconds`; wrk runs `tail` seconds longer for the last
    answers (one not in by then is counted as not answered). With several `addrs`, connection
    k goes to the (k mod n)-th, so request k too."""
    out = tmp / f"paced-{run}.txt"
    lead = 0.5 + connections * 0.005  # time for wrk to start its threads and connect
    start = time.time() + lead
    argv = [
        wrk_binary(),
        f"-t{connections}",
        f"-c{connections}",
        f"-d{math.ceil(lead + seconds + tail)}s",
        "--timeout",
        "30s",
        "-s",
        str(HERE / "paced.lua"),
        url,
        "--",
        run,
        str(chats),
        f"{rate:g}",
        f"{start:.6f}",
        f"{seconds:g}",
        str(connections),
        str(out),
    ]
    cpu = await _run(argv, tmp / f"paced-{run}.log", addrs)
    result = Paced(rate=rate, seconds=seconds, offered=int(seconds * rate), issued=0, wrk_cpu_s=cpu)
    for line in out.read_text().splitlines():
        if line.startswith("# issued"):
            result.issued = int(line.split()[2])
            continue
        ext, due_s, ready_s, sent_s, answered_s, status = line.split()
        due, ready, sent, answered = float(due_s), float(ready_s), float(sent_s), float(answered_s)
        result.late_ms.append((sent - max(due, ready)) * 1000)
        busy = ready > due
        result.busy_past_due += busy
        if status.startswith("2"):
            result.acked[ext] = (due if busy else sent, answered)
        else:
            result.failed += 1
    return result
