"""The delivery process, seen from the serving process: `perform` there instead of here.

With `delivery.worker = "process"` the outside calls of deliveries (two or three HTTP exchanges
per message) run in a child process on another core, so the serving loop mostly answers
requests, claims and settles: acks do not queue behind deliveries (until the child falls
behind, see `bridge.balance`). Claims, settles and every write stay here, with the database's
one writer; the child only reads and calls out.

The two talk over a socket pair in length-prefixed pickles (both ends are this program, never
anything from outside). One way go the settings first, then ("item", seq, item), and
("active", channel ids) whenever the set of active channels changed; the other way go
(seq, what was done). A child that dies fails what it had in flight as retries and is started
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
from collections.abc import Callable, Collection
from typing import Any, cast

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


class Link(asyncio.Protocol):
    """One end of the socket pair. `send` queues an object; everything queued in one turn of
    the event loop leaves as one frame (a length and a pickled list), so a round of claims, or
    of answers, costs one write and one wake-up on the other side instead of one per item.
    Each object received is handed to `on_message`, in order."""

    def __init__(self, on_message: Callable[[Any], None]) -> None:
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._inbox = bytearray()
        self._outbox: list[Any] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, obj: Any) -> None:
        """Queue `obj`; dropped if the other side has gone (the caller learns that from
        `closed`)."""
        if not self.is_open:
            return
        self._outbox.append(obj)
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        if self._transport is not None and batch:
            data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
            self._transport.write(_HEADER.pack(len(data)) + data)

    def data_received(self, data: bytes) -> None:
        inbox = self._inbox
        inbox += data
        start = 0
        while len(inbox) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(inbox, start)
            end = start + _HEADER.size + size
            if len(inbox) < end:
                break
            batch = pickle.loads(inbox[start + _HEADER.size : end])  # noqa: S301 (our own child)
            start = end
            for obj in batch:
                self._on_message(obj)
        del inbox[:start]

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()


async def connect(sock: socket.socket, on_message: Callable[[Any], None]) -> Link:
    _, link = await asyncio.get_running_loop().create_connection(
        lambda: Link(on_message), sock=sock
    )
    return link


class DeliveryProcess:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._link: Link | None = None
        self._sent_active: Collection[str] | None = None
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

    @property
    def inflight(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> bool:
        return self._link is not None

    async def perform(self, item: OutboxItem, active: Collection[str]) -> Performed:
        link = self._link
        if link is None:
            return Performed(Retry("the delivery process is not running"))
        if active is not self._sent_active:  # the channel manager hands out a new set on change
            link.send(("active", active))
            self._sent_active = active
        seq = next(self._seq)
        fut: asyncio.Future[Performed] = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            link.send(("item", seq, item))
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
        link = await connect(ours, self._answered)
        try:
            link.send(self._settings)
            self._link, self._sent_active = link, None
            self._ready.set()
            log.info("delivery.process_started", pid=proc.pid)
            await link.closed
        finally:
            self._link = None
            link.close()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_result(Performed(Retry("the delivery process exited")))
            code = await _reap(proc)
        return code

    def _answered(self, message: tuple[int, Performed]) -> None:
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
