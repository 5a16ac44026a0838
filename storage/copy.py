"""Copy a bridge's SQLite file into a PostgreSQL database: `messenger-bridge migrate-to-postgres`.

Every table the migrations create is copied, every column by name, with its ids kept, in the
order of `TABLES` (a table after those its foreign keys point to). A table in either schema
that this module does not know stops the copy before it starts, so a table added by a later
migration step cannot be skipped unnoticed: add it to `TABLES` (or, for state only a running
service keeps, to `NOT_COPIED`).

Resumable: each table goes in batches in primary-key order, each batch one PostgreSQL
transaction that inserts with `ON CONFLICT (primary key) DO NOTHING`. A run stopped at any
point (killed, the server gone) leaves whole batches; the next run starts after the last id
already there (a table keyed by text starts from its first row, and the rows already there
are skipped), so it ends with exactly one copy of every row. A row already in PostgreSQL
under the same key but with other values (a database that is not an earlier copy of this
file) stops the copy. Then each identity sequence is moved past the ids copied (and past
any id SQLite's AUTOINCREMENT ever handed out), so that new rows get new ids, and the rows
of each table are counted on both sides.

The SQLite file is opened read-only, under the lock a running bridge holds (a file still in
use is refused, and no bridge can start on it during the copy). The DSN is a secret: no
message raised here contains its password.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from storage.database import take_process_lock
from storage.migrations import LATEST, SchemaTooNew
from storage.pg_dsn import describe, redact
from storage.port import DatabaseInUse
from storage.postgres_migrations import migrate as migrate_postgres

# Every table the migrations create, in the order they are copied: each after the tables its
# foreign keys point to (checked before copying). A migration step that adds a table adds it
# here, or to NOT_COPIED.
TABLES: tuple[str, ...] = (
    "channels",
    "chats",
    "users",
    "sessions",
    "messages",
    "outbox",
    "events",
    "orphans",
    "retention_marks",
)
# Tables the migrations create whose rows only a running service's processes mean anything
# to (leases, locks): never copied; the PostgreSQL side starts with its own.
NOT_COPIED: frozenset[str] = frozenset({"leases"})  # lane and channel leases (step 8)
# The migrations' own bookkeeping (PostgreSQL's is written by migrating it) and SQLite's own
# (AUTOINCREMENT's counters, read to place the sequences).
BOOKKEEPING = frozenset({"schema_version", "sqlite_sequence"})

BATCH = 1000  # rows per PostgreSQL transaction, by default


class CannotCopy(Exception):
    """The copy could not be done or finished (the SQLite file in use, the server unreachable,
    a row PostgreSQL refused, a schema the copier does not know). Its message says what, and
    holds no password."""


class Refused(CannotCopy):
    """What was given cannot be copied as it is: no such file, not a bridge database, or a
    schema version other than this code's (on either side). The user fixes it and runs again."""


@dataclass(frozen=True)
class Progress:
    """After each batch: the table's rows now in PostgreSQL, of `total` in the SQLite file."""

    table: str
    copied: int
    total: int


@dataclass(frozen=True)
class TableCount:
    """One table at the end: its rows in the SQLite file and in PostgreSQL, and how many of
    those this run inserted (0 for a table an earlier run had finished)."""

    table: str
    sqlite_rows: int
    postgres_rows: int
    inserted: int

    @property
    def matches(self) -> bool:
        return self.sqlite_rows == self.postgres_rows


@dataclass(frozen=True)
class _Table:
    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]  # the primary key's columns, in order
    integer_key: bool  # one INTEGER column: a run can start after PostgreSQL's largest


def copy_to_postgres(
    sqlite_path: str | Path,
    dsn: str,
    *,
    batch: int = BATCH,
    pause: float = 0.0,
    progress: Callable[[Progress], None] | None = None,
) -> list[TableCount]:
    """Copy the bridge database at `sqlite_path` into the PostgreSQL database at `dsn` (a
    libpq URI or key=value string), migrating its schema first; return each table's counts,
    in copy order. `batch`: rows per transaction; `pause`: seconds between batches (to go
    easy on a busy server); `progress` is called after each committed batch.

    Raises Refused (the file, or a schema version on either side), CannotCopy (the file held
    by a running bridge, the server, a row refused, an unknown table)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    path = Path(sqlite_path)
    if not path.is_file():
        raise Refused(f"{path}: no such file")
    try:
        lock = take_process_lock(str(path))
    except OSError as exc:
        raise CannotCopy(f"{path}: cannot take its lock: {exc}") from None
    except DatabaseInUse as exc:
        raise CannotCopy(
            f"{exc}: stop the bridge (every process on this file) before copying it"
        ) from None
    try:
        with _open_sqlite(path) as source, _connect(dsn) as target:
            _check_sqlite_version(source, path)
            try:
                migrate_postgres(target)
            except SchemaTooNew as exc:
                raise Refused(f"PostgreSQL {describe(dsn)}: {exc}") from None
            tables = _plan(source, target)
            counts = []
            for table in tables:
                inserted = _copy_table(source, target, table, batch, pause, progress)
                _advance_sequence(source, target, table)
                counts.append(_count(source, target, table, inserted))
            return counts
    except psycopg.Error as exc:
        raise CannotCopy(f"PostgreSQL {describe(dsn)}: {_first_line(exc, dsn)}") from None
    finally:
        os.close(lock)


# --- the two databases --------------------------------------------------------------------


@contextlib.contextmanager
def _open_sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    """The file read-only (a WAL left by a killed bridge is read too), in one read transaction:
    one snapshot for the whole copy."""
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise Refused(f"{path}: cannot open it read-only: {exc}") from None
    try:
        conn.execute("BEGIN")
        yield conn
    except sqlite3.DatabaseError as exc:
        raise Refused(f"{path}: not a readable bridge database: {exc}") from None
    finally:
        conn.close()


@contextlib.contextmanager
def _connect(dsn: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            row_factory=tuple_row,
            application_name="messenger-bridge migrate-to-postgres",
            connect_timeout=10,
        )
    except psycopg.Error as exc:
        raise CannotCopy(
            f"cannot connect to PostgreSQL {describe(dsn)}: {_first_line(exc, dsn)}"
        ) from None
    with conn:
        yield conn


def _check_sqlite_version(source: sqlite3.Connection, path: Path) -> None:
    try:
        row = source.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError:  # no such table
        raise Refused(f"{path}: not a bridge database (it has no schema_version table)") from None
    version = int(row[0]) if row and row[0] is not None else 0
    if version < LATEST:
        raise Refused(
            f"{path}: the file is at schema version {version}, this code's is {LATEST}: start"
            " the bridge (this version) on it once, so that it upgrades the file, stop it, and"
            " copy again"
        )
    if version > LATEST:
        raise Refused(
            f"{path}: the file is at schema version {version}, newer than this code knows"
            f" ({LATEST}): upgrade the bridge, then copy"
        )


def _plan(source: sqlite3.Connection, target: psycopg.Connection[Any]) -> list[_Table]:
    """What is copied, checked against both schemas: every table known, each after the
    tables it refers to, the same columns on both sides, a primary key to go in order of."""
    known = set(TABLES) | NOT_COPIED | BOOKKEEPING
    in_sqlite = {
        r[0]
        for r in source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    in_postgres = {
        r[0]
        for r in target.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
        )
    }
    for side, found in (("the SQLite file", in_sqlite), ("PostgreSQL", in_postgres)):
        if unknown := sorted(found - known):
            raise CannotCopy(
                f"{side} has tables this copier does not know: {', '.join(unknown)}; a"
                " migration added them: list them in storage.copy.TABLES (or NOT_COPIED)"
            )
        if missing := sorted(set(TABLES) - found):
            raise CannotCopy(f"{side} lacks the tables {', '.join(missing)}")
    tables = []
    for position, name in enumerate(TABLES):
        for (parent,) in source.execute(
            'SELECT DISTINCT "table" FROM pragma_foreign_key_list(?)', (name,)
        ):
            if parent not in TABLES[:position]:
                raise CannotCopy(
                    f"{name} refers to {parent}, which storage.copy.TABLES does not list before it"
                )
        info = source.execute(
            "SELECT name, type, pk FROM pragma_table_info(?) ORDER BY cid", (name,)
        ).fetchall()
        columns = tuple(str(r[0]) for r in info)
        pg_columns = {
            r[0]
            for r in target.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = %s",
                (name,),
            )
        }
        if set(columns) != pg_columns:
            raise CannotCopy(
                f"{name}: the columns differ: SQLite has {sorted(columns)}, PostgreSQL"
                f" {sorted(pg_columns)}"
            )
        key_rows = sorted((r for r in info if r[2]), key=lambda r: int(r[2]))
        if not key_rows:
            raise CannotCopy(f"{name}: no primary key to copy it in order of")
        key = tuple(str(r[0]) for r in key_rows)
        integer_key = len(key_rows) == 1 and str(key_rows[0][1]).upper() == "INTEGER"
        tables.append(_Table(name, columns, key, integer_key))
    return tables


# --- one table ----------------------------------------------------------------------------


def _copy_table(
    source: sqlite3.Connection,
    target: psycopg.Connection[Any],
    table: _Table,
    batch: int,
    pause: float,
    progress: Callable[[Progress], None] | None,
) -> int:
    """Copy the rows not in PostgreSQL yet, a batch per transaction; return how many."""
    name = sql.Identifier(table.name)
    stage = sql.Identifier(f"copy_{table.name}")
    columns = sql.SQL(", ").join(map(sql.Identifier, table.columns))
    key = sql.SQL(", ").join(map(sql.Identifier, table.key))
    # Each batch is written to a temporary table with COPY, then inserted from it: one round
    # trip for the rows, and the server itself compares the ones that were already there.
    target.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {}) ON COMMIT DELETE ROWS").format(
            stage, name
        )
    )
    insert = sql.SQL(
        "INSERT INTO {name} ({columns}) SELECT {columns} FROM {stage}"
        " ON CONFLICT ({key}) DO NOTHING"
    ).format(name=name, columns=columns, stage=stage, key=key)
    on_key = sql.SQL(" AND ").join(
        sql.SQL("t.{k} = s.{k}").format(k=sql.Identifier(k)) for k in table.key
    )
    differing = sql.SQL(
        "SELECT {skey} FROM {stage} s JOIN {name} t ON {on_key}"
        " WHERE ROW({tcols}) IS DISTINCT FROM ROW({scols}) LIMIT 1"
    ).format(
        skey=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(k)) for k in table.key),
        stage=stage,
        name=name,
        on_key=on_key,
        tcols=sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in table.columns),
        scols=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in table.columns),
    )
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN").format(stage, columns)

    total = _sqlite_count(source, table.name)
    copied = _postgres_count(target, table.name)
    after: tuple[Any, ...] | None = None
    if table.integer_key:
        # Earlier runs committed whole batches in key order: all rows up to PostgreSQL's
        # largest key are there (what is not, the final count shows).
        row = target.execute(sql.SQL("SELECT max({}) FROM {}").format(key, name)).fetchone()
        if row is not None and row[0] is not None:
            after = (row[0],)
    inserted = 0
    for rows in _sqlite_batches(source, table, after, batch):
        try:
            with target.transaction():
                with target.cursor().copy(copy_in) as copy:
                    for values in rows:
                        copy.write_row(values)
                added = target.execute(insert).rowcount
                if (
                    added < len(rows)
                    and (clash := target.execute(differing).fetchone()) is not None
                ):
                    raise CannotCopy(
                        f"{table.name}: PostgreSQL already holds a different row with"
                        f" {_key_text(table.key, clash)}: copy into an empty database, or"
                        " one that holds only an earlier copy of this file"
                    )
        except psycopg.Error as exc:
            first, last = _key_of(table, rows[0]), _key_of(table, rows[-1])
            raise CannotCopy(
                f"{table.name}: PostgreSQL refused the rows from {_key_text(table.key, first)}"
                f" to {_key_text(table.key, last)}: {_first_line(exc)}"
            ) from None
        inserted += added
        copied += added
        if progress is not None:
            progress(Progress(table.name, copied, total))
        if pause > 0:
            time.sleep(pause)
    return inserted


def _sqlite_batches(
    source: sqlite3.Connection, table: _Table, after: tuple[Any, ...] | None, size: int
) -> Iterator[list[tuple[Any, ...]]]:
    """The table's rows in key order after the key `after` (None: from the first), `size` at
    a time: each batch a query of its own, from where the last ended."""
    columns = ", ".join(map(_quote, table.columns))
    key = ", ".join(map(_quote, table.key))
    positions = [table.columns.index(k) for k in table.key]
    marks = ", ".join("?" * len(table.key))
    while True:
        where = "" if after is None else f" WHERE ({key}) > ({marks})"
        rows = source.execute(
            f"SELECT {columns} FROM {_quote(table.name)}{where} ORDER BY {key} LIMIT ?",  # noqa: S608 (names from the schema)
            (*(after or ()), size),
        ).fetchall()
        if not rows:
            return
        yield rows
        last = rows[-1]
        after = tuple(last[i] for i in positions)


def _advance_sequence(
    source: sqlite3.Connection, target: psycopg.Connection[Any], table: _Table
) -> None:
    """Move the table's identity sequence (if it has one) past every id in PostgreSQL and
    every id SQLite handed out (AUTOINCREMENT's counter outlives deleted rows): new rows get
    new ids. Never moves it back."""
    identity = target.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND table_name = %s AND is_identity = 'YES'",
        (table.name,),
    ).fetchone()
    if identity is None:
        return
    column = str(identity[0])
    highest = [_sqlite_max(source, table.name, column)]
    if source.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    ).fetchone():
        row = source.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = ?", (table.name,)
        ).fetchone()
        highest.append(int(row[0]) if row else 0)
    sequence = target.execute(
        "SELECT pg_get_serial_sequence(%s, %s)", (table.name, column)
    ).fetchone()
    assert sequence is not None and sequence[0] is not None
    row = target.execute(
        sql.SQL("SELECT max({}), pg_sequence_last_value(%s::regclass) FROM {}").format(
            sql.Identifier(column), sql.Identifier(table.name)
        ),
        (sequence[0],),
    ).fetchone()
    assert row is not None
    highest += [row[0] or 0, row[1] or 0]
    if (top := max(highest)) > 0:
        target.execute("SELECT setval(%s::regclass, %s, true)", (sequence[0], top))


def _count(
    source: sqlite3.Connection, target: psycopg.Connection[Any], table: _Table, inserted: int
) -> TableCount:
    return TableCount(
        table.name,
        _sqlite_count(source, table.name),
        _postgres_count(target, table.name),
        inserted,
    )


def _sqlite_count(source: sqlite3.Connection, table: str) -> int:
    return int(source.execute(f"SELECT count(*) FROM {_quote(table)}").fetchone()[0])  # noqa: S608


def _sqlite_max(source: sqlite3.Connection, table: str, column: str) -> int:
    row = source.execute(f"SELECT max({_quote(column)}) FROM {_quote(table)}").fetchone()  # noqa: S608
    return int(row[0]) if row and row[0] is not None else 0


def _postgres_count(target: psycopg.Connection[Any], table: str) -> int:
    row = target.execute(
        sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
    ).fetchone()
    return int(row[0]) if row else 0


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _key_of(table: _Table, values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(values[table.columns.index(k)] for k in table.key)


def _key_text(key: Sequence[str], values: Sequence[Any]) -> str:
    return ", ".join(f"{k} {v!r}" for k, v in zip(key, values, strict=True))


def _first_line(exc: BaseException, dsn: str = "") -> str:
    """A driver error's first line (the rest is DETAIL and HINT), without the DSN's password
    (or any other a message quotes)."""
    lines = str(exc).strip().splitlines()
    return redact(lines[0] if lines else type(exc).__name__, dsn)
