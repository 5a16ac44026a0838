"""The storage port: what a database backend implements and what the rest of the bridge uses.

The repositories (storage/chats.py, messages.py, outbox.py, events.py, channels.py, stats.py,
retention.py) are plain functions whose SQL is shared by every backend, as in mautrix-python's
`util/async_db`. A backend supplies:

- a `Connection` that a write's work runs its SQL on, inside one transaction;
- a `Store`: opening and closing, writes (`write(work)`, one transaction each), reads, and the
  health the service reports.

The SQL the repositories write is the subset SQLite >= 3.35 and PostgreSQL >= 13 share:
`?` positional placeholders only (a backend whose driver wants `%s` translates them), no
`:name` or `?1` parameters, `INSERT ... ON CONFLICT ... DO NOTHING / DO UPDATE SET x =
excluded.x` (the old row's columns named by their table, `coalesce(t.x, excluded.x)`: a bare
`x` is ambiguous to PostgreSQL), `RETURNING id` (never `lastrowid`), no `INSERT OR IGNORE / REPLACE`, no `rowid`,
no functions of one engine only (`json_extract`, `strftime`, `ifnull`, `group_concat`...),
integer 0/1 flags compared and bound as integers, rows read by column name (`row["col"]`,
never `row[0]`: a select names or aliases every column it reads). Where the two must differ,
a repository branches on `dialect` (of the connection, or of the store for a read), in one
place: `json_text` below, the outbox's claim, the overview's hour buckets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")

Dialect = Literal["sqlite", "postgres"]
# A write work's isolation on a backend with concurrent writers (PostgreSQL). "serializable":
# the server rolls back one of two works that would not have run one after the other (and the
# store runs it again): SQLite's outcome whatever the work. "read committed": for a work whose
# every read-then-write decision is protected explicitly (a unique key with ON CONFLICT, a row
# lock, `storage.chats.lock_chat`), so concurrent works on different chats never roll each
# other back. SQLite has one writer at a time and ignores it.
Isolation = Literal["serializable", "read committed"]


class StorageUnavailable(Exception):
    """The database cannot take the change now (locked, read-only, disk full, unreachable,
    closed...). A request that meets it gets a 503."""


class IntegrityError(Exception):
    """A constraint refused the change a work made (a unique key already taken, a foreign key
    missing): raised by `Store.write` in place of the driver's own error (`sqlite3` or psycopg;
    kept as `__cause__`), the transaction rolled back. A repository that expects a conflict
    writes `ON CONFLICT` instead; this is for the ones it does not expect."""


class DatabaseInUse(Exception):
    """Another bridge process holds this database (a backend that allows one process only)."""


class CannotOpen(Exception):
    """The database could not be opened (locked by another program past busy_timeout,
    unreadable, unreachable); its message names the database without secrets."""


class Row(Protocol):
    """A row addressable by column name: `sqlite3.Row`, or a psycopg `dict_row`."""

    def __getitem__(self, key: str, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


class Cursor(Protocol):
    """What running one statement gives back."""

    def fetchone(self) -> Row | None: ...

    def fetchall(self) -> list[Row]: ...

    @property
    def rowcount(self) -> int: ...  # rows changed by the statement (executemany: all of them)


class Connection(Protocol):
    """What a repository function runs its SQL on, inside one transaction (committed when the
    work given to `Store.write` returns; rolled back if it raises)."""

    @property
    def dialect(self) -> Dialect: ...

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


Work = Callable[[Connection], T]


class Store(Protocol):
    """A database as the bridge uses it (built from settings by `storage.open.build_store`)."""

    @property
    def dialect(self) -> Dialect: ...

    @property
    def schema_version(self) -> int:
        """The schema version the database is at, once open (`storage.migrations.LATEST`)."""
        ...

    @property
    def write_fault(self) -> str | None:
        """Why writes fail now, or None while they succeed (for readiness)."""
        ...

    async def open(self) -> None:
        """Open for reads and writes, migrating the schema to the latest version first.

        Raises DatabaseInUse, storage.migrations.SchemaTooNew, CannotOpen or OSError."""
        ...

    async def open_reader(self) -> None:
        """Open for reads only (the delivery path): no migrations, no writes; the store was
        opened fully elsewhere first."""
        ...

    async def close(self) -> None: ...

    async def write(self, work: Work[T], *, isolation: Isolation = "serializable") -> T:
        """Run `work` in one transaction; return its result once committed. `isolation`: see
        `Isolation` (only "serializable" is safe for a work that decides on what it read
        without a protection of its own).

        Raises StorageUnavailable when it cannot be committed, IntegrityError when a
        constraint refused its change. Other errors raised by `work` itself are raised as they
        are, and fail only this work."""
        ...

    async def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Read rows with the shared SQL, on a committed snapshot."""
        ...

    async def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        """The first row of `fetch_all`, or None."""
        ...

    async def readable(self) -> bool:
        """A trivial read succeeds (for readiness)."""
        ...


def json_text(dialect: Dialect, column: str, key: str) -> str:
    """An SQL expression: the text at top-level `key` of the JSON object in `column` (NULL
    when absent). `key` is a constant of the caller's, never outside input."""
    if not key.isidentifier():
        raise ValueError(f"not a JSON key the SQL may name: {key!r}")
    if dialect == "postgres":
        return f"(({column})::jsonb ->> '{key}')"
    return f"json_extract({column}, '$.{key}')"


def transaction_lock(conn: Connection, key: str) -> bool:
    """Take, until this transaction ends, the lock named `key` (a PostgreSQL advisory lock on
    the key's 64-bit hash): works that take the same key run one after the other, others at
    once. Returns whether a lock was taken: a SQLite database has one writer at a time, and
    needs none."""
    if conn.dialect != "postgres":
        return False
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(?, 0))", (key,))
    return True


def matching(filters: Mapping[str, object]) -> tuple[str, list[object]]:
    """A WHERE condition that every filter whose value is not None matches exactly, and its
    parameters: `("c.a = ? AND b = ?", [a, b])`, or `("1 = 1", [])` for none. The keys are
    the caller's column names, never outside input. (Not `(? IS NULL OR col = ?)`: PostgreSQL
    cannot tell the type of a parameter that is only compared with NULL.)"""
    used = [(column, value) for column, value in filters.items() if value is not None]
    where = " AND ".join(f"{column} = ?" for column, _ in used) or "1 = 1"
    return where, [value for _, value in used]
