"""The SQLite backend of the storage port (storage/port.py): one writer thread with group
commit, one async read-only connection.

Every change goes through `Database.write(work)`, where `work` is a plain function of a
`storage.port.Connection` (here a `sqlite3.Connection` that knows its dialect). Works queued
while a transaction is running are run together in the next one, in one hop to the writer
thread, and committed with a single fsync (group commit): many concurrent requests share the
cost of both. `write` returns only after the commit, which is
what lets an HTTP 200 mean "on disk". Reads go through aiosqlite on a second connection.

Three guards keep that promise honest while the service runs for months:

- Each write waits at most `busy_timeout` for a lock held by someone else, counted from when it
  was queued, however many batches are ahead of it; then it fails (the request gets a 503).
- The WAL stays under `wal_max_bytes` (see `_restart_wal`).
- The file's device and inode are recorded at open and compared after every commit, before any
  answer, and every second in the background: a database file deleted or replaced under the
  running service makes every later write fail, and readiness with it, until a restart.
  Any other write failure (disk full, read-only, I/O error, locked) is `write_fault` until a
  write succeeds again; while it lasts a small probe write is tried every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from bridge.core.tasks import cancel_and_wait
from storage.migrations import migrate
from storage.port import CannotOpen, Connection, Dialect, IntegrityError, Isolation, Row, Work
from storage.port import DatabaseInUse as DatabaseInUse
from storage.port import StorageUnavailable as StorageUnavailable

T = TypeVar("T")
Outcome = tuple[bool, Any]  # (succeeded, result or exception)

log = structlog.get_logger("storage")

MAX_BATCH = 512
MIB = 1024 * 1024
WAL_MAX_BYTES = 64 * MIB
# How long a WAL restart may wait for readers still on an old snapshot (ours are point lookups
# of microseconds): the writer, and so every ack, waits meanwhile.
RESTART_WAIT = 0.1
# After a restart that could not finish (a reader kept an old snapshot longer than that, or a
# background checkpoint held the checkpoint lock), the next try waits this long, doubling.
RESTART_RETRY = (0.02, 1.0)
# Device and inode checks and, while writes fail, probe writes: this often, in seconds.
WATCH_EVERY = 1.0


class SqliteConnection(sqlite3.Connection):
    """A `sqlite3.Connection` that says its dialect (storage.port.Connection). A subclass made
    by `sqlite3.connect(factory=...)`: `execute` stays the C method, nothing wraps it."""

    dialect: Dialect = "sqlite"


@dataclass
class _Queued:
    work: Work[Any]
    future: asyncio.Future[Any]
    deadline: float  # time.monotonic() after which a lock held by another may fail it


class _Again:
    """The outcome of a work whose batch met a lock before the work's own deadline: it is
    queued again, with the time it has left."""


AGAIN = _Again()


class Database:
    """The SQLite `storage.port.Store`."""

    dialect: Dialect = "sqlite"

    def __init__(
        self,
        path: str,
        synchronous: str = "full",
        busy_timeout: float = 5.0,
        wal_max_bytes: int = WAL_MAX_BYTES,
    ) -> None:
        self.path = path
        self._busy = busy_timeout
        self._busy_ms = int(busy_timeout * 1000)
        self.synchronous = synchronous.upper()
        # The WAL is restarted once it passes half its bound: the other half is headroom for
        # the batch that passed it and for a restart that has to be tried again.
        self._wal_max = wal_max_bytes
        self._restart_at = wal_max_bytes // 2
        self._restart_not_before = 0.0
        self._restart_failures = 0
        self._wal_large = False  # the last batch left the WAL past _restart_at
        self._backfill: asyncio.Task[None] | None = None  # the PASSIVE copy before a restart
        self._wal_over = False
        self._executor: ThreadPoolExecutor | None = None
        self._writer: SqliteConnection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._inline_reader: SqliteConnection | None = None
        self._queue: list[_Queued] = []
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file at open
        self._lost: str | None = None  # set once: the file was deleted or replaced
        self._fault: str | None = None  # the last write's failure, until a write succeeds
        self.schema_version = 0

    @property
    def write_fault(self) -> str | None:
        """Why writes fail now (`"database file deleted"`, `"database or disk is full"`,
        `"disk I/O error"`, `"database is locked"`...), or None while they succeed. For
        readiness: set by a failed write (or the background file check), cleared by the next
        write that commits, except a deleted or replaced file, which lasts until a restart."""
        return self._lost or self._fault

    def _pragmas(self) -> list[str]:
        return [
            "journal_mode=WAL",
            f"synchronous={self.synchronous}",
            "foreign_keys=ON",
            f"busy_timeout={self._busy_ms}",
            # Checkpoints run on their own connection (see _checkpoint_loop), not inside a
            # commit that many requests are waiting for; the writer restarts the log between
            # batches once it is large (see _restart_wal).
            "wal_autocheckpoint=0",
            # After a restart, the first commit cuts the file back to this size, no smaller:
            # later commits then write over the file's own blocks, and an fsync of a file that
            # does not grow has no size to write as well.
            f"journal_size_limit={self._restart_at}",
        ]

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._take_process_lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        try:
            self._writer = await self._in_writer(self._connect_writer)
            self.schema_version = await self._in_writer(migrate, self._writer)
            self._reader = await aiosqlite.connect(
                self.path, isolation_level=None, timeout=self._busy_ms / 1000
            )
            self._reader.row_factory = aiosqlite.Row
            for pragma in [*self._pragmas(), "query_only=ON"]:
                # Closed at once: an open statement would pin a snapshot or hold a lock.
                async with self._reader.execute(f"PRAGMA {pragma}"):
                    pass
            self._checkpointer = await aiosqlite.connect(
                self.path, isolation_level=None, timeout=self._busy_ms / 1000
            )
            for pragma in self._pragmas():
                async with self._checkpointer.execute(f"PRAGMA {pragma}"):
                    pass
            if self.path != ":memory:":
                self._identity = _identity(self.path)
        except BaseException as exc:
            await self.close()  # a refused or broken file must not stay open and locked
            if isinstance(exc, sqlite3.Error):  # locked by another program, unreadable...
                raise CannotOpen(f"{self.path}: {exc}") from exc
            raise
        self._task = asyncio.create_task(self._write_loop(), name="db-writer")
        self._checkpoint_task = asyncio.create_task(self._checkpoint_loop(), name="db-checkpoint")
        self._watch_task = asyncio.create_task(self._watch_loop(), name="db-watch")

    async def open_reader(self) -> None:
        """Reads only, for deliveries (in the delivery process, and the serving process's own):
        no lock, no migrations, no writer, no checkpoints (the serving process's main
        `Database` opened the file fully first). A delivery's reads are point lookups of a few
        microseconds, which under WAL never wait for the writer, so they run on the event loop
        itself: cheaper than a hop to a thread and back."""
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_ms / 1000,
            factory=SqliteConnection,
        )
        conn.row_factory = sqlite3.Row
        for pragma in [f"busy_timeout={self._busy_ms}", "query_only=ON"]:
            conn.execute(f"PRAGMA {pragma}").close()
        self._inline_reader = conn

    async def _checkpoint_loop(self, every: float = 1.0) -> None:
        """Copy the WAL into the database file in the background. PASSIVE never waits for, nor
        blocks, the writer; what it cannot copy now it copies next time. It alone never lets
        the log start again from its beginning under steady writes (see _restart_wal)."""
        assert self._checkpointer is not None
        while True:
            await asyncio.sleep(every)
            if self._lost is not None:
                continue  # copying into a file nobody will open again helps nobody
            await self._checkpoint_passive()

    async def _checkpoint_passive(self) -> None:
        assert self._checkpointer is not None
        try:
            async with self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)"):
                pass
        except sqlite3.Error as exc:
            log.warning("storage.checkpoint_failed", error=str(exc))

    async def _watch_loop(self) -> None:
        """Every second: is the path still our file? And while writes fail, does one succeed
        now? (A probe, so that readiness comes back without waiting for traffic, which a load
        balancer holds back while the bridge is not ready.)"""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            self._check_identity()
            if self._lost is None and self._fault is not None:
                with contextlib.suppress(StorageUnavailable, sqlite3.Error):
                    await self.write(_probe)

    def _check_identity(self) -> str | None:
        """Compare the path's device and inode with those recorded at open; on the first
        mismatch, log it and refuse every later write. Returns why, if the file is lost."""
        if self._identity is None or self._lost is not None:
            return self._lost
        try:
            now: tuple[int, int] | None = _identity(self.path)
        except FileNotFoundError:
            now = None
        except OSError as exc:  # cannot tell (a directory gone unreadable): leave it to writes
            log.warning("storage.file_check_failed", path=self.path, error=str(exc))
            return None
        if now == self._identity:
            return None
        self._lost = "database file deleted" if now is None else "database file replaced"
        log.error(
            "storage.file_lost",
            path=self.path,
            problem=self._lost,
            action="writes are refused and /readyz fails until the service is restarted",
        )
        return self._lost

    def _connect_writer(self) -> SqliteConnection:
        # isolation_level=None: the module opens no transactions of its own; we BEGIN explicitly.
        # The connect's own timeout covers the pragmas run before busy_timeout is set
        # (journal_mode=WAL waits for a lock too): storage.busy_timeout from the first statement.
        conn = sqlite3.connect(
            self.path,
            isolation_level=None,
            timeout=self._busy_ms / 1000,
            factory=SqliteConnection,
        )
        conn.row_factory = sqlite3.Row
        for pragma in self._pragmas():
            conn.execute(f"PRAGMA {pragma}").close()
        return conn

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _take_process_lock(self) -> None:
        self._lock_fd = take_process_lock(self.path)

    async def close(self) -> None:
        for task in (self._watch_task, self._checkpoint_task, self._task, self._backfill):
            await cancel_and_wait(task)  # one after another, in this order
        self._watch_task = self._checkpoint_task = self._task = self._backfill = None
        for fut in (q.future for q in self._queue if not q.future.done()):
            fut.set_exception(StorageUnavailable("database closed"))
        self._queue.clear()
        for conn in (self._reader, self._checkpointer):
            if conn is not None:
                await conn.close()
        self._reader = self._checkpointer = None
        if self._inline_reader is not None:
            self._inline_reader.close()
            self._inline_reader = None
        if self._writer is not None:
            await self._in_writer(self._writer.close)
            self._writer = None
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def reader(self) -> aiosqlite.Connection:
        assert self._reader is not None, "database not open"
        return self._reader

    # Each read runs to its end in one hop to the reader's thread. Were execute and fetch two
    # hops, reads from concurrent tasks would interleave on the one connection, some statement
    # would nearly always be open, and the connection would keep reading an old snapshot:
    # a row committed a moment ago would look absent.

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if self._inline_reader is not None:  # fetchall ends the statement: no stale snapshot
            rows: list[Row] = self._inline_reader.execute(sql, params).fetchall()
            return rows
        return list(await self.reader.execute_fetchall(sql, params))

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return next(iter(await self.fetch_all(sql, params)), None)

    async def readable(self) -> bool:
        try:
            await self.fetch_one("SELECT 1")
        except (sqlite3.Error, AssertionError, ValueError):  # not open, or closed
            return False
        return True

    async def write(self, work: Work[T], *, isolation: Isolation = "serializable") -> T:
        """Run `work` in a write transaction; return its result once committed. `isolation`
        is ignored: one writer at a time is serializable already.

        Raises StorageUnavailable when it cannot be committed: the database file deleted or
        replaced, locked by another for longer than busy_timeout (counted from this call),
        read-only, full, an I/O error, or closed. IntegrityError when a constraint refused the
        work's change. Other errors raised by `work` itself are raised as they are, and fail
        only this work."""
        if self._task is None or self._task.done():
            raise StorageUnavailable("database not open")
        if self._lost is not None:
            raise StorageUnavailable(self._lost)
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # The waiter may be gone (its request cancelled): mark the outcome as seen regardless.
        # A cancelled waiter cancels `fut`, not the work: once queued, it is committed or
        # failed with its batch, and only its result goes unread.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(_Queued(work, fut, time.monotonic() + self._busy))
        self._pending.set()
        return await fut

    async def _write_loop(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                outcomes, self._wal_large = await self._in_writer(self._run, batch)
                again = [q for q, (_, value) in zip(batch, outcomes, strict=True) if value is AGAIN]
                self._queue[:0] = again  # ahead of later ones: their order is kept
                self._settle(batch, outcomes)
                await self._maybe_restart()
            await self._maybe_restart()  # woken by the end of a backfill, with nothing queued

    async def _maybe_restart(self) -> None:
        """Between batches, once the answers are out, restart a large WAL (see _restart_wal)
        in two steps. First a PASSIVE checkpoint on the checkpointer's connection copies
        what it can while this loop goes on committing; then the RESTART, which holds up
        every write, has only the frames appended meanwhile to copy. Restarting at once had
        the writer copy up to a second of frames and sync the file: a 15-20 ms stall (up to
        50) about every second at 500 msg/s in `normal`, which set the acks' p99."""
        if not self._wal_large or time.monotonic() < self._restart_not_before:
            return
        if self._backfill is None and self._checkpointer is not None:
            self._backfill = asyncio.create_task(self._checkpoint_passive(), name="db-backfill")
            self._backfill.add_done_callback(lambda _: self._pending.set())
            return
        if self._backfill is not None and not self._backfill.done():
            return
        self._backfill = None
        self._wal_large = False
        await self._in_writer(self._restart_wal)

    def _settle(self, batch: list[_Queued], outcomes: list[Outcome]) -> None:
        fault: str | None = None
        committed = False
        for queued, (ok, value) in zip(batch, outcomes, strict=True):
            if value is AGAIN:
                continue
            committed = committed or ok
            if not ok:
                value = _unavailable(value)
                if isinstance(value, StorageUnavailable):
                    fault = str(value)
            if queued.future.done():
                continue
            if ok:
                queued.future.set_result(value)
            else:
                queued.future.set_exception(value)
        if fault is not None:
            self._fault = fault
        elif committed:
            self._fault = None

    def _run(self, batch: list[_Queued]) -> tuple[list[Outcome], bool]:
        """In the writer thread: the batch, then the checks that come before any answer."""
        assert self._writer is not None
        works, deadlines = [q.work for q in batch], [q.deadline for q in batch]
        outcomes = _run_batch(self._writer, works, deadlines)
        if not any(ok for ok, _ in outcomes) or self._identity is None:
            return outcomes, False
        if (lost := self._check_identity()) is not None:
            # Committed into a file that is no longer the database: not a 200.
            failed = (False, StorageUnavailable(lost))
            return [failed if ok else (ok, value) for ok, value in outcomes], False
        try:
            wal_size = os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            wal_size = 0
        self._note_wal_size(wal_size)
        return outcomes, wal_size > self._restart_at

    def _note_wal_size(self, size: int) -> None:
        over = size > self._wal_max
        if over and not self._wal_over:
            log.error(
                "storage.wal_over_limit",
                wal_bytes=size,
                wal_max_bytes=self._wal_max,
                cause="a reader keeps an old snapshot (a long query or an open transaction"
                " on this file from outside the bridge?)",
            )
        elif self._wal_over and not over:
            log.info("storage.wal_back_under_limit", wal_bytes=size)
        self._wal_over = over

    def _restart_wal(self) -> None:
        """In the writer thread, between batches: copy the whole WAL into the database file and
        make the next commit write the log from its beginning (and cut the file back to
        journal_size_limit).

        Why the background PASSIVE checkpoint alone lets the log grow without end: SQLite
        starts a WAL again from its beginning only when a write transaction begins while every
        frame has been copied into the database file and no reader is using any of them, and
        nothing waits for that moment. The PASSIVE checkpoint runs on another connection while
        this writer keeps appending, so under steady writes some frame is always left uncopied
        when the next write begins; and readers (the delivery process reads all the time) hold
        frames without anyone waiting for them to let go. RESTART holds the write lock, so
        nothing is appended while it copies the rest, then waits (RESTART_WAIT at most) until
        the readers still on an old snapshot are done; readers that begin meanwhile read the
        database file only."""
        assert self._writer is not None
        conn = self._writer
        conn.execute(f"PRAGMA busy_timeout={int(RESTART_WAIT * 1000)}").close()
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        except sqlite3.Error as exc:
            busy = 1
            log.warning("storage.wal_restart_failed", error=str(exc))
        if not busy:
            self._restart_failures = 0
            return
        self._restart_failures += 1
        first, cap = RESTART_RETRY
        delay = min(cap, first * 2 ** (self._restart_failures - 1))
        self._restart_not_before = time.monotonic() + delay


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _probe(conn: Connection) -> None:
    """A write of one page that changes nothing (the header's user_version, which the bridge
    does not use, set to its own value): whether a commit reaches the disk again."""
    row = conn.execute("PRAGMA user_version").fetchone()
    assert row is not None
    conn.execute(f"PRAGMA user_version = {int(row['user_version'])}")


def _transaction(conn: SqliteConnection, works: list[Work[Any]], deadline: float) -> list[Any]:
    # Wait for another's lock only until the earliest deadline in the batch, however long the
    # works already waited in the queue (for batches ahead of them, themselves locked out).
    wait_ms = max(0, int((deadline - time.monotonic()) * 1000))
    conn.execute(f"PRAGMA busy_timeout={wait_ms}").close()
    conn.execute("BEGIN IMMEDIATE")
    try:
        results = [work(conn) for work in works]
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    return results


class _WorkFailed(Exception):
    """One work of a batch raised: the others may be fine on their own."""


def _run_batch(
    conn: SqliteConnection, works: list[Work[Any]], deadlines: list[float]
) -> list[Outcome]:
    """In the writer thread: the whole batch in one transaction. If one work fails, each is
    run alone so that only it fails; if the database refuses the transaction itself (read-only,
    full), every work fails at once rather than each waiting out busy_timeout. A lock held by
    another is waited for until the earliest deadline: the works whose deadline has come fail,
    the others are AGAIN (queued again with the time they have left)."""

    def guarded(work: Work[Any]) -> Work[Any]:
        def run(c: Connection) -> Any:
            try:
                return work(c)
            except Exception as exc:
                raise _WorkFailed() from exc

        return run

    try:
        return [(True, r) for r in _transaction(conn, [guarded(w) for w in works], min(deadlines))]
    except _WorkFailed as failed:
        if len(works) == 1:
            return [(False, failed.__cause__)]
    except Exception as exc:
        return _refused(exc, deadlines)
    outcomes: list[Outcome] = []
    for index, (work, deadline) in enumerate(zip(works, deadlines, strict=True)):
        try:
            (result,) = _transaction(conn, [guarded(work)], deadline)
        except _WorkFailed as failed:
            outcomes.append((False, failed.__cause__))
        except Exception as exc:
            outcomes += _refused(exc, deadlines[index:])
            break
        else:
            outcomes.append((True, result))
    return outcomes


# The busy handler's wait is set in whole milliseconds, rounded down: a work whose deadline is
# this close has had its time.
DEADLINE_SLACK = 0.005


def _refused(exc: Exception, deadlines: list[float]) -> list[Outcome]:
    """The outcomes of works whose transaction the database refused with `exc`."""
    busy = getattr(exc, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    if not busy:
        return [(False, exc)] * len(deadlines)
    now = time.monotonic()
    return [(False, exc if d <= now + DEADLINE_SLACK else AGAIN) for d in deadlines]


def _unavailable(exc: BaseException) -> BaseException:
    """What the caller of `write` sees of a failed work's error (the port's exceptions)."""
    if isinstance(exc, sqlite3.IntegrityError):
        refused = IntegrityError(str(exc))
        refused.__cause__ = exc
        return refused
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        log.error("storage.write_failed", error=str(exc))
        return StorageUnavailable(str(exc))
    return exc


def take_process_lock(path: str) -> int:
    """Take the lock a bridge process holds on the SQLite file at `path` while it runs (an
    flock on `<path>.lock`); return its descriptor (closing it lets go). Raises
    DatabaseInUse when another process holds it.

    The delivery worker keeps in-flight state in memory: two processes on one file would
    deliver the same item twice, so a second one is refused; so is a copy of the file
    (storage.copy) while a bridge still writes to it."""
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(f"{path} is in use by another bridge process") from None
    return fd
