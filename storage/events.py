"""The event log: live-chat events that are not messages, kept for admins and subscribers."""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from storage.database import Database


def record(
    conn: sqlite3.Connection,
    *,
    livechat_id: str,
    name: str,
    payload: dict[str, Any],
    now: float,
    session_id: int | None = None,
) -> int:
    row = conn.execute(
        """INSERT INTO events (uid, livechat_id, name, session_id, payload, received_at)
           VALUES (?, ?, ?, ?, ?, ?) RETURNING id""",
        (
            uuid.uuid4().hex,
            livechat_id,
            name,
            session_id,
            json.dumps(payload, ensure_ascii=False),
            now,
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


async def list_events(
    db: Database, livechat_id: str | None, name: str | None, limit: int, *, unlinked: bool = False
) -> list[dict[str, Any]]:
    """Events newest first; `unlinked`: only those linked to no session."""
    rows = await db.fetch_all(
        """SELECT id, livechat_id, name, session_id, payload, received_at FROM events
           WHERE (?1 IS NULL OR livechat_id = ?1) AND (?2 IS NULL OR name = ?2)
             AND (NOT ?4 OR session_id IS NULL)
           ORDER BY id DESC LIMIT ?3""",
        (livechat_id, name, limit, unlinked),
    )
    return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]


async def recent_names(db: Database, window: int = 10_000) -> list[str]:
    """The names among the latest `window` events, sorted: a filter's choices, read in
    bounded time however long the log is."""
    rows = await db.fetch_all(
        """SELECT DISTINCT name FROM (SELECT name FROM events ORDER BY id DESC LIMIT ?)
           ORDER BY name""",
        (window,),
    )
    return [r[0] for r in rows]


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    uid: str
    livechat_id: str
    name: str
    session_id: int | None
    payload: dict[str, Any]
    received_at: float
    channel_id: str | None
    external_chat_id: str | None


async def read(db: Database, event_id: int) -> EventRow | None:
    row = await db.fetch_one(
        """SELECT e.*, c.channel_id, c.external_chat_id FROM events e
           LEFT JOIN sessions s ON s.id = e.session_id LEFT JOIN chats c ON c.id = s.chat_id
           WHERE e.id = ?""",
        (event_id,),
    )
    if row is None:
        return None
    return EventRow(
        id=row["id"],
        uid=row["uid"] or f"e{row['id']}",
        livechat_id=row["livechat_id"],
        name=row["name"],
        session_id=row["session_id"],
        payload=json.loads(row["payload"]),
        received_at=row["received_at"],
        channel_id=row["channel_id"],
        external_chat_id=row["external_chat_id"],
    )
