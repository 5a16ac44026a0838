"""`python -m bench.profile`: py-spy samples a bridge process while wrk's closed-loop load runs.

The same load as `bench.run` (wrk, distinct messages; see bench/wrk.py). `--paused` holds the
live chat's calls during the load, as the bench's first phase does, so that the samples show the
ack path alone; `--process delivery` samples the delivery process instead of the serving one;
`--rate R` offers a fixed load of R msg/s instead of the closed loop.
Prints the functions with the most samples, self and inclusive, and keeps the raw collapsed
stacks (bench/results/profile-*.txt) for a flame graph. py-spy is in the `dev` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.procs import ROOT, descendants
from bench.run import environment, start_bridge


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
    if not total:
        return "no samples"
    out = [f"{total} samples", "", "self:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in self_samples.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    add = parser.add_argument
    add("--duration", type=float, default=10.0, help="seconds of load")
    add("--connections", type=int, default=32)
    add("--threads", type=int, default=1)
    add("--chats", type=int, default=500)
    add("--synchronous", default="normal")
    add("--log-level", default="info")
    add("--event-loop", default="auto", choices=["auto", "asyncio", "uvloop"])
    add("--paused", action="store_true", help="hold the live chat's calls: the ack path alone")
    add("--process", default="serving", choices=["serving", "delivery"])
    add("--rate", type=float, help="a fixed offered load (msg/s) instead of the closed loop")
    add("--top", type=int, default=30)
    add("--cpu", action="store_true", help="leave out idle samples: where the CPU time goes")
    args = parser.parse_args()
    # What bench.run's environment reads and this tool does not vary.
    args.paced_connections, args.stall, args.sink_processes = 32, 30.0, 2
    return args


async def main() -> None:
    args = parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        raise SystemExit("bench.profile: py-spy is missing: pip install -e '.[dev]'")
    raw = ROOT / "bench" / "results" / f"profile-{time.strftime('%Y%m%dT%H%M%S')}.txt"
    raw.parent.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="profile-") as tmpdir:
        async with environment(args, Path(tmpdir)) as ctx:
            bridge = await start_bridge(ctx, str(Path(tmpdir) / "p.sqlite3"), args.synchronous)
            try:
                pid = bridge.proc.pid
                if args.process == "delivery":
                    children = descendants(pid)
                    if not children:
                        raise SystemExit("bench.profile: the bridge has no delivery process")
                    pid = children[0]
                if args.paused:
                    await ctx.sinks.hold()
                spy = subprocess.Popen(
                    [py_spy, "record", "--pid", str(pid), "--format", "raw"]
                    + ["--output", str(raw), "--rate", "200", "--threads"]
                    + ([] if args.cpu else ["--idle"]),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1)
                if args.rate:
                    paced = await ctx.paced(bridge.url, "prof", args.rate, args.duration)
                    ok, rate = len(paced.acked), paced.achieved
                else:
                    load = await ctx.closed(bridge.url, "prof")
                    ok, rate = load.ok, load.rate
                if not args.paused:
                    await ctx.until_arrived("outcomes", ok)
                spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
                spy.wait()
                if args.paused:
                    await ctx.sinks.release()
                    await ctx.until_arrived("outcomes", ok)
            finally:
                bridge.proc.stop()
    mode = "deliveries paused" if args.paused else "deliveries on"
    print(f"ingest {rate:.0f} msg/s while the {args.process} process was sampled ({mode})")
    print(summarise(raw, args.top))


if __name__ == "__main__":
    asyncio.run(main())
