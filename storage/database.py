"""The SQLite database: one writer thread with group commit, one async read-only connection.

Every change goes through `Database.write(work)`, where `work` is a plain function of a
`sqlite3.Connection`. Works queued while a transaction is running are run together in the next
one, in one hop to the writer thread, and committed with a single fsync (group commit): many
concurrent requests share the cost of both. `write` returns only after the commit, which is
what lets an HTTP 200 mean "on disk". Reads go through aiosqlite on a second connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from storage.migrations import migrate

T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]
Outcome = tuple[bool, Any]  # (succeeded, result or exception)

log = structlog.get_logger("storage")

MAX_BATCH = 512


class StorageUnavailable(Exception):
    """The database cannot take the change now (locked, read-only, disk full...)."""


class DatabaseInUse(Exception):
    """Another bridge process holds this database."""


class Database:
    def __init__(self, path: str, synchronous: str = "normal", busy_timeout: float = 5.0) -> None:
        self.path = path
        self._busy_ms = int(busy_timeout * 1000)
        self.synchronous = synchronous.upper()
        self._executor: ThreadPoolExecutor | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._inline_reader: sqlite3.Connection | None = None
        self._queue: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._checkpointer: aiosqlite.Connection | None = None
        self._checkpoint_task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self.schema_version = 0

    def _pragmas(self) -> list[str]:
        return [
            "journal_mode=WAL",
            f"synchronous={self.synchronous}",
            "foreign_keys=ON",
            f"busy_timeout={self._busy_ms}",
            # Checkpoints run on their own connection (see _checkpoint_loop), not inside a
            # commit that many requests are waiting for.
            "wal_autocheckpoint=0",
        ]

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._take_process_lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        try:
            self._writer = await self._in_writer(self._connect_writer)
            self.schema_version = await self._in_writer(migrate, self._writer)
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            self._reader.row_factory = aiosqlite.Row
            for pragma in [*self._pragmas(), "query_only=ON"]:
                # Closed at once: an open statement would pin a snapshot or hold a lock.
                async with self._reader.execute(f"PRAGMA {pragma}"):
                    pass
            self._checkpointer = await aiosqlite.connect(self.path, isolation_level=None)
            for pragma in self._pragmas():
                async with self._checkpointer.execute(f"PRAGMA {pragma}"):
                    pass
        except BaseException:
            await self.close()  # a refused or broken file must not stay open and locked
            raise
        self._task = asyncio.create_task(self._write_loop(), name="db-writer")
        self._checkpoint_task = asyncio.create_task(self._checkpoint_loop(), name="db-checkpoint")

    async def open_reader(self) -> None:
        """Reads only, for deliveries (in the delivery process, and the serving process's own):
        no lock, no migrations, no writer, no checkpoints (the serving process's main
        `Database` opened the file fully first). A delivery's reads are point lookups of a few
        microseconds, which under WAL never wait for the writer, so they run on the event loop
        itself: cheaper than a hop to a thread and back."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        for pragma in [f"busy_timeout={self._busy_ms}", "query_only=ON"]:
            conn.execute(f"PRAGMA {pragma}").close()
        self._inline_reader = conn

    async def _checkpoint_loop(self, every: float = 1.0) -> None:
        """Copy the WAL into the database file in the background. PASSIVE never waits for, nor
        blocks, the writer; what it cannot copy now it copies next time."""
        assert self._checkpointer is not None
        while True:
            await asyncio.sleep(every)
            try:
                async with self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)"):
                    pass
            except sqlite3.Error as exc:
                log.warning("storage.checkpoint_failed", error=str(exc))

    def _connect_writer(self) -> sqlite3.Connection:
        # isolation_level=None: the module opens no transactions of its own; we BEGIN explicitly.
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        for pragma in self._pragmas():
            conn.execute(f"PRAGMA {pragma}").close()
        return conn

    async def _in_writer(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _take_process_lock(self) -> None:
        # The delivery worker keeps in-flight state in memory: two processes on one file would
        # deliver the same item twice, so a second one is refused.
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseInUse(f"{self.path} is in use by another bridge process") from None
        self._lock_fd = fd

    async def close(self) -> None:
        if self._checkpoint_task is not None:
            self._checkpoint_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoint_task
            self._checkpoint_task = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for fut in (f for _, f in self._queue if not f.done()):
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

    async def fetch_all(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        if self._inline_reader is not None:  # fetchall ends the statement: no stale snapshot
            return self._inline_reader.execute(sql, params).fetchall()
        return list(await self.reader.execute_fetchall(sql, params))

    async def fetch_one(self, sql: str, params: Any = ()) -> sqlite3.Row | None:
        return next(iter(await self.fetch_all(sql, params)), None)

    async def write(self, work: Work[T]) -> T:
        """Run `work` in a write transaction; return its result once committed."""
        if self._task is None or self._task.done():
            raise StorageUnavailable("database not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # The waiter may be gone (its request cancelled): mark the outcome as seen regardless.
        # A cancelled waiter cancels `fut`, not the work: once queued, it is committed or
        # failed with its batch, and only its result goes unread.
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append((work, fut))
        self._pending.set()
        return await fut

    async def _write_loop(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                assert self._writer is not None
                outcomes = await self._in_writer(_run_batch, self._writer, [w for w, _ in batch])
                for (_, fut), (ok, value) in zip(batch, outcomes, strict=True):
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(_unavailable(value))


def _transaction(conn: sqlite3.Connection, works: list[Work[Any]]) -> list[Any]:
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


def _run_batch(conn: sqlite3.Connection, works: list[Work[Any]]) -> list[Outcome]:
    """In the writer thread: the whole batch in one transaction. If one work fails, each is
    run alone so that only it fails; if the database refuses the transaction itself (locked,
    read-only, full), every work fails at once rather than each waiting out busy_timeout."""

    def guarded(work: Work[Any]) -> Work[Any]:
        def run(c: sqlite3.Connection) -> Any:
            try:
                return work(c)
            except Exception as exc:
                raise _WorkFailed() from exc

        return run

    try:
        return [(True, r) for r in _transaction(conn, [guarded(w) for w in works])]
    except _WorkFailed as failed:
        if len(works) == 1:
            return [(False, failed.__cause__)]
    except Exception as exc:
        return [(False, exc)] * len(works)
    outcomes: list[Outcome] = []
    for index, work in enumerate(works):
        try:
            (result,) = _transaction(conn, [guarded(work)])
        except _WorkFailed as failed:
            outcomes.append((False, failed.__cause__))
        except Exception as exc:
            outcomes += [(False, exc)] * (len(works) - index)
            break
        else:
            outcomes.append((True, result))
    return outcomes


def _unavailable(exc: BaseException) -> BaseException:
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError
    ):
        log.error("storage.write_failed", error=str(exc))
        return StorageUnavailable(str(exc))
    return exc
