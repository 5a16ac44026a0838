"""The overview's counts (storage/stats.py): the first message since a moment found by
bisecting ids, across gaps left by deleted rows, and the hourly buckets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from storage import chats, messages, stats
from storage.database import Database
from storage.port import Connection

HOUR = 3600.0
T0 = 1_800_000_000.0 - 1_800_000_000.0 % HOUR  # an hour's first second


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(str(tmp_path / "b.sqlite3"))
    await database.open()
    yield database
    await database.close()


async def add(db: Database, times: list[tuple[float, str, str]]) -> None:
    """Messages created at these times, with these directions and statuses, in this order."""

    def work(conn: Connection) -> None:
        chat = chats.upsert_chat(
            conn,
            channel_id="acme",
            external_chat_id="c",
            name=None,
            user_id="u",
            livechat_id="support",
            now=T0,
            url_key="stats-test-chat",
        )
        session, _ = chats.open_session(conn, chat, "support", "user", T0)
        for at, direction, status in times:
            mid = messages.insert(
                conn,
                uid=messages.new_uid(),
                dedupe_key=None,
                session_id=session,
                chat_id=chat,
                direction=direction,
                text="x",
                files=(),
                now=at,
            )
            messages.set_status(conn, mid, status)

    await db.write(work)


async def test_the_first_message_since_a_moment_across_gaps(db: Database) -> None:
    assert await stats.first_message_id_since(db, T0) is None  # no message at all
    await add(db, [(T0 + i, "in", "delivered") for i in range(100)])
    await db.write(lambda c: c.execute("DELETE FROM messages WHERE id % 3 = 0 OR id < 10"))
    kept = [r[0] for r in await db.fetch_all("SELECT id FROM messages ORDER BY id")]
    for since in [T0 - 5, T0, T0 + 9, T0 + 10, T0 + 50, T0 + 98, T0 + 99]:
        expected = next((i for i in kept if T0 + i - 1 >= since), None)
        assert await stats.first_message_id_since(db, since) == expected, since
    assert await stats.first_message_id_since(db, T0 + 100) is None


async def test_traffic_counts_today_and_each_hour(db: Database) -> None:
    now = T0 + 30 * HOUR + 60
    today = now - now % (24 * HOUR)
    await add(
        db,
        [
            (now - 48 * HOUR, "in", "delivered"),  # before the window: not counted anywhere
            (now - 23 * HOUR, "in", "delivered"),
            (now - 23 * HOUR, "out", "failed"),
            (now - 2 * HOUR, "in", "read"),
            (now - 2 * HOUR, "in", "pending"),
            (now - 30, "out", "delivered"),
        ],
    )
    traffic = await stats.traffic(db, today, now)
    assert len(traffic.hours) == 24
    assert traffic.hours[-1].start == now - now % HOUR
    by_start = {h.start: (h.delivered, h.failed) for h in traffic.hours}
    assert by_start[(now - 23 * HOUR) // HOUR * HOUR] == (1, 1)
    assert by_start[(now - 2 * HOUR) // HOUR * HOUR] == (1, 0)  # read counts, pending not
    assert by_start[now - now % HOUR] == (1, 0)
    assert sum(d + f for d, f in by_start.values()) == 4  # not the pending one, nor 48 h ago
    inbound = [now - 23 * HOUR, now - 2 * HOUR, now - 2 * HOUR]
    outbound = [now - 23 * HOUR, now - 30]
    assert traffic.inbound == sum(at >= today for at in inbound)
    assert traffic.outbound == sum(at >= today for at in outbound)
    assert traffic.outbound >= 1 and traffic.inbound >= 2  # the window is not empty
