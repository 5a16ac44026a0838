"""The SQLite database: one writer connection with group commit, one read-only connection.

Every change goes through `Database.write(work)`. Works queued while a transaction is running
are run together in the next one and committed with a single fsync (group commit), so many
concurrent requests share the cost of a commit. `write` returns only after the commit, which
is what lets an HTTP 200 mean "on disk".
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import structlog

from storage.migrations import migrate

T = TypeVar("T")
Work = Callable[[aiosqlite.Connection], Awaitable[T]]

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
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: list[tuple[Work[Any], asyncio.Future[Any]]] = []
        self._pending = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock_fd: int | None = None
        self.schema_version = 0

    async def open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._take_process_lock()
        try:
            self._writer = await self._connect()
            self.schema_version = await migrate(self._writer)
            self._reader = await self._connect()
            async with self._reader.execute("PRAGMA query_only=ON"):
                pass
        except BaseException:
            await self.close()  # a refused or broken file must not stay open and locked
            raise
        self._task = asyncio.create_task(self._write_loop(), name="db-writer")

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: the module opens no transactions of its own; we BEGIN explicitly.
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        conn.row_factory = aiosqlite.Row
        for pragma in (
            "journal_mode=WAL",
            f"synchronous={self.synchronous}",
            "foreign_keys=ON",
            f"busy_timeout={self._busy_ms}",
        ):
            # Closed at once: an open statement would pin a snapshot or hold a lock.
            async with conn.execute(f"PRAGMA {pragma}"):
                pass
        return conn

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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for fut in (f for _, f in self._queue if not f.done()):
            fut.set_exception(StorageUnavailable("database closed"))
        self._queue.clear()
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def reader(self) -> aiosqlite.Connection:
        assert self._reader is not None, "database not open"
        return self._reader

    async def fetch_all(self, sql: str, params: Any = ()) -> list[aiosqlite.Row]:
        async with self.reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetch_one(self, sql: str, params: Any = ()) -> aiosqlite.Row | None:
        async with self.reader.execute(sql, params) as cur:
            return await cur.fetchone()

    async def write(self, work: Work[T]) -> T:
        """Run `work` in a write transaction; return its result once committed."""
        if self._task is None or self._task.done():
            raise StorageUnavailable("database not open")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((work, fut))
        self._pending.set()
        return await asyncio.shield(fut)

    async def _write_loop(self) -> None:
        while True:
            await self._pending.wait()
            self._pending.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[Work[Any], asyncio.Future[Any]]]) -> None:
        conn = self._writer
        assert conn is not None
        try:
            results = await self._transaction(conn, [work for work, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            # One work failed and took the batch with it: run each alone so only it fails.
            for work, fut in batch:
                try:
                    (result,) = await self._transaction(conn, [work])
                except Exception as single_exc:
                    _fail(fut, single_exc)
                else:
                    if not fut.done():
                        fut.set_result(result)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            if not fut.done():
                fut.set_result(result)

    @staticmethod
    async def _transaction(conn: aiosqlite.Connection, works: list[Work[Any]]) -> list[Any]:
        await conn.execute("BEGIN IMMEDIATE")
        try:
            results = [await work(conn) for work in works]
            await conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise
        return results


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if fut.done():
        return
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
        exc, sqlite3.IntegrityError
    ):
        log.error("storage.write_failed", error=str(exc))
        exc = StorageUnavailable(str(exc))
    fut.set_exception(exc)
