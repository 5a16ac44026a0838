"""Storage: migrations from an empty file, refusal of a newer schema, group commit, one process."""

from __future__ import annotations

import ast
import asyncio
import re
import sqlite3
from pathlib import Path

import pytest

from bridge.core.model import UserProfile
from bridge.settings import StorageSettings
from storage import chats, messages, migrations
from storage.database import Database, DatabaseInUse, StorageUnavailable
from storage.migrations import LATEST, MIGRATIONS, STEPS, SchemaTooNew
from storage.open import build_store
from storage.port import Connection, IntegrityError, Store, json_text, matching


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
    assert len(failures) == 1 and isinstance(failures[0], IntegrityError)  # the port's
    assert isinstance(failures[0].__cause__, sqlite3.IntegrityError)
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


# --- the port: what a second backend relies on ----------------------------------------------

REPOSITORIES = ("chats", "messages", "outbox", "events", "channels", "stats", "retention")
# SQL of one engine only: SQLite's JSON functions and conflict clauses, its row ids, its
# numbered and named parameters, its other functions.
SQLITE_ONLY = re.compile(
    r"json_extract|json_set|json_each|json_object|INSERT OR|\browid\b|strftime|ifnull"
    r"|group_concat|\?\d|(?<![:\w]):[a-z_]+\b",
    re.IGNORECASE,
)


def _strings(tree: ast.AST) -> list[str]:
    """Every string literal and every literal part of an f-string."""
    return [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def test_repositories_write_only_sql_both_backends_share() -> None:
    storage = Path(__file__).parent.parent / "storage"
    found = []
    for name in REPOSITORIES:
        source = (storage / f"{name}.py").read_text()
        tree = ast.parse(source)
        docstrings = {
            ast.get_docstring(n, clean=False)
            for n in ast.walk(tree)
            if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        }
        sql = [s for s in _strings(tree) if s not in docstrings]
        found += [
            f"{name}.py: {m.group()!r} in {s.strip()[:60]!r}"
            for s in sql
            for m in SQLITE_ONLY.finditer(s)
        ]
        assert "lastrowid" not in source and "sqlite3" not in source, name
    assert found == []


def test_the_dialect_decides_in_one_place() -> None:
    assert (
        json_text("sqlite", "o.payload", "channel_id") == "json_extract(o.payload, '$.channel_id')"
    )
    assert json_text("postgres", "payload", "parts_done") == "((payload)::jsonb ->> 'parts_done')"
    with pytest.raises(ValueError):
        json_text("sqlite", "payload", "x') OR 1 = 1 --")
    assert matching({"a": None, "c.b": "x", "d": 0}) == ("c.b = ? AND d = ?", ["x", 0])
    assert matching({"a": None}) == ("1 = 1", [])
    assert set(STEPS) >= {"sqlite"} and STEPS["sqlite"] is MIGRATIONS


async def test_a_write_runs_on_a_connection_that_says_its_dialect(tmp_path: Path) -> None:
    db: Store = build_store(StorageSettings(path=str(tmp_path / "b.sqlite3")))
    await db.open()
    try:
        assert db.dialect == "sqlite" and await db.readable()
        assert await db.write(lambda conn: conn.dialect) == "sqlite"
        assert await db.write(lambda conn: migrations.current_version(conn)) == LATEST
    finally:
        await db.close()
    assert not await db.readable()


async def test_the_repositories_reads_by_column_name(tmp_path: Path) -> None:
    """The reads added for tests and the admin API: a chat, its keys, orphans, open sessions."""
    db = Database(str(tmp_path / "b.sqlite3"))
    await db.open()
    try:

        def work(conn: Connection) -> None:
            chat_id = chats.upsert_chat(
                conn,
                channel_id="acme",
                external_chat_id="c1",
                name=None,
                user_id="u1",
                livechat_id="support",
                now=1.0,
                url_key="k1",
            )
            chats.save_profile(conn, "acme", UserProfile("u1", None, "+1 555", None), 1.0, "+1555")
            chats.set_contact(conn, chat_id, {"email": "A@x.io"}, None, "a@x.io")
            chats.open_session(conn, chat_id, "support", "user", 1.0)
            messages.keep_orphan(
                conn,
                livechat_id="support",
                customer_id="cu",
                message_id="m1",
                text="hi",
                files=(),
                operator_id=None,
                operator_name=None,
                now=2.0,
            )

        await db.write(work)
        chat = await chats.read_chat(db, "acme", "c1")
        assert chat is not None and (chat.user_id, chat.url_key) == ("u1", "k1")
        assert await chats.read_chat(db, "acme", "c2") is None
        assert await chats.read_keys(db, "acme", "c1") == chats.ContactKeys("+1555", "", "a@x.io")
        assert await chats.read_keys(db, "acme", "c2") is None
        assert await chats.count_open_sessions(db) == 1
        (orphan,) = await messages.list_orphans(db)
        assert (orphan.customer_id, orphan.message_id, orphan.text) == ("cu", "m1", "hi")
    finally:
        await db.close()
