"""The PostgreSQL store: a pool of connections, each work in its own transaction in a thread.

`write(work)` runs `work`, a plain function of a `PgConnection`, in one transaction on a pooled
connection in a worker thread, and returns once it has committed: an HTTP 200 then means the
change is on the server's disk (with its `synchronous_commit`, on by default). Unlike SQLite,
PostgreSQL takes concurrent writers, so there is no single writer: `WRITERS` write works
of a store (and any number of reads, up to `pool_max`) run at once, each on its own connection.

Isolation: a write work runs SERIALIZABLE unless it asks for READ COMMITTED (`isolation`, see
`storage.port.Isolation`). The repositories were written for SQLite, whose
one writer never lets two works interleave: a work reads, decides, then writes on what it read
(a chat's first message opens its session; a resend of a failed message queues it again; a
reply whose chat is not linked yet is kept while the link, at the same time, takes what was
kept). Under READ COMMITTED two such works at once can both decide on what neither sees of
the other, and a message is queued twice or kept forever. SERIALIZABLE makes the server roll
one of them back instead, and the store runs it again: SQLite's outcome, whatever the work.
Its cost: conflicts are checked by index page, so concurrent ingests of different chats (on
the same newest pages) roll each other back. A hot work whose decisions are each protected
explicitly (ON CONFLICT on a unique key, a row lock, the chat's advisory lock
`storage.chats.lock_chat`) may run READ COMMITTED instead. Only the outbox claim does (its
rows locked FOR UPDATE SKIP LOCKED); the user-message ingest was measured so and moved back to
SERIALIZABLE (docs/decisions.md says why).
Reads (`read`, `fetch_all`...) run READ COMMITTED, read only: one statement's snapshot
(in autocommit: no transaction of their own to open and roll back).

What can go wrong, and what the caller sees:

- A serialization failure or a deadlock (the server chose this transaction to roll back): the
  work is run again after a short random pause, until `timeout` seconds from the call have
  passed (a row every work updates, under load, takes many tries; none in the bridge is so
  hot, but a count of tries would fail them where waiting a little more succeeds).
- A unique violation: nearly always a race, not a bug (two works inserting the same key at
  once; SERIALIZABLE reports most of these as serialization failures already). It is run
  again like a conflict (`UNIQUE_RETRIES` times at most), and then sees the winner's
  committed row. Still violated: `IntegrityError`.
- The connection found broken before the commit (the server restarted, a failover, an idle
  connection cut by a firewall): the pool's idle connections are checked and the work is run
  once more on a fresh one. Lost during the commit itself: `StorageUnavailable`, since the
  outcome is unknown (a retry by the client, with its idempotency key, is what is safe then).
- No connection within `timeout` seconds of the call (server down, pool exhausted), a lock
  held by another for longer than that, the server out of disk or read-only: the call raises
  `StorageUnavailable`, and `write_fault` says why until a write commits again; meanwhile a
  probe is tried every second, so readiness comes back without waiting for traffic.
- A constraint the change breaks (a unique key taken): `storage.port.IntegrityError`, the
  transaction rolled back. Anything else the work raises (a bug in its SQL) is raised as it
  is, and the transaction is rolled back.

The DSN is a secret: no message this module raises or logs contains its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar, cast

import psycopg
import structlog
from psycopg import errors
from psycopg.rows import DictRow, dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from bridge.core.tasks import cancel_and_wait
from storage.pg_dsn import describe, error_line
from storage.pg_listen import PgListener
from storage.port import (
    CannotOpen,
    Connection,
    Cursor,
    Dialect,
    IntegrityError,
    Isolation,
    Row,
    StorageUnavailable,
    Work,
)
from storage.postgres_migrations import migrate

T = TypeVar("T")

log = structlog.get_logger("storage")

# A conflict the server resolved by rolling one transaction back: run it again, this often.
# A unique violation is run again this often at most: the winner has committed by then, and
# one still violated is the work's own error.
UNIQUE_RETRIES = 3
CONFLICT_PAUSE = (0.005, 0.1)  # seconds: first pause (randomised), cap; doubling between
# While writes fail, a probe write is tried this often, in seconds.
WATCH_EVERY = 1.0
# While the server is known to be unreachable (writes failed and a connection of its own
# could not be made), a work waits at most this long for its connection: requests get their
# 503 at once rather than after `timeout` each (a load balancer's health check would time out
# first). Not for a lock or a busy pool: those are waited for, the full `timeout`.
FAULTED_WAIT = 0.5
MIN_TIMEOUT = 0.05  # seconds: the least wait for a connection or a lock
APPLICATION_NAME = "messenger-bridge"  # in pg_stat_activity, for the operators
# Write transactions a store runs at once. SERIALIZABLE checks conflicts by index page: two
# ingests at once read and insert on the same pages (the newest keys of messages, chats,
# sessions, outbox) and one is rolled back, nearly always. Under 32 connections of load, a
# pool's 10 at once made 3.1-3.8 rollbacks per message; 2 at once, 1.1-1.7, for less CPU per
# message (replica 4.1-5.1 -> 3.3-3.8 ms, server 3.1-3.8 -> 2.0-2.5 ms) and more messages a
# second (151-183 -> 188-197); 3 at once was no better than 10. Reads are not limited.
WRITERS = 2
# A write's transaction (the pool's connections are in autocommit, read only by default), by
# the work's isolation.
BEGIN_WRITE: Final[Mapping[Isolation, str]] = {
    "serializable": "BEGIN ISOLATION LEVEL SERIALIZABLE, READ WRITE",
    "read committed": "BEGIN ISOLATION LEVEL READ COMMITTED, READ WRITE",
}

# SQLSTATE classes and codes that say "the database cannot take this now", not "this work is
# wrong" (https://www.postgresql.org/docs/current/errcodes-appendix.html): connection
# exceptions, insufficient resources (disk full, too many connections), operator intervention
# (shutdown, statement or lock timeout), system errors (I/O), and a read-only transaction (a
# standby after a failover).
UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
UNAVAILABLE_CODES = {"55P03", "25006"}  # lock_not_available, read_only_sql_transaction


@functools.lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """The repositories' SQL (`?` placeholders) in psycopg's paramstyle (`%s`): each `?` outside
    quotes and comments becomes `%s`, and every literal `%` becomes `%%` (psycopg reads `%`
    anywhere, even inside quotes, as the start of a placeholder). Cached: the repositories use
    a few hundred distinct statements."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":  # a string literal or a quoted identifier, to its closing quote
            end = sql.find(ch, i + 1)
            end = n if end < 0 else end + 1  # a doubled quote ends and starts again: fine
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        else:
            out.append("%s" if ch == "?" else "%%" if ch == "%" else ch)
            i += 1
    return "".join(out)


class PgConnection:
    """One transaction's connection, as the repositories use it: `execute(sql, params)` with
    `?` placeholders, rows addressable by column name (`row["id"]`)."""

    dialect: Final[Dialect] = "postgres"

    def __init__(self, conn: psycopg.Connection[DictRow]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        # A psycopg cursor of dict rows is a port Cursor; mypy cannot see list[DictRow] as
        # list[Row] (a list is invariant).
        return cast(Cursor, self._conn.execute(translate(sql), _storable(params)))

    def executemany(self, sql: str, seq_of_params: Iterable[Sequence[Any]], /) -> Cursor:
        cur = self._conn.cursor()
        # psycopg's rowcount after executemany counts the rows of every statement, as the port
        # says (sqlite3's does too).
        cur.executemany(translate(sql), [_storable(p) for p in seq_of_params])
        return cast(Cursor, cur)


NUL = "\x00"
NUL_STORED = "\ufffd"  # U+FFFD REPLACEMENT CHARACTER


def _storable(params: Sequence[Any]) -> tuple[Any, ...]:
    """The parameters with every NUL character of a string replaced by U+FFFD: PostgreSQL's
    text cannot hold NUL (the server refuses the whole statement), SQLite's can. Outside input
    may carry one (a webhook's JSON string with the escape for it); it is never meaningful
    text. (JSON the repositories write escapes it: a jsonb cast of such a document fails.)"""
    return tuple(
        p.replace(NUL, NUL_STORED) if isinstance(p, str) and NUL in p else p for p in params
    )


class _CommitLost(Exception):
    """The connection broke during COMMIT: the transaction may or may not have committed."""


class PostgresStore:
    """The bridge's storage on a PostgreSQL server (13 or later), shared by any number of
    replicas. `dsn`: a libpq connection string or URI (a secret). `pool_min`, `pool_max`:
    connections kept open, and at most open (so also works run at once). `timeout`: seconds a
    call may wait for a connection or for another's lock before it raises StorageUnavailable."""

    dialect: Final[Dialect] = "postgres"

    def __init__(self, dsn: str, pool_min: int = 2, pool_max: int = 10, timeout: float = 5.0):
        if not 1 <= pool_min <= pool_max:
            raise ValueError("need 1 <= pool_min <= pool_max")
        self._dsn = dsn
        self.where = describe(dsn)  # the DSN without its password, for messages and logs
        self._pool_min, self._pool_max = pool_min, pool_max
        # busy_timeout may be 0 ("never wait for a lock"); PostgreSQL's lock_timeout 0 would
        # mean "wait forever", and a pool wait of 0 would refuse every work.
        self._timeout = max(timeout, MIN_TIMEOUT)
        self._pool: ConnectionPool[psycopg.Connection[DictRow]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._fault: str | None = None
        self._down = False  # the server unreachable, as the watch loop last found it
        self._reads_only = False
        self._writers = threading.BoundedSemaphore(WRITERS)
        self.schema_version = 0

    @property
    def write_fault(self) -> str | None:
        """Why writes fail now (`"no database connection within 5 s"`, `"could not extend file
        ...: No space left on device"`, `"cannot execute INSERT in a read-only transaction"`...),
        or None while they succeed. For readiness: set by a failed write or read, cleared by
        the next write or probe that commits."""
        return self._fault

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "application_name": APPLICATION_NAME,
            "connect_timeout": max(2, math.ceil(self._timeout)),  # libpq: whole seconds, >= 2
            # A row lock held by another (another replica's long transaction) fails this one
            # after `timeout`, as SQLite's busy_timeout does, instead of holding a request.
            "options": f"-c lock_timeout={int(self._timeout * 1000)}"
            " -c default_transaction_isolation=serializable",  # see the module's docstring
        }

    def _pooled_kwargs(self) -> dict[str, Any]:
        """The pool's connections: in autocommit, read only and READ COMMITTED by default, so
        that a read is its statements alone, with no BEGIN, SET TRANSACTION and ROLLBACK
        around them (three round trips a read, a third of the server's statements under
        load); a write opens its transaction itself, SERIALIZABLE and READ WRITE, with the
        one BEGIN psycopg would have sent anyway."""
        return {
            **self._connect_kwargs(),
            "options": f"-c lock_timeout={int(self._timeout * 1000)}"
            " -c default_transaction_isolation=read\\ committed"
            " -c default_transaction_read_only=on",
            "row_factory": dict_row,
            "autocommit": True,
        }

    async def open(self) -> None:
        """Connect, migrate (under the migration lock: replicas starting together migrate
        once) and open the pool. Raises CannotOpen when the server cannot be reached or
        refuses the credentials (the message names the database, its password masked),
        SchemaTooNew for a database newer than the code."""
        self._executor = ThreadPoolExecutor(
            max_workers=self._pool_max, thread_name_prefix="pg-store"
        )
        await self._opening(migrate=True)
        self._watch_task = asyncio.create_task(self._watch_loop(), name="pg-watch")

    async def open_reader(self) -> None:
        """Reads only (a delivery process's store): the pool, no migrations (the serving
        process migrated first), and writes refused. Raises CannotOpen as `open`."""
        self._reads_only = True
        self._executor = ThreadPoolExecutor(
            max_workers=self._pool_max, thread_name_prefix="pg-reader"
        )
        await self._opening(migrate=False)

    async def _opening(self, *, migrate: bool) -> None:
        try:
            self.schema_version = await self._in_thread(self._first_connection, migrate)
            self._pool = self._new_pool()
            # Not waiting for the pool to fill (`open(wait=True)`): that wait cannot be cut
            # short, and a store closed while starting (a delivery process stopped at once)
            # would hold its process for `timeout`. The first connection above proved the
            # server and the credentials; a work waits for its connection.
            await self._in_thread(self._pool.open, False)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, StorageUnavailable):
                raise CannotOpen(str(exc)) from None
            raise

    def _new_pool(self) -> ConnectionPool[psycopg.Connection[DictRow]]:
        return ConnectionPool(
            self._dsn,
            connection_class=psycopg.Connection[DictRow],
            kwargs=self._pooled_kwargs(),
            min_size=self._pool_min,
            max_size=self._pool_max,
            timeout=self._timeout,
            name="bridge",
            open=False,
        )

    def _first_connection(self, migrate_first: bool) -> int:
        """A connection of its own, before the pool: migrate on it (`open`), or only see that
        the server takes us (`open_reader`). Returns the schema version, 0 when not read."""
        try:
            with psycopg.connect(self._dsn, autocommit=True, **self._connect_kwargs()) as conn:
                if migrate_first:
                    return migrate(conn)
                conn.execute("SELECT 1")
                return 0
        except psycopg.Error as exc:
            raise StorageUnavailable(
                f"cannot open the database {self.where}: {self._message(exc)}"
            ) from None

    async def close(self) -> None:
        await cancel_and_wait(self._watch_task)
        self._watch_task = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.get_running_loop().run_in_executor(self._executor, pool.close)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise StorageUnavailable("database not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # --- writes -------------------------------------------------------------------------------

    async def write(self, work: Work[T], *, isolation: Isolation = "serializable") -> T:
        """Run `work` in one transaction at `isolation`; return its result once committed.

        Raises StorageUnavailable when it cannot be committed (see the module's docstring);
        errors raised by `work` itself (such as psycopg.errors.UniqueViolation) are raised as
        they are, and the transaction is rolled back."""
        if self._pool is None:
            raise StorageUnavailable("database not open")
        if self._reads_only:
            raise StorageUnavailable("database opened for reads only")
        deadline = time.monotonic() + self._wait()
        try:
            result: T = await self._in_thread(self._run, work, deadline, isolation)
        except StorageUnavailable as exc:
            self._note_fault(str(exc))
            raise
        if self._fault is not None:
            log.warning("storage.write_recovered", after=self._fault)
            self._fault = None
        self._down = False
        return result

    def _wait(self) -> float:
        """How long a work may wait for its connection and its locks now."""
        return min(self._timeout, FAULTED_WAIT) if self._down else self._timeout

    async def read(self, work: Work[T]) -> T:
        """Run `work` read only, each statement in its own READ COMMITTED snapshot (autocommit:
        as a READ COMMITTED transaction would, without its round trips). Raises
        StorageUnavailable as `write` does."""
        if self._pool is None:
            raise StorageUnavailable("database not open")
        try:
            return await self._in_thread(self._run, work, time.monotonic() + self._wait(), None)
        except StorageUnavailable as exc:
            self._note_fault(str(exc))
            raise

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self.read(lambda conn: conn.execute(sql, params).fetchall())

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        return await self.read(lambda conn: conn.execute(sql, params).fetchone())

    async def readable(self) -> bool:
        """A trivial read succeeds (for readiness)."""
        try:
            await self.fetch_one("SELECT 1 AS one")
        except StorageUnavailable:
            return False
        return True

    def _note_fault(self, why: str) -> None:
        if self._fault != why:
            log.error("storage.write_failed", error=why)
        self._fault = why

    def _run(self, work: Work[T], deadline: float, isolation: Isolation | None) -> T:
        """In a worker thread: `work` in one transaction (None: a read, in autocommit), retried
        as the module's docstring says. Raises StorageUnavailable, or what `work` raised."""
        conflicts = violations = 0
        reconnected = False
        while True:
            try:
                return self._attempt(work, deadline, isolation)
            except (
                errors.SerializationFailure,
                errors.DeadlockDetected,
                errors.UniqueViolation,
            ) as exc:
                conflicts += 1
                first, cap = CONFLICT_PAUSE
                pause = random.uniform(0, min(cap, first * 2**conflicts))
                unique = isinstance(exc, errors.UniqueViolation)
                if unique and (violations := violations + 1) > UNIQUE_RETRIES:
                    raise IntegrityError(self._message(exc)) from exc
                if time.monotonic() + pause >= deadline:
                    if unique:
                        raise IntegrityError(self._message(exc)) from exc
                    raise StorageUnavailable(self._message(exc)) from None
                time.sleep(pause)
            except _CommitLost as exc:
                raise StorageUnavailable(
                    f"connection lost while committing, the outcome is unknown: {exc}"
                ) from None
            except PoolTimeout:
                raise StorageUnavailable(
                    f"no database connection within {self._timeout:g} s"
                ) from None
            except errors.IntegrityError as exc:
                raise IntegrityError(self._message(exc)) from exc
            except psycopg.Error as exc:
                if _broken(exc) and not reconnected and time.monotonic() < deadline:
                    # Idle connections of the pool are likely as dead as this one was: test
                    # them all before taking the next, and run the work once more.
                    reconnected = True
                    assert self._pool is not None
                    self._pool.check()
                    continue
                if _unavailable(exc):
                    raise StorageUnavailable(self._message(exc)) from None
                raise

    def _attempt(self, work: Work[T], deadline: float, isolation: Isolation | None) -> T:
        pool = self._pool
        if pool is None:
            raise StorageUnavailable("database closed")
        wait = deadline - time.monotonic()
        if wait <= 0:  # queued behind other works for all of its time
            raise PoolTimeout()
        if isolation is None:  # autocommit, READ COMMITTED, read only: each statement alone
            with pool.connection(timeout=wait) as conn:
                return work(PgConnection(conn))
        if not self._writers.acquire(timeout=wait):
            raise PoolTimeout()
        try:
            return self._transaction(pool, work, deadline, isolation)
        finally:
            self._writers.release()

    def _transaction(
        self,
        pool: ConnectionPool[psycopg.Connection[DictRow]],
        work: Work[T],
        deadline: float,
        isolation: Isolation,
    ) -> T:
        """`work` in a transaction at `isolation` on one of `pool`'s connections, committed."""
        wait = deadline - time.monotonic()
        if wait <= 0:  # waited for the other writers for all of its time
            raise PoolTimeout()
        with pool.connection(timeout=wait) as conn:
            conn.execute(BEGIN_WRITE[isolation])
            try:
                result = work(PgConnection(conn))
            except BaseException:
                if not conn.broken:
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except psycopg.Error as exc:
                if conn.broken:
                    raise _CommitLost(self._message(exc)) from None
                raise  # a deferred constraint or a conflict found at commit: rolled back
            return result

    def _message(self, exc: BaseException) -> str:
        return error_line(exc, self._dsn)

    def listener(
        self, handlers: Mapping[str, Callable[[str], None]], on_connect: Callable[[], None]
    ) -> PgListener:
        """A listener for notifications on this database (storage/pg_listen.py), not started."""
        return PgListener(self._dsn, handlers, on_connect)

    # --- readiness ----------------------------------------------------------------------------

    async def _watch_loop(self) -> None:
        """While writes fail, try a probe write every second: readiness comes back without
        waiting for traffic (which a load balancer holds back while the bridge is not ready)."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if self._fault is None:
                continue
            # A connection of its own first: it tells a server that is down (answers fail fast
            # meanwhile) from writes failing on a server that answers (a lock, a full disk).
            if not await self._in_thread(self._server_back):
                self._down = True
                continue
            if self._down:
                # The pool retries its lost connections under a back-off of its own that grows
                # to many seconds; the server answers again now: a fresh pool, at once.
                self._down = False
                await self._renew_pool()
            with contextlib.suppress(StorageUnavailable):
                await self.write(_probe)

    def _server_back(self) -> bool:
        """In a worker thread: a connection of its own (not the pool's) gets a transaction id."""
        try:
            with psycopg.connect(self._dsn, autocommit=True, **self._connect_kwargs()) as conn:
                conn.execute("SELECT pg_current_xact_id()")
        except psycopg.Error:
            return False
        return True

    async def _renew_pool(self) -> None:
        old, self._pool = self._pool, self._new_pool()
        await self._in_thread(self._pool.open, False)
        if old is not None:
            await self._in_thread(old.close, 1.0)


def _probe(conn: Connection) -> None:
    """A write that changes nothing: it takes a transaction id, which a standby (read-only
    after a failover) refuses."""
    conn.execute("SELECT pg_current_xact_id()")


def _broken(exc: psycopg.Error) -> bool:
    """The connection itself is gone (nothing was committed on it by this work)."""
    return isinstance(exc, psycopg.OperationalError) and (
        exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P"))
    )


def _unavailable(exc: psycopg.Error) -> bool:
    code = exc.sqlstate
    if code is None:  # raised by the driver, not the server: the connection or the pool
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return code.startswith(UNAVAILABLE_CLASSES) or code in UNAVAILABLE_CODES
