"""The PostgreSQL store against a real server (tests/pg.py): migrations, round trips,
concurrency, conflicts retried, credentials kept secret, a server restart survived.

The storage layer's own tests: they may use raw SQL.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.settings import ConfigError, config_warnings, settings_from_dict
from storage import chats
from storage.database import SqliteConnection, StorageUnavailable
from storage.migrations import LATEST as SQLITE_LATEST
from storage.migrations import MIGRATIONS, SchemaTooNew
from storage.migrations import migrate as migrate_sqlite
from storage.pg_dsn import describe, passwords, redact
from storage.port import CannotOpen, IntegrityError
from tests.conftest import eventually, free_port
from tests.pg import PgServer
from tests.procs import run_cli

psycopg = pytest.importorskip(
    "psycopg", reason="the PostgreSQL driver is not installed (pip install -e '.[postgres]')"
)

from storage.postgres import PgConnection, PostgresStore, translate  # noqa: E402
from storage.postgres_migrations import LATEST, PG_MIGRATIONS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def store(dsn: str, **kw: Any) -> PostgresStore:
    return PostgresStore(dsn, **{"pool_min": 2, "pool_max": 8, "timeout": 3.0, **kw})


def new_item(lane: str, ref: int = 0) -> Callable[[PgConnection], int]:
    def work(conn: PgConnection) -> int:
        row = conn.execute(
            "INSERT INTO outbox (kind, lane, ref_id, next_attempt_at, created_at, updated_at)"
            " VALUES ('test', ?, ?, 0, 0, 0) RETURNING id",
            (lane, ref),
        ).fetchone()
        assert row is not None
        return int(row["id"])

    return work


# --- placeholders and DSNs (no server) ---------------------------------------------------


def test_placeholders_are_translated_outside_quotes_and_percent_signs_escaped() -> None:
    assert translate("SELECT * FROM t WHERE a = ? AND b IN (?, ?)") == (
        "SELECT * FROM t WHERE a = %s AND b IN (%s, %s)"
    )
    assert translate("SELECT '?', \"odd?\" FROM t WHERE a LIKE 'x%' AND b = ?") == (
        "SELECT '?', \"odd?\" FROM t WHERE a LIKE 'x%%' AND b = %s"
    )
    assert translate("SELECT 'it''s ?' -- why? 5%\n, ? /* ? */") == (
        "SELECT 'it''s ?' -- why? 5%%\n, %s /* ? */"
    )
    assert translate("SELECT a % ? FROM t") == "SELECT a %% %s FROM t"


def test_dsn_passwords_are_found_and_redacted() -> None:
    assert passwords("postgresql://bridge:s%40cret@db:5432/b") == ["s%40cret", "s@cret"]
    assert passwords("host=db password='it\\'s secret' user=bridge") == [
        "'it\\'s secret'",
        "it's secret",
    ]
    assert passwords("postgresql://db/b?user=x&password=hunter22") == ["hunter22"]
    assert passwords("host=db user=bridge") == []
    assert describe("postgresql://bridge:hunter22@db/b") == "postgresql://bridge:***@db/b"
    message = 'missing "=" after "postgresql://bridge:hunter22@db/b" in connection info'
    assert "hunter22" not in redact(message, "postgresql://bridge:hunter22@db/b")
    assert "hunter22" not in redact("password=hunter22 host=x", "")


# --- settings -----------------------------------------------------------------------------


def config(**storage: Any) -> dict[str, Any]:
    return {"admin": {"token": "t" * 12}, "storage": storage}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        settings_from_dict(raw)
    return info.value.problems


def test_storage_backend_settings() -> None:
    settings = settings_from_dict(config())
    assert settings.storage.backend == "sqlite" and settings.storage.dsn is None
    dsn = "postgresql://bridge:hunter22@db.example:5432/bridge"
    settings = settings_from_dict(config(backend="postgres", dsn=dsn, pool_min=1, pool_max=4))
    assert settings.storage.pool_max == 4
    assert "hunter22" not in repr(settings) and "hunter22" not in str(settings.storage)
    assert dsn in settings.secrets() and "hunter22" in settings.secrets()  # the log redactor
    assert not [w for w in config_warnings(settings) if w.startswith("storage.")]

    assert problems(config(backend="postgres")) == [
        'storage.dsn: required with backend = "postgres" (a libpq URI such as'
        " postgresql://bridge@db.example:5432/bridge; the password in it, in PGPASSWORD or in"
        " ~/.pgpass)"
    ]
    assert problems(config(dsn=dsn)) == [
        'storage.dsn: set, but storage.backend is "sqlite"; set backend = "postgres" to use it,'
        " or remove it"
    ]
    assert problems(config(backend="postgres", dsn=dsn, pool_min=5, pool_max=2)) == [
        "storage.pool_min: more than storage.pool_max (2)"
    ]
    (found,) = problems(config(backend="postgres", dsn="mysql://bridge:hunter22@db/bridge"))
    assert found.startswith("storage.dsn: not a libpq connection string: ")
    assert "hunter22" not in found
    assert problems(config(backend="mysql"))[0].startswith("storage.backend: Input should be")


def test_a_postgres_config_mistake_exits_with_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[admin]\ntoken = "t-t-t-t-t-t-t"\n[storage]\nbackend = "postgres"\n'
        'dsn = "host=db password=hunter22 nonsense"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "--config", str(bad), "check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("storage.dsn: not a libpq connection string")
    assert "hunter22" not in result.stdout + result.stderr


def check_config(tmp_path: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`check-config` (with `args`) on a config whose storage is PostgreSQL at `dsn`."""
    path = tmp_path / "pg.toml"
    path.write_text(
        f'[admin]\ntoken = "t-t-t-t-t-t-t"\n[storage]\nbackend = "postgres"\ndsn = {json.dumps(dsn)}\n'
    )
    return run_cli("--config", str(path), "check-config", *args)


def test_check_config_reaches_postgres_and_compares_the_schema_versions(
    tmp_path: Path, pg_server: PgServer, pg_dsn: str
) -> None:
    where = describe(pg_dsn)
    assert where.startswith("postgresql://postgres:***@127.0.0.1:")
    result = check_config(tmp_path, pg_dsn)  # a database serve has not started on yet
    assert result.returncode == 0, result.stderr
    found, ok = result.stdout.splitlines()
    assert found.startswith("storage.dsn: reachable, PostgreSQL 1")
    assert f" at {where}; no schema yet (`serve` creates it, version {LATEST})" in found
    assert ok.endswith("pg.toml: OK (0 live chats, 0 messengers)")
    assert pg_server.password not in result.stdout + result.stderr
    assert versions_now(pg_dsn) is None  # the check created nothing

    asyncio.run(migrated(pg_dsn))
    result = check_config(tmp_path, pg_dsn)
    assert result.returncode == 0, result.stderr
    assert f"schema version {LATEST}, this code's too" in result.stdout

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # an older release's database
        conn.execute("DELETE FROM schema_version WHERE version = %s", (LATEST,))
    result = check_config(tmp_path, pg_dsn)
    assert result.returncode == 0, result.stderr
    assert (
        f"schema version {LATEST - 1}, this code's {LATEST} (`serve` upgrades it at start)"
        in result.stdout
    )

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # a newer release's database
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (LATEST + 1,))
    result = check_config(tmp_path, pg_dsn)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"storage.dsn: the database {where} is at schema version {LATEST + 1}, newer than this"
        f" code knows ({LATEST}): `serve` refuses it; upgrade the bridge\n"
    )


def test_check_config_says_precisely_why_postgres_cannot_be_reached(
    tmp_path: Path, pg_server: PgServer, pg_dsn: str
) -> None:
    wrong = pg_server.dsn(pg_dsn.rsplit("/", 1)[1], password="not-the-password")
    result = check_config(tmp_path, wrong)
    assert result.returncode == 1, result.stdout
    assert result.stderr.startswith(
        "storage.dsn: cannot connect to PostgreSQL postgresql://postgres:***@127.0.0.1:"
    )
    assert "password authentication failed" in result.stderr
    assert "not-the-password" not in result.stdout + result.stderr

    closed = f"postgresql://postgres:hunter22@127.0.0.1:{free_port()}/bridge"
    began = time.monotonic()
    result = check_config(tmp_path, closed)
    assert result.returncode == 1, result.stdout
    assert time.monotonic() - began < 30  # bounded (5 s), whatever the interpreter's start
    assert result.stderr.startswith(f"storage.dsn: cannot connect to PostgreSQL {describe(closed)}")
    assert "Connection refused" in result.stderr
    assert "hunter22" not in result.stdout + result.stderr
    # --offline: the file only, as before.
    result = check_config(tmp_path, closed, "--offline")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("pg.toml: OK (0 live chats, 0 messengers)\n")
    assert "storage.dsn" not in result.stdout + result.stderr


def versions_now(dsn: str) -> int | None:
    """The database's schema version; None when it has no schema_version table."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
        if not (row and row[0]):
            return None
        found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        return int(found[0]) if found and found[0] is not None else 0


async def migrated(dsn: str) -> None:
    """The database as `serve` leaves it: migrated to this code's schema."""
    db = store(dsn)
    await db.open()
    await db.close()


# --- migrations ---------------------------------------------------------------------------


def test_every_sqlite_step_has_its_postgres_ddl() -> None:
    assert [(n, d) for n, d, _ in PG_MIGRATIONS] == [(n, d) for n, d, _ in MIGRATIONS]
    assert LATEST == SQLITE_LATEST


async def versions(dsn: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT version FROM schema_version ORDER BY version")
        return [row[0] for row in await cur.fetchall()]


async def test_migrations_apply_from_empty_and_are_idempotent(pg_dsn: str) -> None:
    first = store(pg_dsn)
    await first.open()
    assert first.schema_version == LATEST
    await first.write(new_item("lane-a"))
    await first.close()
    again = store(pg_dsn)
    await again.open()
    try:
        assert again.schema_version == LATEST
        assert await versions(pg_dsn) == list(range(1, LATEST + 1))
        assert (await again.fetch_one("SELECT count(*) AS n FROM outbox")) == {"n": 1}
    finally:
        await again.close()


async def test_replicas_starting_together_migrate_once(pg_dsn: str) -> None:
    replicas = [store(pg_dsn, pool_min=1, pool_max=2) for _ in range(5)]
    await asyncio.gather(*(replica.open() for replica in replicas))
    try:
        assert {replica.schema_version for replica in replicas} == {LATEST}
        assert await versions(pg_dsn) == list(range(1, LATEST + 1))
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))


async def test_a_database_newer_than_the_code_is_refused(pg_dsn: str) -> None:
    first = store(pg_dsn)
    await first.open()
    await first.write(
        lambda conn: conn.execute("INSERT INTO schema_version (version) VALUES (?)", (LATEST + 1,))
    )
    await first.close()
    newer = store(pg_dsn)
    with pytest.raises(SchemaTooNew, match="newer than this code knows"):
        await newer.open()


def sqlite_schema(path: Path) -> tuple[dict[str, set[str]], set[str]]:
    conn = sqlite3.connect(path, isolation_level=None, factory=SqliteConnection)
    conn.row_factory = sqlite3.Row
    try:
        migrate_sqlite(conn)
        tables = [
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        columns = {t: {row[1] for row in conn.execute(f"PRAGMA table_info({t})")} for t in tables}
        indexes = {
            name
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            )
        }
    finally:
        conn.close()
    return columns, indexes


async def test_the_postgres_schema_has_the_sqlite_schemas_tables_columns_and_indexes(
    pg_dsn: str, tmp_path: Path
) -> None:
    columns, indexes = sqlite_schema(tmp_path / "bridge.sqlite3")
    pg = store(pg_dsn)
    await pg.open()
    try:
        rows = await pg.fetch_all(
            "SELECT table_name AS t, column_name AS c FROM information_schema.columns"
            " WHERE table_schema = 'public'"
        )
        pg_columns: dict[str, set[str]] = {}
        for row in rows:
            pg_columns.setdefault(row["t"], set()).add(row["c"])
        assert pg_columns == columns
        # The indexes created by name (those of UNIQUE and PRIMARY KEY constraints have no
        # SQL in SQLite, and their constraints' names in PostgreSQL).
        rows = await pg.fetch_all(
            "SELECT indexname AS i FROM pg_indexes WHERE schemaname = 'public'"
            " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
        )
        assert {row["i"] for row in rows} == indexes
    finally:
        await pg.close()


# --- reads and writes ---------------------------------------------------------------------


@pytest.fixture
async def pg(pg_dsn: str) -> Any:
    opened = store(pg_dsn)
    await opened.open()
    yield opened
    await opened.close()


async def test_write_and_read_round_trip(pg: PostgresStore) -> None:
    first = await pg.write(new_item("lane-%a?"))
    second = await pg.write(new_item("lane-b", ref=first))
    assert second > first
    row = await pg.fetch_one(
        "SELECT id, lane, ref_id, status, payload FROM outbox WHERE lane LIKE 'lane-\\%%' AND id = ?",
        (first,),
    )
    assert row == {
        "id": first,
        "lane": "lane-%a?",
        "ref_id": 0,
        "status": "pending",
        "payload": "{}",
    }
    assert await pg.fetch_one("SELECT id FROM outbox WHERE id = ?", (second + 1,)) is None
    lanes = await pg.read(
        lambda conn: [r["lane"] for r in conn.execute("SELECT lane FROM outbox ORDER BY id")]
    )
    assert lanes == ["lane-%a?", "lane-b"]

    def many(conn: PgConnection) -> int:
        cur = conn.executemany(
            "INSERT INTO retention_marks (name, last_id) VALUES (?, ?)", [("a", 1), ("b", 2)]
        )
        return cur.rowcount

    assert await pg.write(many) == 2
    upsert = (
        "INSERT INTO retention_marks (name, last_id) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id RETURNING last_id"
    )
    assert await pg.write(lambda conn: conn.execute(upsert, ("a", 7)).fetchone()) == {"last_id": 7}


async def test_text_with_a_nul_character_is_stored(pg: PostgresStore) -> None:
    """Outside input may hold a NUL (a webhook's JSON string with its escape), which
    PostgreSQL's text refuses: it is stored as U+FFFD."""
    item = await pg.write(new_item("lane\x00nul"))
    row = await pg.fetch_one("SELECT lane FROM outbox WHERE id = ?", (item,))
    assert row == {"lane": "lane\ufffdnul"}


async def test_a_failing_work_is_rolled_back_and_its_error_raised_as_it_is(
    pg: PostgresStore,
) -> None:
    def half_done(conn: PgConnection) -> None:
        new_item("lane-x")(conn)
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        await pg.write(half_done)
    await pg.write(lambda conn: conn.execute("INSERT INTO retention_marks VALUES ('m', 1)"))
    with pytest.raises(IntegrityError) as refused:  # the port's, as SQLite's store raises
        await pg.write(lambda conn: conn.execute("INSERT INTO retention_marks VALUES ('m', 2)"))
    assert isinstance(refused.value.__cause__, psycopg.errors.UniqueViolation)
    assert await pg.fetch_all("SELECT lane FROM outbox") == []
    assert await pg.fetch_all("SELECT last_id FROM retention_marks") == [{"last_id": 1}]
    assert pg.write_fault is None  # the work's own errors say nothing about the database


async def test_concurrent_writes_from_many_tasks(pg: PostgresStore) -> None:
    await pg.write(lambda conn: conn.execute("INSERT INTO retention_marks VALUES ('n', 0)"))

    def item_and_count(i: int) -> Any:
        def work(conn: PgConnection) -> int:
            conn.execute("UPDATE retention_marks SET last_id = last_id + 1 WHERE name = 'n'")
            return new_item(f"lane-{i % 7}", ref=i)(conn)

        return work

    ids = await asyncio.gather(*(pg.write(item_and_count(i)) for i in range(300)))
    assert len(set(ids)) == 300
    assert await pg.fetch_one("SELECT last_id FROM retention_marks") == {"last_id": 300}
    refs = await pg.fetch_all("SELECT ref_id FROM outbox ORDER BY ref_id")
    assert [r["ref_id"] for r in refs] == list(range(300))


async def test_a_deadlock_is_retried_until_both_commit(pg: PostgresStore) -> None:
    """Two works take the same two row locks in opposite orders; the server rolls one back
    (after deadlock_timeout) and the store runs it again."""
    await pg.write(
        lambda conn: conn.execute("INSERT INTO retention_marks VALUES ('a', 0), ('b', 0)")
    )
    holding = {"a": threading.Event(), "b": threading.Event()}
    runs: list[str] = []

    def crossing(first: str, second: str) -> Any:
        def work(conn: PgConnection) -> None:
            runs.append(first)
            conn.execute(
                "UPDATE retention_marks SET last_id = last_id + 1 WHERE name = ?", (first,)
            )
            holding[first].set()
            holding[second].wait(5)  # both hold one lock before either asks for the other
            conn.execute(
                "UPDATE retention_marks SET last_id = last_id + 10 WHERE name = ?", (second,)
            )

        return work

    await asyncio.gather(pg.write(crossing("a", "b")), pg.write(crossing("b", "a")))
    assert len(runs) == 3  # one of them twice
    rows = await pg.fetch_all("SELECT name, last_id FROM retention_marks ORDER BY name")
    assert rows == [{"name": "a", "last_id": 11}, {"name": "b", "last_id": 11}]


async def test_works_that_decide_on_what_they_read_run_as_if_one_at_a_time(
    pg: PostgresStore,
) -> None:
    """Two works each find no row, then insert one (a write skew: each row is new, no unique
    key is shared). SQLite's one writer runs them one after the other, so the second finds the
    first's row and inserts nothing; SERIALIZABLE makes PostgreSQL end the same way."""
    both_read = threading.Barrier(2, timeout=5)
    runs: list[str] = []

    def insert_if_none(name: str) -> Any:
        def work(conn: PgConnection) -> None:
            row = conn.execute(
                "SELECT count(*) AS n FROM retention_marks WHERE name LIKE 'skew-%'"
            ).fetchone()
            first_run = name not in runs
            runs.append(name)
            if first_run:
                both_read.wait()  # each has read before either writes
            if row is not None and row["n"] == 0:
                conn.execute("INSERT INTO retention_marks VALUES (?, 0)", (name,))

        return work

    await asyncio.gather(pg.write(insert_if_none("skew-a")), pg.write(insert_if_none("skew-b")))
    assert len(runs) == 3  # one of them run again
    rows = await pg.fetch_all("SELECT name FROM retention_marks WHERE name LIKE 'skew-%'")
    assert len(rows) == 1


async def test_a_reader_reads_and_refuses_writes(pg: PostgresStore, pg_dsn: str) -> None:
    await pg.write(new_item("lane-r"))
    reader = store(pg_dsn, pool_min=1, pool_max=2)
    await reader.open_reader()
    try:
        assert await reader.fetch_all("SELECT lane FROM outbox") == [{"lane": "lane-r"}]
        with pytest.raises(StorageUnavailable, match="reads only"):
            await reader.write(new_item("lane-w"))
    finally:
        await reader.close()


# --- credentials and faults ---------------------------------------------------------------


async def test_a_wrong_password_is_refused_without_showing_it(pg_server: PgServer) -> None:
    wrong = "Wr0ng-pa55word-xyz"
    bad = store(pg_server.dsn(password=wrong))
    with pytest.raises(CannotOpen) as info:
        await bad.open()
    shown = "".join(traceback.format_exception(info.value)) + repr(info.value)
    assert "password authentication failed" in shown
    assert f"127.0.0.1:{pg_server.port}" in shown  # says where it tried
    assert wrong not in shown and pg_server.password not in shown
    assert bad.where == f"postgresql://postgres:***@127.0.0.1:{pg_server.port}/postgres"


async def test_the_store_survives_the_server_restarting(pg_dsn: str, pg_server: PgServer) -> None:
    pg = store(pg_dsn, timeout=1.0)
    await pg.open()
    try:
        await survives_restarts(pg, pg_server)
    finally:
        await pg.close()


async def survives_restarts(pg: PostgresStore, pg_server: PgServer) -> None:
    await pg.write(new_item("before"))
    # Restarted while idle: every pooled connection is dead, which the next write must not see.
    await asyncio.to_thread(pg_server.stop)
    await asyncio.to_thread(pg_server.start)
    await pg.write(new_item("after a quick restart"))
    assert pg.write_fault is None

    await asyncio.to_thread(pg_server.stop)
    try:
        with pytest.raises(StorageUnavailable):
            await pg.write(new_item("while down"))
        assert pg.write_fault is not None
        assert pg_server.password not in pg.write_fault
        with pytest.raises(StorageUnavailable):
            await pg.fetch_all("SELECT id FROM outbox")
        assert not await pg.readable()
    finally:
        await asyncio.to_thread(pg_server.start)
    # Readiness comes back by itself (the probe), without a write from anyone.
    await eventually(lambda: pg.write_fault is None, timeout=15, what="write_fault cleared")
    await pg.write(new_item("after"))
    assert await pg.readable()
    lanes = [r["lane"] for r in await pg.fetch_all("SELECT lane FROM outbox ORDER BY id")]
    assert lanes == ["before", "after a quick restart", "after"]


async def test_while_the_server_is_down_answers_come_at_once_and_it_is_back_soon_after(
    pg_dsn: str, pg_server: PgServer
) -> None:
    """A long `timeout` is for a lock held by another, not for a server known to be down: once
    a write failed and the watch loop found the server unreachable, the next fail within
    FAULTED_WAIT, so a request gets its 503 (and a health check its answer) long before the
    timeout. And the server back, the pool is renewed at once
    rather than at its own reconnect back-off, which after an outage of several seconds waits
    many seconds more."""
    pg = store(pg_dsn, timeout=30.0)
    await pg.open()
    try:
        await pg.write(new_item("before"))
        await asyncio.to_thread(pg_server.stop)
        try:
            with pytest.raises(StorageUnavailable):
                await pg.write(new_item("while down"))  # this one may wait: nothing known yet
            assert pg.write_fault is not None
            await asyncio.sleep(2.5)  # the watch loop finds the server down (each second)
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(StorageUnavailable):
                    await pg.write(new_item("while down"))
                assert time.monotonic() - started < 10, "waited for the whole timeout"
            await asyncio.sleep(6)  # long enough for the pool's own back-off to grow
        finally:
            await asyncio.to_thread(pg_server.start)
        await eventually(lambda: pg.write_fault is None, timeout=6, what="write_fault cleared")
        await pg.write(new_item("after"))
    finally:
        await pg.close()


async def test_a_work_runs_at_the_isolation_it_asks_for(pg: PostgresStore) -> None:
    def level(conn: PgConnection) -> Any:
        row = conn.execute("SHOW transaction_isolation").fetchone()
        return row["transaction_isolation"] if row else None

    assert await pg.write(level) == "serializable"
    assert await pg.write(level, isolation="read committed") == "read committed"


async def test_works_on_one_chat_under_its_lock_run_one_after_the_other(
    pg: PostgresStore,
) -> None:
    """The write skew above, at READ COMMITTED, each work taking the chat's lock first: the
    second waits for the first's commit, then finds its row (no retry needed)."""
    runs: list[str] = []

    def insert_if_none(name: str) -> Any:
        def work(conn: PgConnection) -> None:
            assert chats.lock_chat(conn, "ch", "chat-1")
            runs.append(name)
            row = conn.execute(
                "SELECT count(*) AS n FROM retention_marks WHERE name LIKE 'locked-%'"
            ).fetchone()
            time.sleep(0.2)  # the other work is waiting on the lock meanwhile
            if row is not None and row["n"] == 0:
                conn.execute("INSERT INTO retention_marks VALUES (?, 0)", (name,))

        return work

    await asyncio.gather(
        pg.write(insert_if_none("locked-a"), isolation="read committed"),
        pg.write(insert_if_none("locked-b"), isolation="read committed"),
    )
    assert len(runs) == 2  # neither rolled back
    rows = await pg.fetch_all("SELECT name FROM retention_marks WHERE name LIKE 'locked-%'")
    assert len(rows) == 1
