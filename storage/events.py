"""The event log: live-chat events that are not messages, kept for admins and subscribers."""

from __future__ import annotations

import json
from typing import Any

import aiosqlite

from storage.database import Database


async def record(
    conn: aiosqlite.Connection,
    *,
    livechat_id: str,
    name: str,
    payload: dict[str, Any],
    now: float,
    session_id: int | None = None,
) -> int:
    async with conn.execute(
        """INSERT INTO events (livechat_id, name, session_id, payload, received_at)
           VALUES (?, ?, ?, ?, ?) RETURNING id""",
        (livechat_id, name, session_id, json.dumps(payload, ensure_ascii=False), now),
    ) as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def list_events(
    db: Database, livechat_id: str | None, name: str | None, limit: int
) -> list[dict[str, Any]]:
    rows = await db.fetch_all(
        """SELECT id, livechat_id, name, session_id, payload, received_at FROM events
           WHERE (?1 IS NULL OR livechat_id = ?1) AND (?2 IS NULL OR name = ?2)
           ORDER BY id DESC LIMIT ?3""",
        (livechat_id, name, limit),
    )
    return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]
