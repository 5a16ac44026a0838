"""Storage: migrations from an empty file, refusal of a newer schema, group commit, one process."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from storage.database import Database, DatabaseInUse, StorageUnavailable
from storage.migrations import LATEST, MIGRATIONS, SchemaTooNew


async def test_migrates_an_empty_file_and_is_idempotent(tmp_path: Path) -> None:
    path = str(tmp_path / "sub" / "b.sqlite3")
    db = Database(path)
    await db.open()
    assert db.schema_version == LATEST
    tables = {r[0] for r in await db.fetch_all("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {
        "channels",
        "chats",
        "users",
        "sessions",
        "messages",
        "outbox",
        "events",
        "schema_version",
    } <= tables
    mode = await db.fetch_one("PRAGMA journal_mode")
    assert mode is not None and mode[0] == "wal"
    await db.close()
    db = Database(path)
    await db.open()
    rows = await db.fetch_all("SELECT version FROM schema_version")
    assert [r[0] for r in rows] == [step for step, _, _ in MIGRATIONS]
    await db.close()


async def test_refuses_a_newer_schema(tmp_path: Path) -> None:
    path = str(tmp_path / "b.sqlite3")
    db = Database(path)
    await db.open()
    await db.write(
        lambda conn: conn.execute("INSERT INTO schema_version VALUES (?)", (LATEST + 1,))
    )
    await db.close()
    with pytest.raises(SchemaTooNew, match="newer than this code knows"):
        await Database(path).open()


async def test_a_second_process_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "b.sqlite3")
    first = Database(path)
    await first.open()
    with pytest.raises(DatabaseInUse):
        await Database(path).open()
    await first.close()
    second = Database(path)
    await second.open()
    await second.close()


async def test_concurrent_writes_are_grouped_and_isolated(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "b.sqlite3"))
    await db.open()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)"))

    def insert(conn: sqlite3.Connection, key: str) -> str:
        conn.execute("INSERT INTO t VALUES (?)", (key,))
        return key

    keys = [f"k{i}" for i in range(200)] + ["k1"]  # one conflicting work in the crowd
    results = await asyncio.gather(
        *(db.write(lambda conn, k=k: insert(conn, k)) for k in keys), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], sqlite3.IntegrityError)
    count = await db.fetch_one("SELECT count(*) FROM t")
    assert count is not None and count[0] == 200
    await db.close()
    with pytest.raises(StorageUnavailable):
        await db.write(lambda conn: conn.execute("SELECT 1"))


async def test_the_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "b.sqlite3"
    db = Database(str(path))
    await db.open()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (v TEXT)"))
    before = path.stat().st_size
    for _ in range(20):
        await db.write(
            lambda conn: conn.executemany("INSERT INTO t VALUES (?)", [("x" * 500,)] * 50)
        )

    async def copied() -> bool:
        return path.stat().st_size > before + 400_000  # the rows reached the database file

    from tests.conftest import eventually

    await eventually(copied, timeout=5, what="a checkpoint")
    await db.close()


async def test_a_read_after_a_commit_sees_it_while_other_reads_run(tmp_path: Path) -> None:
    db = Database(str(tmp_path / "b.sqlite3"))
    await db.open()
    await db.write(lambda conn: conn.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)"))
    await db.write(
        lambda conn: conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    )
    stop = asyncio.Event()

    async def busy_reader() -> None:  # other requests reading at the same time
        while not stop.is_set():
            await db.fetch_all("SELECT k FROM t")

    readers = [asyncio.create_task(busy_reader()) for _ in range(8)]
    try:
        for key in range(1000, 1300):
            await db.write(lambda conn, k=key: conn.execute("INSERT INTO t VALUES (?)", (k,)))
            assert await db.fetch_one("SELECT k FROM t WHERE k = ?", (key,)) is not None, key
    finally:
        stop.set()
        await asyncio.gather(*readers)
        await db.close()
