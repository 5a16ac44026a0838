"""The event log: live-chat events that are not messages, kept for admins and subscribers."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from storage.port import Connection, Row, Store, matching


def record(
    conn: Connection,
    *,
    livechat_id: str,
    name: str,
    payload: dict[str, Any],
    now: float,
    session_id: int | None = None,
    unlinked_reason: str | None = None,
    remote_chat_id: str | None = None,
) -> int:
    """Keep one event. `unlinked_reason`: why it linked to no session, for an admin who may
    link it by hand; `remote_chat_id`: the live chat's own chat id it named."""
    row = conn.execute(
        """INSERT INTO events (uid, livechat_id, name, session_id, payload, received_at,
                               unlinked_reason, remote_chat_id)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
        (
            uuid.uuid4().hex,
            livechat_id,
            name,
            session_id,
            json.dumps(payload, ensure_ascii=False),
            now,
            unlinked_reason,
            remote_chat_id,
        ),
    ).fetchone()
    assert row is not None
    return int(row["id"])


async def list_events(
    db: Store, livechat_id: str | None, name: str | None, limit: int, *, unlinked: bool = False
) -> list[dict[str, Any]]:
    """The latest events first; `unlinked`: only those linked to no session (with why, when
    the linking said so)."""
    where, params = matching({"livechat_id": livechat_id, "name": name})
    if unlinked:
        where += " AND session_id IS NULL"
    rows = await db.fetch_all(
        f"""SELECT id, livechat_id, name, session_id, remote_chat_id, unlinked_reason, payload,
                  received_at FROM events
           WHERE {where} ORDER BY id DESC LIMIT ?""",  # noqa: S608 (column names only)
        (*params, limit),
    )
    return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]


async def recent_names(db: Store, window: int = 10_000) -> list[str]:
    """The names among the latest `window` events, sorted: a filter's choices, read in
    bounded time however long the log is."""
    rows = await db.fetch_all(
        """SELECT DISTINCT name FROM (SELECT name FROM events ORDER BY id DESC LIMIT ?) AS recent
           ORDER BY name""",
        (window,),
    )
    return [r["name"] for r in rows]


@dataclass(frozen=True, slots=True)
class Stored:
    """An event as a hand link needs it."""

    id: int
    livechat_id: str
    session_id: int | None
    remote_chat_id: str | None
    payload: dict[str, Any]


def _stored(row: Row) -> Stored:
    return Stored(
        row["id"],
        row["livechat_id"],
        row["session_id"],
        row["remote_chat_id"],
        json.loads(row["payload"]),
    )


def get(conn: Connection, event_id: int) -> Stored | None:
    row = conn.execute(
        "SELECT id, livechat_id, session_id, remote_chat_id, payload FROM events WHERE id = ?",
        (event_id,),
    ).fetchone()
    return None if row is None else _stored(row)


def unlinked_of_remote_chat(
    conn: Connection, livechat_id: str, remote_chat_id: str
) -> list[Stored]:
    """The events that named this live-chat chat id and linked to no session, oldest first."""
    rows = conn.execute(
        """SELECT id, livechat_id, session_id, remote_chat_id, payload FROM events
           WHERE livechat_id = ? AND remote_chat_id = ? AND session_id IS NULL ORDER BY id""",
        (livechat_id, remote_chat_id),
    ).fetchall()
    return [_stored(r) for r in rows]


def set_session(conn: Connection, event_id: int, session_id: int) -> None:
    conn.execute("UPDATE events SET session_id = ? WHERE id = ?", (session_id, event_id))


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


async def read(db: Store, event_id: int) -> EventRow | None:
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
