"""The durable outbox: every outside call is a row here, committed before it is attempted.

Items in one lane (one chat, one direction) are delivered strictly one after another in id
order: only the oldest pending item of a lane is ever claimable. Items for a messenger channel
are held while that channel is not active. Delivered items are deleted; dead ones stay, visible
to the admin.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from storage.database import Database


# No slots: it crosses the socket to the delivery process, where slots pickle slowly.
@dataclass(frozen=True)
class OutboxItem:
    id: int
    kind: str
    lane: str
    channel_id: str | None
    ref_id: int | None
    payload: dict[str, Any]
    attempts: int
    created_at: float


def _item(row: sqlite3.Row) -> OutboxItem:
    return OutboxItem(
        id=row["id"],
        kind=row["kind"],
        lane=row["lane"],
        channel_id=row["channel_id"],
        ref_id=row["ref_id"],
        payload=json.loads(row["payload"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
    )


def enqueue(
    conn: sqlite3.Connection,
    *,
    kind: str,
    lane: str,
    now: float,
    ref_id: int | None = None,
    channel_id: str | None = None,
    payload: dict[str, Any] | None = None,
) -> int:
    row = conn.execute(
        """INSERT INTO outbox (kind, lane, channel_id, ref_id, payload, next_attempt_at,
                               created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id""",
        (kind, lane, channel_id, ref_id, json.dumps(payload or {}), now, now, now),
    ).fetchone()
    assert row is not None
    return int(row[0])


def claim_ready(
    conn: sqlite3.Connection, now: float, limit: int, busy: Container[int], n_busy: int
) -> list[OutboxItem]:
    """Heads of lanes that are due and not held, oldest first, skipping those in flight.

    Run on the writer, in turn with the settles: a reader's snapshot could still show an item
    that a settle has just completed, and it would be sent twice.
    """
    rows = conn.execute(
        """SELECT o.* FROM outbox o
           LEFT JOIN channels c ON c.id = o.channel_id
           WHERE o.status = 'pending' AND o.next_attempt_at <= ?
             AND (o.channel_id IS NULL OR c.state = 'active')
             AND o.id = (SELECT min(p.id) FROM outbox p
                         WHERE p.lane = o.lane AND p.status = 'pending')
           ORDER BY o.id LIMIT ?""",
        (now, limit + n_busy),
    ).fetchall()
    return [item for item in map(_item, rows) if item.id not in busy][:limit]


async def next_due(db: Database) -> float | None:
    row = await db.fetch_one(
        """SELECT min(o.next_attempt_at) FROM outbox o LEFT JOIN channels c ON c.id = o.channel_id
           WHERE o.status = 'pending' AND (o.channel_id IS NULL OR c.state = 'active')"""
    )
    return float(row[0]) if row and row[0] is not None else None


async def lane_idle(db: Database, lane: str) -> bool:
    """Nothing pending in the lane (in flight, waiting for a retry or held)."""
    row = await db.fetch_one(
        "SELECT 1 FROM outbox WHERE lane = ? AND status = 'pending' LIMIT 1", (lane,)
    )
    return row is None


# Each settle returns whether it found the item still pending: follow-ups run only then, so
# nothing is ever settled twice.


def complete(conn: sqlite3.Connection, item_id: int) -> bool:
    cur = conn.execute("DELETE FROM outbox WHERE id = ? AND status = 'pending'", (item_id,))
    return cur.rowcount > 0


def reschedule(
    conn: sqlite3.Connection, item_id: int, *, attempts: int, at: float, error: str, now: float
) -> bool:
    cur = conn.execute(
        """UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, updated_at = ?
           WHERE id = ? AND status = 'pending'""",
        (attempts, at, error, now, item_id),
    )
    return cur.rowcount > 0


def bury(conn: sqlite3.Connection, item_id: int, *, attempts: int, error: str, now: float) -> bool:
    cur = conn.execute(
        """UPDATE outbox SET status = 'dead', attempts = ?, last_error = ?, updated_at = ?
           WHERE id = ? AND status = 'pending'""",
        (attempts, error, now, item_id),
    )
    return cur.rowcount > 0


def release_channel(conn: sqlite3.Connection, channel_id: str, now: float) -> int:
    """A channel became active: its held items are due now, with a fresh count of attempts."""
    cur = conn.execute(
        """UPDATE outbox SET next_attempt_at = ?, attempts = 0
           WHERE channel_id = ? AND status = 'pending'""",
        (now, channel_id),
    )
    return cur.rowcount


async def pending_by_channel(db: Database) -> dict[str, int]:
    rows = await db.fetch_all(
        """SELECT channel_id, count(*) FROM outbox
           WHERE status = 'pending' AND channel_id IS NOT NULL GROUP BY channel_id"""
    )
    return {r[0]: r[1] for r in rows}


async def list_items(db: Database, status: str, limit: int) -> list[dict[str, Any]]:
    rows = await db.fetch_all(
        """SELECT id, kind, lane, channel_id, ref_id, status, attempts, next_attempt_at,
                  created_at, updated_at, last_error
           FROM outbox WHERE status = ? ORDER BY id LIMIT ?""",
        (status, limit),
    )
    return [dict(r) for r in rows]


async def depth(db: Database) -> dict[str, Any]:
    row = await db.fetch_one(
        """SELECT count(*) AS pending, min(created_at) AS oldest FROM outbox
           WHERE status = 'pending'"""
    )
    dead = await db.fetch_one("SELECT count(*) FROM outbox WHERE status = 'dead'")
    return {
        "pending": row["pending"] if row else 0,
        "oldest_created_at": row["oldest"] if row else None,
        "dead": dead[0] if dead else 0,
    }


async def items_of_session(
    db: Database, session_id: int, kinds: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """The outbox items still carrying a session's messages, by message uid: `{id, kind,
    status, attempts, next_attempt_at, last_error}`. A delivered item is deleted, so a message
    missing here has none (delivered, or never sent). `kinds`: the kinds that carry a message."""
    marks = ", ".join("?" * len(kinds))
    rows = await db.fetch_all(
        f"""SELECT m.uid, o.id, o.kind, o.status, o.attempts, o.next_attempt_at, o.last_error
            FROM outbox o JOIN messages m ON m.id = o.ref_id
            WHERE o.kind IN ({marks}) AND m.session_id = ?""",  # noqa: S608 (placeholders only)
        (*kinds, session_id),
    )
    return {r["uid"]: {k: r[k] for k in r.keys() if k != "uid"} for r in rows}  # noqa: SIM118
