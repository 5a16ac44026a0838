"""`python -m bench.profile`: py-spy samples the bridge process while the ingest load runs.

Prints the functions with the most samples, self and inclusive, and keeps the raw collapsed
stacks (bench/results/profile-*.txt) for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.run import ROOT, Proc, closed_loop, free_port, start_bridge, until_delivered, wait_http


def summarise(raw: Path, top: int) -> str:
    self_samples: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [
            f.split(" (")[0] + " " + f.split("(")[-1].split(":")[0].rsplit("/", 1)[-1]
            for f in stack.split(";")
        ]
        total += n
        self_samples[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    out = [f"{total} samples", "", "self:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in self_samples.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--synchronous", default="normal")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--cpu", action="store_true", help="leave out idle samples: where the CPU time goes"
    )
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(
        Path(__file__).resolve().parent.parent / ".venv/bin/py-spy"
    )
    with tempfile.TemporaryDirectory(prefix="profile-") as tmpdir:
        tmp = Path(tmpdir)
        sink_port = free_port()
        sink = f"http://127.0.0.1:{sink_port}"
        sinks = Proc(["-m", "bench.sinks", str(sink_port)], tmp / "sinks.log")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as http:
            await wait_http(http, f"{sink}/stats")
            bridge = await start_bridge(
                tmp, sink, str(tmp / "p.sqlite3"), args.synchronous, args.log_level, http
            )
            raw = ROOT / "bench" / "results" / f"profile-{time.strftime('%Y%m%dT%H%M%S')}.txt"
            raw.parent.mkdir(exist_ok=True)
            spy = subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(bridge.proc.popen.pid),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--rate",
                    "200",
                    "--threads",
                    *([] if args.cpu else ["--idle"]),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1)
            result = await closed_loop(http, bridge.url, "prof", args.n, args.concurrency, 500)
            await until_delivered(http, sink, "outcomes", result.ok)
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            spy.wait()
            bridge.proc.stop()
            sinks.stop()
    print(f"ingest {result.rate:.0f} msg/s while profiled")
    print(summarise(raw, args.top))


if __name__ == "__main__":
    asyncio.run(main())
