"""Processes of a bench run: starting and stopping them, and what /proc says about them.

CPU time and peak RSS are read from /proc/<pid>/stat and /proc/<pid>/status; descendants are
found through every process's parent id, because /proc/<pid>/task/*/children is missing on
kernels built without CONFIG_PROC_CHILDREN (as on the development VM).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


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


def descendants(root: int) -> list[int]:
    """The processes `root` started, and theirs (the bridge's delivery process)."""
    return [pid for pid in _tree(root, _all_proc_stats()) if pid != root]


@dataclass(frozen=True)
class Cpu:
    """CPU seconds (user + system, all threads) of a process and of its descendants apart.

    `children` includes the descendants' own reaped children, and the CPU of children `own`'s
    process reaped (a delivery process that died and was replaced still counts, there).
    """

    own: float
    children: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.own - other.own, self.children - other.children)

    @property
    def total(self) -> float:
        return self.own + self.children


def tree_cpu(root: int) -> Cpu:
    stats = _all_proc_stats()
    if root not in stats:
        return Cpu(0.0, 0.0)
    fields = stats[root]
    own = int(fields[11]) + int(fields[12])  # utime, stime
    reaped = int(fields[13]) + int(fields[14])  # cutime, cstime
    children = sum(
        sum(int(t) for t in stats[pid][11:15]) for pid in _tree(root, stats) if pid != root
    )
    return Cpu(own / TICK, (reaped + children) / TICK)


def tree_peak_rss_mb(root: int) -> tuple[float, float]:
    """Peak RSS (VmHWM) of `root` and the sum of its descendants' alive now, in MB."""
    own = rest = 0
    for pid in _tree(root, _all_proc_stats()):
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        kb = next((int(x.split()[1]) for x in lines if x.startswith("VmHWM:")), 0)
        if pid == root:
            own = kb
        else:
            rest += kb
    return own / 1024, rest / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    """A child process whose output goes to a log file (a pipe nobody reads would fill up)."""

    def __init__(self, args: list[str], log: Path, python: bool = True) -> None:
        self.log = log
        self._file = log.open("w")
        argv = [sys.executable, *args] if python else args
        self.popen = subprocess.Popen(argv, stdout=self._file, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu(self) -> Cpu:
        return tree_cpu(self.popen.pid)

    def peak_rss_mb(self) -> tuple[float, float]:
        return tree_peak_rss_mb(self.popen.pid)

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


class WalSampler:
    """Samples the size of an SQLite database's `-wal` file while a phase runs.

    The WAL grows between checkpoints and is not truncated after one (the bridge sets no
    journal_size_limit), so the peak is what the disk must hold for it.
    """

    INTERVAL = 0.02

    def __init__(self, db: str) -> None:
        self.path = db + "-wal"

    def _size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0

    @contextlib.contextmanager
    def phase(self) -> Iterator[dict[str, int]]:
        """Yields {"start": bytes, "peak": bytes}; "peak" is final when the block ends."""
        sizes = {"start": self._size()}
        sizes["peak"] = sizes["start"]

        async def sample() -> None:
            while True:
                sizes["peak"] = max(sizes["peak"], self._size())
                await asyncio.sleep(self.INTERVAL)

        task = asyncio.get_running_loop().create_task(sample())
        try:
            yield sizes
        finally:
            task.cancel()
            sizes["peak"] = max(sizes["peak"], self._size())
