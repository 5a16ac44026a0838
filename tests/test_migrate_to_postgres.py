"""`messenger-bridge migrate-to-postgres`: a bridge's SQLite file copied into a real PostgreSQL
server (tests/pg.py), every table row for row, resumable, and refused when it cannot be right.

The SQLite files are made by the real migrations and repository functions (rows in every
table: open and closed sessions, pending and dead outbox items, orphans, retention marks), and
by the real bridge process with the simulators. The storage layer's own tests: they read rows
with raw SQL to compare the two databases.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.core.model import FileRef, UserProfile
from storage import channels, chats, events, messages, outbox
from storage.database import Database, SqliteConnection, take_process_lock
from storage.migrations import LATEST, MIGRATIONS
from storage.migrations import migrate as migrate_sqlite
from storage.port import DatabaseInUse
from tests.conftest import World, eventually
from tests.pg import PgServer
from tests.procs import BridgeProcess, run_cli, toml

psycopg = pytest.importorskip(
    "psycopg", reason="the PostgreSQL driver is not installed (pip install -e '.[postgres]')"
)

from storage import copy  # noqa: E402
from storage.postgres_migrations import migrate as migrate_postgres  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.25  # a time with a fraction, to see REAL survive exactly


# --- the SQLite side ----------------------------------------------------------------------


async def make_sqlite(path: Path, chats_count: int = 6, per_chat: int = 8) -> None:
    """A bridge database with rows in every table, made by the bridge's own repositories."""
    db = Database(str(path))
    await db.open()

    def fill(conn: Any) -> None:
        now = T0
        for channel_id in ("acme", "beta"):
            channels.sync_from_config(conn, channel_id, True, now)
        channels.set_state(conn, "acme", "active", now, connected_webhook="http://h/acme")
        channels.set_state(conn, "beta", "interrupted", now, last_error="HTTP 502 from beta")
        for n in range(chats_count):
            channel_id = "acme" if n % 2 else "beta"
            user = f"u{n}"
            chat_id = chats.upsert_chat(
                conn,
                channel_id=channel_id,
                external_chat_id=f"chat-{n}",
                name=f"Chat «{n}»",
                user_id=user,
                livechat_id="support",
                now=now + n,
                url_key=f"key{n}",
            )
            chats.save_profile(
                conn, channel_id, UserProfile(user, f"name {n}", f"+4930{n:06d}"), now, None
            )
            chats.set_contact(conn, chat_id, {"email": f"e{n}@x.test"}, None, f"e{n}@x.test")
            # A closed session with a transcript, then an open one (every chat has one).
            old, _ = chats.open_session(conn, chat_id, "support", "user", now)
            chats.finish_session(conn, old, [{"text": "bye"}], now + 1)
            session, _ = chats.open_session(conn, chat_id, "support", "operator", now + 2)
            chats.set_session_url(conn, session, f"https://lc.test/c/{n}")
            for k in range(per_chat):
                direction = "in" if k % 2 else "out"
                message_id = messages.insert(
                    conn,
                    uid=messages.new_uid(),
                    dedupe_key=f"{channel_id}:{n}:{k}" if direction == "in" else None,
                    session_id=session if k > 1 else old,
                    chat_id=chat_id,
                    direction=direction,
                    text=f"message {k} 'quoted' \\ % ? \u2603",
                    files=(FileRef("a.png", "https://f.test/a.png", 10),) if k == 3 else (),
                    now=now + k / 7,
                    external_id=f"ext-{n}-{k}",
                    user_id=user,
                )
                item = outbox.enqueue(
                    conn,
                    kind="livechat.message" if direction == "in" else "operator.reply",
                    lane=f"chat:{chat_id}",
                    channel_id=channel_id,
                    ref_id=message_id,
                    payload={"text": f"message {k}"},
                    now=now,
                )
                if k % 4 == 0:
                    outbox.bury(conn, item, attempts=7, error="HTTP 422: refused", now=now + 9)
                elif k % 4 == 1:
                    outbox.complete(conn, item)  # gone: ids stay handed out
            events.record(
                conn,
                livechat_id="support",
                name="conversation.closed",
                payload={"chat": n, "note": "ünïcode"},
                now=now,
                session_id=old,
            )
            events.record(
                conn,
                livechat_id="support",
                name="mystery",
                payload={},
                now=now,
                unlinked_reason="no session",
                remote_chat_id=f"r{n}",
            )
        messages.keep_orphan(
            conn,
            livechat_id="support",
            customer_id="cust-x",
            message_id="op-9",
            text="early reply",
            files=(),
            operator_id="op",
            operator_name="Olga",
            now=now,
        )
        conn.execute("INSERT INTO retention_marks (name, last_id) VALUES ('bodies', 3)")
        # The last outbox item completed: AUTOINCREMENT's counter is past every kept id.
        last = outbox.enqueue(conn, kind="livechat.message", lane="chat:1", now=now)
        outbox.complete(conn, last)

    try:
        await db.write(fill)
    finally:
        await db.close()


def sqlite_rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        names = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
        order = ", ".join(names)
        rows = conn.execute(f"SELECT {order} FROM {table} ORDER BY {order}").fetchall()  # noqa: S608
    return [tuple(r) for r in rows]


def pg_rows(dsn: str, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    order = ", ".join(columns)
    with psycopg.connect(dsn) as conn:
        return [
            tuple(r)
            for r in conn.execute(f"SELECT {order} FROM {table}").fetchall()  # noqa: S608
        ]


def columns_of(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def assert_same_rows(path: Path, dsn: str) -> None:
    """Every copied table holds exactly the file's rows, value for value."""
    for table in copy.TABLES:
        expected = sqlite_rows(path, table)
        found = pg_rows(dsn, table, columns_of(path, table))
        assert sorted(found, key=repr) == sorted(expected, key=repr), table


@pytest.fixture
async def source(tmp_path: Path) -> Path:
    path = tmp_path / "bridge.sqlite3"
    await make_sqlite(path)
    return path


def write_config(tmp_path: Path, dsn: str | None, backend: str = "postgres") -> Path:
    storage: dict[str, Any] = {"backend": backend}
    if dsn is not None:
        storage["dsn"] = dsn
    path = tmp_path / "migrate.toml"
    path.write_text(toml({"admin": {"token": "t-t-t-t-t-t-t-t"}, "storage": storage}))
    return path


def migrate(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(config), "migrate-to-postgres", *args, timeout=120)


# --- the copy -----------------------------------------------------------------------------


def test_every_table_the_migrations_create_is_known_to_the_copier(tmp_path: Path) -> None:
    """A table added by a later step fails here until it is listed (copied or not)."""
    path = tmp_path / "schema.sqlite3"
    with sqlite3.connect(path, isolation_level=None, factory=SqliteConnection) as conn:
        conn.row_factory = sqlite3.Row
        migrate_sqlite(conn)
        tables = {
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            if not r[0].startswith("sqlite_")
        }
    assert tables == set(copy.TABLES) | copy.NOT_COPIED | {"schema_version"}


async def test_a_table_the_copier_does_not_know_stops_it_before_it_starts(
    source: Path, pg_dsn: str
) -> None:
    with sqlite3.connect(source) as conn:
        conn.execute("CREATE TABLE lane_leases (lane TEXT PRIMARY KEY, holder TEXT)")
    with pytest.raises(copy.CannotCopy, match="does not know: lane_leases; a migration added"):
        copy.copy_to_postgres(source, pg_dsn)
    assert _pg_count_or_zero(pg_dsn, "chats") == 0


async def test_a_full_copy_holds_every_row_of_every_table(source: Path, pg_dsn: str) -> None:
    seen: list[copy.Progress] = []
    counts = copy.copy_to_postgres(source, pg_dsn, batch=7, progress=seen.append)

    assert [c.table for c in counts] == list(copy.TABLES)
    assert all(c.matches and c.inserted == c.sqlite_rows > 0 for c in counts), counts
    assert_same_rows(source, pg_dsn)
    dead = pg_rows(pg_dsn, "outbox WHERE status = 'dead'", ["id"])
    assert dead and pg_rows(pg_dsn, "sessions WHERE status = 'open'", ["id"])
    # Progress per batch, counting up to each table's total.
    messages_seen = [p for p in seen if p.table == "messages"]
    assert [p.copied for p in messages_seen] == [*range(7, 48, 7), 48]
    assert {p.total for p in messages_seen} == {48}


async def test_new_rows_in_postgres_get_ids_above_the_copied_ones(
    source: Path, pg_dsn: str
) -> None:
    copy.copy_to_postgres(source, pg_dsn)
    with sqlite3.connect(source) as conn:
        handed_out = conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
        ).fetchone()
        top_outbox = conn.execute("SELECT max(id) FROM outbox").fetchone()[0]
        top_chat = conn.execute("SELECT max(id) FROM chats").fetchone()[0]
        top_event = conn.execute("SELECT max(id) FROM events").fetchone()[0]
    assert handed_out[0] > top_outbox  # the fixture deleted the newest item
    with psycopg.connect(pg_dsn) as conn:
        item = conn.execute(
            "INSERT INTO outbox (kind, lane, next_attempt_at, created_at, updated_at)"
            " VALUES ('k', 'l', 0, 0, 0) RETURNING id"
        ).fetchone()[0]
        chat = conn.execute(
            "INSERT INTO chats (channel_id, external_chat_id, user_id, client_key, livechat_id,"
            " created_at) VALUES ('acme', 'new', 'u', 'ck-new', 'support', 0) RETURNING id"
        ).fetchone()[0]
        event = conn.execute(
            "INSERT INTO events (livechat_id, name, payload, received_at)"
            " VALUES ('support', 'x', '{}', 0) RETURNING id"
        ).fetchone()[0]
    # An outbox id is never reused, not even one of an item deleted before the copy.
    assert item == handed_out[0] + 1
    assert chat == top_chat + 1 and event == top_event + 1


class Stop(Exception):
    pass


@pytest.mark.parametrize("stop_after", [1, 3, 5, 9, 14, 20])
async def test_a_copy_stopped_after_any_batch_and_run_again_holds_each_row_once(
    source: Path, pg_dsn: str, stop_after: int
) -> None:
    batches = 0
    first_run: dict[str, int] = {}

    def stop(step: copy.Progress) -> None:
        nonlocal batches
        batches += 1
        first_run[step.table] = step.copied  # committed before it is reported
        if batches == stop_after:
            raise Stop

    with pytest.raises(Stop):
        copy.copy_to_postgres(source, pg_dsn, batch=5, progress=stop)
    counts = copy.copy_to_postgres(source, pg_dsn, batch=5)

    assert all(c.matches for c in counts), counts
    assert {c.table: c.sqlite_rows - c.inserted for c in counts if c.inserted < c.sqlite_rows} == (
        first_run
    )
    assert_same_rows(source, pg_dsn)
    # A third run finds nothing to do.
    assert sum(c.inserted for c in copy.copy_to_postgres(source, pg_dsn)) == 0


async def test_a_different_row_already_in_postgres_under_a_copied_id_stops_the_copy(
    source: Path, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate_postgres(conn)
        conn.execute("INSERT INTO channels VALUES ('acme', 'active', 1, NULL, 1, 1, NULL)")
    with pytest.raises(copy.CannotCopy, match="channels: PostgreSQL already holds a different"):
        copy.copy_to_postgres(source, pg_dsn)


async def test_a_file_at_another_schema_version_is_refused(tmp_path: Path, pg_dsn: str) -> None:
    old = tmp_path / "old.sqlite3"
    with sqlite3.connect(old, isolation_level=None) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (LATEST - 1,))
    with pytest.raises(copy.Refused, match=rf"at schema version {LATEST - 1}.*start the bridge"):
        copy.copy_to_postgres(old, pg_dsn)
    with sqlite3.connect(old, isolation_level=None) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?)", (LATEST + 1,))
    with pytest.raises(copy.Refused, match=r"newer than this code knows.*upgrade the bridge"):
        copy.copy_to_postgres(old, pg_dsn)
    plain = tmp_path / "plain.sqlite3"
    sqlite3.connect(plain).close()
    with pytest.raises(copy.Refused, match="not a bridge database"):
        copy.copy_to_postgres(plain, pg_dsn)
    with pytest.raises(copy.Refused, match="no such file"):
        copy.copy_to_postgres(tmp_path / "missing.sqlite3", pg_dsn)
    # Nothing was written to PostgreSQL, not even its schema.
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT to_regclass('chats')").fetchone() == (None,)


async def test_a_postgres_database_newer_than_the_code_is_refused(
    source: Path, pg_dsn: str
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        migrate_postgres(conn)
        conn.execute("INSERT INTO schema_version VALUES (%s)", (len(MIGRATIONS) + 1,))
    with pytest.raises(copy.Refused, match="newer than this code knows") as caught:
        copy.copy_to_postgres(source, pg_dsn)
    assert "***@" in str(caught.value) and pg_dsn.split(":")[2].split("@")[0] not in str(
        caught.value
    )


async def test_a_file_held_by_a_bridge_is_refused_and_the_copy_holds_it_meanwhile(
    source: Path, pg_dsn: str
) -> None:
    db = Database(str(source))
    await db.open()
    try:
        with pytest.raises(copy.CannotCopy, match=r"in use by another bridge.*stop the bridge"):
            copy.copy_to_postgres(source, pg_dsn)
    finally:
        await db.close()

    def start_a_bridge(_: copy.Progress) -> None:
        take_process_lock(str(source))  # what a bridge starting now does first

    with pytest.raises(DatabaseInUse):
        copy.copy_to_postgres(source, pg_dsn, progress=start_a_bridge)


# --- the command --------------------------------------------------------------------------


@pytest.mark.backends("sqlite")  # the bridge whose file is copied runs on SQLite
async def test_the_command_copies_a_real_bridges_file_and_refuses_it_while_the_bridge_runs(
    world: World, tmp_path: Path, pg_dsn: str
) -> None:
    bridge = BridgeProcess(world.config(), tmp_path)
    await bridge.start(world.http)
    try:
        await eventually(lambda: world.messenger.bridge_webhook, what="connect")
        world.chatvisor.hook_url = bridge.hook_url()
        world.chatvisor.fail_with = 422  # dead letters too
        for n in range(4):
            await world.messenger.send_message(world.http, f"c{n}", f"hi {n}", message_id=f"m{n}")
        await eventually(lambda: len(world.messenger.outcomes) == 4, what="four failures")
        world.chatvisor.fail_with = None
        await world.messenger.send_message(world.http, "c9", "delivered", message_id="m9")
        await eventually(lambda: world.messenger.outcomes.get("m9") is True, what="delivered")

        config = write_config(tmp_path, pg_dsn)
        running = migrate(config, "--from", str(bridge.db_path))
        assert running.returncode == 1, running.stderr
        assert "in use by another bridge process" in running.stderr
        assert "stop the bridge" in running.stderr
    finally:
        await bridge.terminate()

    done = migrate(config, "--from", str(bridge.db_path))
    assert done.returncode == 0, done.stderr
    assert "every table matches" in done.stdout
    assert_same_rows(bridge.db_path, pg_dsn)
    assert len(pg_rows(pg_dsn, "outbox WHERE status = 'dead'", ["id"])) == 4
    password = pg_dsn.split(":")[2].split("@")[0]
    assert password not in done.stdout + done.stderr + running.stdout + running.stderr
    assert "postgres:***@127.0.0.1" in done.stderr


def test_the_command_killed_mid_copy_and_run_again_copies_each_row_once(
    tmp_path: Path, pg_dsn: str
) -> None:
    path = tmp_path / "big.sqlite3"
    asyncio.run(make_sqlite(path, chats_count=10, per_chat=30))
    config = write_config(tmp_path, pg_dsn)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    command = [sys.executable, "-m", "bridge", "--config", str(config), "migrate-to-postgres"]
    proc = subprocess.Popen(
        [*command, "--from", str(path), "--batch", "3", "--pause", "0.01"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        copied = 0
        while not 0 < copied < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
            copied = _pg_count_or_zero(pg_dsn, "messages")
        os.kill(proc.pid, signal.SIGKILL)  # no goodbye, maybe mid-transaction
    finally:
        proc.wait(timeout=30)
    assert 0 < copied < 300

    done = migrate(config, "--from", str(path), "--batch", "50")
    assert done.returncode == 0, done.stderr
    assert_same_rows(path, pg_dsn)
    summary = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[1:-1]}
    assert summary["messages"][:2] == ["300", "300"]
    assert 0 < int(summary["messages"][2]) < 300  # only what the killed run had not copied
    assert "messages: 300/300 rows" in done.stderr


def _pg_count_or_zero(dsn: str, table: str) -> int:
    try:
        with psycopg.connect(dsn) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608
    except psycopg.errors.UndefinedTable:
        return 0


def test_the_command_says_what_is_missing_with_exit_code_2(
    tmp_path: Path, pg_server: PgServer
) -> None:
    path = tmp_path / "bridge.sqlite3"
    asyncio.run(make_sqlite(path, chats_count=1, per_chat=1))
    sqlite_config = write_config(tmp_path, None, backend="sqlite")
    result = migrate(sqlite_config, "--from", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith('storage.backend: "sqlite"; migrate-to-postgres copies')

    no_dsn = write_config(tmp_path, None)
    result = migrate(no_dsn, "--from", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith('storage.dsn: required with backend = "postgres"')

    wrong = write_config(tmp_path, pg_server.dsn(password="not-the-password"))
    result = migrate(wrong, "--from", str(tmp_path / "nothing.sqlite3"))
    assert result.returncode == 2 and "nothing.sqlite3: no such file" in result.stderr
    result = migrate(wrong, "--from", str(path))
    assert result.returncode == 1
    assert "cannot connect to PostgreSQL postgresql://postgres:***@127.0.0.1" in result.stderr
    assert "not-the-password" not in result.stdout + result.stderr
