"""The delivery process, seen from the serving process: `perform` there instead of here.

With `delivery.worker = "process"` the outside calls of deliveries (two or three HTTP exchanges
per message) run in a child process on another core, so the serving loop mostly answers
requests, claims and settles: acks do not queue behind deliveries (until the child falls
behind, see `bridge.delivery.split`). Claims, settles and every write stay here, with the database's
one writer; the child only reads and calls out.

The two talk over a socket pair in length-prefixed pickles (both ends are this program, never
anything from outside). One way go the settings first, then ("item", seq, item), and
("active", channel ids) whenever the set of active channels changed; the other way go READY
once the child can take items, then (seq, what was done). Items are sent only after READY:
until then (a second or two after every start) `running` is False and the serving process
performs deliveries itself, as it does while the child is down. A child that dies fails what
it had in flight as retries; one not ready within READY_TIMEOUT is killed; either is started
again. A parent that dies closes the socket, and the child exits when it sees that, at any
stage of its start (see `bridge.delivery.child_main` and `bridge.delivery.child`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import sys
import time
from collections.abc import Collection
from functools import partial
from typing import Any

import structlog

from bridge.backoff import backoff
from bridge.core.model import Retry
from bridge.core.tasks import cancel_and_wait
from bridge.delivery.calls import CallResult
from bridge.delivery.link import Link, connect
from bridge.metrics import Metrics
from bridge.settings import Settings
from storage.outbox import OutboxItem

log = structlog.get_logger("delivery.process")

STOP_GRACE = 5.0  # seconds a stopping child gets to finish before it is killed
READY_TIMEOUT = 60.0  # seconds a starting child gets to say READY before it is killed
READY_WAIT = 10.0  # seconds `perform` waits for a starting child before answering Retry


class ChildProcess:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._link: Link | None = None
        self._sent_active: Collection[str] | None = None
        self._pending: dict[int, asyncio.Future[CallResult]] = {}
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._spawned = asyncio.Event()
        self.pid: int | None = None
        self.starts = 0
        self.ready_at: float | None = None  # time.monotonic() of the last READY

    async def start(self) -> None:
        """Start the child and return once it was spawned (not once it is ready: until then
        the serving process performs deliveries itself). Raises OSError if it cannot be
        spawned at all."""
        self._task = asyncio.create_task(self._supervise(), name="delivery-process")
        spawned = asyncio.ensure_future(self._spawned.wait())
        await asyncio.wait([spawned, self._task], return_when=asyncio.FIRST_COMPLETED)
        spawned.cancel()
        if self._task.done():
            self._task.result()

    @property
    def inflight(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> bool:
        """True once the child said READY, until it exits."""
        return self._link is not None

    async def call(self, item: OutboxItem, active: Collection[str]) -> CallResult:
        link = self._link
        if link is None and self._task is not None:
            # Starting (or started again): only reached with share_after = 0, where nobody else
            # performs it; a short wait beats a retry's back-off.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(READY_WAIT):
                    await self._ready.wait()
            link = self._link
        if link is None:
            return CallResult(Retry("the delivery process is not running"))
        if active is not self._sent_active:  # the channel manager hands out a new set on change
            link.send(("active", active))
            self._sent_active = active
        seq = next(self._seq)
        fut: asyncio.Future[CallResult] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            link.send(("item", seq, item))
            return await fut
        finally:
            self._pending.pop(seq, None)

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _supervise(self) -> None:
        failures = 0
        while True:
            started = asyncio.get_running_loop().time()
            try:
                code = await self._run_child()
            except OSError:
                if not self.starts:
                    raise  # the first start: `start` shows it
                log.exception("delivery.process_not_started")
                code = None
            # A child that ran a while and then died starts again at once; one that keeps dying
            # at start-up waits longer each time rather than spin.
            ran = asyncio.get_running_loop().time() - started
            failures = 0 if ran > 60 else failures + 1
            delay = backoff(failures, 0.2, 10.0) if failures > 1 else 0.0
            log.error("delivery.process_exited", exit_code=code, restart_in=round(delay, 2))
            await asyncio.sleep(delay)

    async def _run_child(self) -> int | None:
        ours, theirs = socket.socketpair()
        spawned = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bridge.delivery.child_main",
                str(theirs.fileno()),
                self._settings.server.event_loop,
                str(os.getpid()),
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.pid, self.starts = proc.pid, self.starts + 1
        self._spawned.set()
        self._metrics.delivery_process_starts.inc()
        log.info("delivery.process_started", pid=proc.pid)
        ready: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        link = await connect(ours, partial(self._received, ready))
        try:
            link.send(self._settings)
            either: list[asyncio.Future[Any]] = [ready, link.closed]
            await asyncio.wait(either, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
            if ready.done():
                self._link, self._sent_active = link, None
                self.ready_at = ready.result()
                self._ready.set()
                seconds = round(self.ready_at - spawned, 3)
                log.info("delivery.process_ready", pid=proc.pid, seconds=seconds)
                await link.closed
            elif not link.closed.done():
                log.error("delivery.process_not_ready", pid=proc.pid, timeout=READY_TIMEOUT)
                proc.kill()
        finally:
            self._link = None
            self._ready.clear()
            link.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_result(CallResult(Retry("the delivery process exited")))
            code = await _reap(proc)
        return code

    def _received(self, ready: asyncio.Future[float], message: Any) -> None:
        if isinstance(message, str):  # READY, once
            if not ready.done():
                ready.set_result(time.monotonic())
            return
        seq, done = message
        fut = self._pending.get(seq)
        if fut is not None and not fut.done():
            fut.set_result(done)


async def _reap(proc: asyncio.subprocess.Process) -> int | None:
    """Wait for the child, which exits once its socket is closed; kill it if it does not."""
    try:
        async with asyncio.timeout(STOP_GRACE):
            return await asyncio.shield(proc.wait())
    except TimeoutError:
        proc.kill()
        return await proc.wait()
