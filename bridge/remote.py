"""The delivery process, seen from the serving process: `perform` there instead of here.

With `delivery.worker = "process"` the outside calls of deliveries (two or three HTTP exchanges
per message) run in a child process on another core, so the serving loop only answers
requests, claims and settles: acks never queue behind deliveries. Claims, settles and every
write stay here, with the database's one writer; the child only reads and calls out.

The two talk over a socket pair in length-prefixed pickles (both ends are this program, never
anything from outside). A child that dies fails what it had in flight as retries and is started
again; a parent that dies closes the socket, and the child exits when it sees that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pickle
import socket
import struct
import sys
from collections.abc import Collection
from typing import Any

import structlog

from bridge.backoff import backoff
from bridge.dispatch import Performed
from bridge.metrics import Metrics
from bridge.model import Retry
from bridge.settings import Settings
from storage.outbox import OutboxItem

log = structlog.get_logger("delivery.process")

_HEADER = struct.Struct("!I")
STOP_GRACE = 5.0  # seconds a stopping child gets to finish before it is killed


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next object, or EOFError when the other side has gone."""
    try:
        (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        return pickle.loads(await reader.readexactly(size))  # noqa: S301 (our own child)
    except (asyncio.IncompleteReadError, ConnectionError):
        raise EOFError from None


def write_frame(writer: asyncio.StreamWriter, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_HEADER.pack(len(data)) + data)


class DeliveryProcess:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Future[Performed]] = {}
        self._seq = itertools.count()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.pid: int | None = None
        self.starts = 0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name="delivery-process")
        # The first start is awaited, so a child that cannot start at all shows at once.
        ready = asyncio.ensure_future(self._ready.wait())
        await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if self._task.done():
            self._task.result()

    async def perform(self, item: OutboxItem, active: Collection[str]) -> Performed:
        if self._writer is None:
            return Performed(Retry("the delivery process is not running"))
        seq = next(self._seq)
        fut: asyncio.Future[Performed] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            write_frame(self._writer, (seq, item, active))
            return await fut
        finally:
            self._pending.pop(seq, None)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _supervise(self) -> None:
        failures = 0
        while True:
            started = asyncio.get_running_loop().time()
            code = await self._run_child()
            self._ready.clear()
            # A child that ran a while and then died starts again at once; one that keeps dying
            # at start-up waits longer each time rather than spin.
            ran = asyncio.get_running_loop().time() - started
            failures = 0 if ran > 60 else failures + 1
            delay = backoff(failures, 0.2, 10.0) if failures > 1 else 0.0
            log.error("delivery.process_exited", exit_code=code, restart_in=round(delay, 2))
            await asyncio.sleep(delay)

    async def _run_child(self) -> int | None:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bridge.deliverer",
                str(theirs.fileno()),
                self._settings.server.event_loop,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.pid, self.starts = proc.pid, self.starts + 1
        self._metrics.delivery_process_starts.inc()
        reader, writer = await asyncio.open_connection(sock=ours)
        try:
            write_frame(writer, self._settings)
            self._writer = writer
            self._ready.set()
            log.info("delivery.process_started", pid=proc.pid)
            with contextlib.suppress(EOFError):
                while True:
                    seq, done = await read_frame(reader)
                    fut = self._pending.get(seq)
                    if fut is not None and not fut.done():
                        fut.set_result(done)
        finally:
            self._writer = None
            writer.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_result(Performed(Retry("the delivery process exited")))
            code = await _reap(proc)
        return code


async def _reap(proc: asyncio.subprocess.Process) -> int | None:
    """Wait for the child, which exits once its socket is closed; kill it if it does not."""
    try:
        async with asyncio.timeout(STOP_GRACE):
            return await asyncio.shield(proc.wait())
    except TimeoutError:
        proc.kill()
        return await proc.wait()
