"""The durable outbox: every outside call is a row here, committed before it is attempted.

Items in one lane (one chat, one direction) are delivered strictly one after another in id
order: only the oldest pending item of a lane is ever claimable. Items for a messenger channel
are held while that channel is not active. Delivered items are deleted; dead ones (dead
letters) stay, visible to the admin, until an admin retries or purges them.
"""

from __future__ import annotations

import json
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from bridge.core import outbox_kinds
from bridge.core.outbox_kinds import EVENT_KINDS, MESSAGE_KINDS
from storage import leases
from storage.notify import OUTBOX, notify
from storage.port import Connection, Dialect, Row, Store, json_text, matching

# Outbox kinds, as stored in the `kind` column. What each one is, and the groups derived from
# that (MESSAGE_KINDS, EVENT_KINDS), are decided in `bridge.core.outbox_kinds`.
TO_LIVECHAT = outbox_kinds.TO_LIVECHAT.name
TO_MESSENGER = outbox_kinds.TO_MESSENGER.name
OUTCOME = outbox_kinds.OUTCOME.name
READ = outbox_kinds.READ.name
TO_SUBSCRIBER = outbox_kinds.TO_SUBSCRIBER.name
KEPT_REPLY = outbox_kinds.KEPT_REPLY.name


def _sql_list(kinds: tuple[str, ...]) -> str:
    return ", ".join(f"'{kind}'" for kind in kinds)  # constants above, never outside input


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


def _item(row: Row) -> OutboxItem:
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
    conn: Connection,
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
    notify(conn, OUTBOX)  # other replicas' workers wake (PostgreSQL), once per transaction
    return int(row["id"])


_CLAIM = """SELECT o.* FROM outbox o
           LEFT JOIN channels c ON c.id = o.channel_id
           WHERE o.status = 'pending' AND o.next_attempt_at <= ?
             AND (o.channel_id IS NULL OR c.state = 'active')
             AND o.id = (SELECT min(p.id) FROM outbox p
                         WHERE p.lane = o.lane AND p.status = 'pending'){leased}
           ORDER BY o.id LIMIT ?"""
_CLAIM_ONE_PROCESS = _CLAIM.format(leased="")
# PostgreSQL, several replicas claiming at once: lanes another replica holds are left out
# before the limit (the lease taken after decides; this keeps them from filling the batch),
# and rows another's open claim has locked are passed over, not waited for.
_CLAIM_LEASED = (
    _CLAIM.format(  # noqa: S608 (constants only)
        leased=f"""
             AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.name = '{leases.LANE}' || o.lane
                 AND l.holder <> ? AND l.expires_at > {leases.server_now("postgres")})"""  # noqa: S608
    )
    + " FOR UPDATE OF o SKIP LOCKED"
)


def claim_ready(
    conn: Connection,
    now: float,
    limit: int,
    busy: Container[int],
    n_busy: int,
    *,
    holder: str = "",
    lease_seconds: float = 0.0,
) -> list[OutboxItem]:
    """Heads of lanes that are due and not held, oldest first, skipping those in flight.

    Run on the writer, in turn with the settles: a reader's snapshot could still show an item
    that a settle has just completed, and it would be sent twice.

    PostgreSQL (several replicas): each item claimed comes with its lane's lease, taken for
    `holder` for `lease_seconds` (storage/leases.py): a lane whose head another replica has in
    flight is passed over until that replica settles it (and lets go) or its lease expires
    (it died: the head is claimed again, and performed again with the same ids). `busy` are
    the caller's own items in flight, whose leases it holds.
    """
    if conn.dialect != "postgres":
        rows = conn.execute(_CLAIM_ONE_PROCESS, (now, limit + n_busy)).fetchall()
        return [item for item in map(_item, rows) if item.id not in busy][:limit]
    return claim_leased(
        conn, now, limit, busy, n_busy, holder=holder, lease_seconds=lease_seconds
    ).items


@dataclass(frozen=True)
class LeasedClaim:
    """What one replica of several claimed: the items, and the lanes among theirs it took over
    from another replica whose lease had expired (lane -> that replica's id, `host:pid:random`):
    their heads were in flight there, and are performed again, with the same ids."""

    items: list[OutboxItem]
    taken_over: dict[str, str]


def claim_leased(
    conn: Connection,
    now: float,
    limit: int,
    busy: Container[int],
    n_busy: int,
    *,
    holder: str,
    lease_seconds: float,
) -> LeasedClaim:
    """`claim_ready` on PostgreSQL, for `holder`, saying which lanes it took over."""
    rows = conn.execute(_CLAIM_LEASED, (now, holder, limit + n_busy)).fetchall()
    items = [item for item in map(_item, rows) if item.id not in busy][:limit]
    taken = leases.acquire(conn, {leases.lane_lease(i.lane) for i in items}, holder, lease_seconds)
    claimed = [item for item in items if leases.lane_lease(item.lane) in taken]
    taken_over = {
        item.lane: previous
        for item in claimed
        if (previous := taken[leases.lane_lease(item.lane)]) is not None
    }
    return LeasedClaim(claimed, taken_over)


async def next_due(db: Store) -> float | None:
    row = await db.fetch_one(
        """SELECT min(o.next_attempt_at) AS due
           FROM outbox o LEFT JOIN channels c ON c.id = o.channel_id
           WHERE o.status = 'pending' AND (o.channel_id IS NULL OR c.state = 'active')"""
    )
    return float(row["due"]) if row and row["due"] is not None else None


async def lane_idle(db: Store, lane: str) -> bool:
    """Nothing pending in the lane (in flight, waiting for a retry or held)."""
    row = await db.fetch_one(
        "SELECT 1 FROM outbox WHERE lane = ? AND status = 'pending' LIMIT 1", (lane,)
    )
    return row is None


def has_pending(conn: Connection, *, lane: str, kind: str, ref_id: int) -> bool:
    """An item of this kind for this row waits in the lane (in flight, due or held)."""
    row = conn.execute(
        """SELECT 1 FROM outbox WHERE lane = ? AND status = 'pending' AND kind = ? AND ref_id = ?
           LIMIT 1""",
        (lane, kind, ref_id),
    ).fetchone()
    return row is not None


def dead_progress(conn: Connection, *, ref_id: int, kind: str) -> int:
    """How many parts of a multi-part delivery reached the receiver before this row's dead item
    of `kind` was given up (its payload's `parts_done`; 0 when none is dead)."""
    parts_done = json_text(conn.dialect, "payload", "parts_done")
    row = conn.execute(
        f"""SELECT max(coalesce(CAST({parts_done} AS INTEGER), 0)) AS parts_done FROM outbox
           WHERE status = 'dead' AND ref_id = ? AND kind = ?""",  # noqa: S608 (constants)
        (ref_id, kind),
    ).fetchone()
    return int(row["parts_done"] or 0) if row else 0


def drop_dead(conn: Connection, *, ref_id: int, kinds: tuple[str, ...]) -> int:
    """Delete the dead items of these kinds for this row (superseded: the row was queued
    again); return how many there were."""
    marks = ", ".join("?" * len(kinds))
    cur = conn.execute(
        f"""DELETE FROM outbox WHERE status = 'dead' AND ref_id = ?
             AND kind IN ({marks})""",  # noqa: S608 (placeholders only)
        (ref_id, *kinds),
    )
    return cur.rowcount


# Each settle returns whether it found the item still pending: follow-ups run only then, so
# nothing is ever settled twice.


def complete(conn: Connection, item_id: int) -> bool:
    cur = conn.execute("DELETE FROM outbox WHERE id = ? AND status = 'pending'", (item_id,))
    return cur.rowcount > 0


def reschedule(
    conn: Connection, item_id: int, *, attempts: int, at: float, error: str, now: float
) -> bool:
    cur = conn.execute(
        """UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?, updated_at = ?
           WHERE id = ? AND status = 'pending'""",
        (attempts, at, error, now, item_id),
    )
    return cur.rowcount > 0


def bury(conn: Connection, item_id: int, *, attempts: int, error: str, now: float) -> bool:
    cur = conn.execute(
        """UPDATE outbox SET status = 'dead', attempts = ?, last_error = ?, updated_at = ?
           WHERE id = ? AND status = 'pending'""",
        (attempts, error, now, item_id),
    )
    return cur.rowcount > 0


def record_parts_done(conn: Connection, item_id: int, parts_done: int) -> None:
    """A multi-part delivery got this far: kept in the item's payload (`parts_done`), where
    its next attempt starts."""
    # Read, changed and written back (JSON functions differ by database); in one transaction.
    row = conn.execute(
        "SELECT payload FROM outbox WHERE id = ? AND status = 'pending'", (item_id,)
    ).fetchone()
    if row is None:
        return
    payload = {**json.loads(row["payload"]), "parts_done": parts_done}
    conn.execute(
        "UPDATE outbox SET payload = ? WHERE id = ? AND status = 'pending'",
        (json.dumps(payload), item_id),
    )


def release_channel(conn: Connection, channel_id: str, now: float) -> int:
    """A channel became active: its held items are due now, with a fresh count of attempts."""
    cur = conn.execute(
        """UPDATE outbox SET next_attempt_at = ?, attempts = 0
           WHERE channel_id = ? AND status = 'pending'""",
        (now, channel_id),
    )
    if cur.rowcount:
        notify(conn, OUTBOX)
    return cur.rowcount


async def pending_by_channel(db: Store) -> dict[str, int]:
    rows = await db.fetch_all(
        """SELECT channel_id, count(*) AS n FROM outbox
           WHERE status = 'pending' AND channel_id IS NOT NULL GROUP BY channel_id"""
    )
    return {r["channel_id"]: r["n"] for r in rows}


# The messenger channel and the live chat an item belongs to, whatever its kind: a message's
# chat, an event's live chat (and its session's chat), or what a kept reply's payload names.
_SCOPE_FROM = f"""
    FROM outbox o
    LEFT JOIN messages m ON m.id = o.ref_id AND o.kind IN ({_sql_list(MESSAGE_KINDS)})
    LEFT JOIN chats c ON c.id = m.chat_id
    LEFT JOIN events e ON e.id = o.ref_id AND o.kind IN ({_sql_list(EVENT_KINDS)})
    LEFT JOIN sessions es ON es.id = e.session_id
    LEFT JOIN chats ec ON ec.id = es.chat_id"""


def _channel(dialect: Dialect) -> str:
    payload = json_text(dialect, "o.payload", "channel_id")
    return f"coalesce(o.channel_id, c.channel_id, ec.channel_id, {payload})"


def _livechat(dialect: Dialect) -> str:
    return (
        f"coalesce(c.livechat_id, e.livechat_id, {json_text(dialect, 'o.payload', 'livechat_id')})"
    )


@dataclass(frozen=True, slots=True)
class Scope:
    """Which items an admin action or listing is about: one item, or every item of a messenger
    channel and/or a live chat; all of them when every field is None."""

    item_id: int | None = None
    channel: str | None = None
    livechat: str | None = None

    def where(self, dialect: Dialect, status: str, after: int) -> tuple[str, list[object]]:
        """The condition on `_SCOPE_FROM`'s rows, and its parameters."""
        where, params = matching(
            {
                "o.id": self.item_id,
                _channel(dialect): self.channel,
                _livechat(dialect): self.livechat,
            }
        )
        return f"o.status = ? AND o.id > ? AND {where}", [status, after, *params]


async def list_items(
    db: Store, status: str, limit: int, scope: Scope | None = None
) -> list[dict[str, Any]]:
    """Items oldest first, with the channel and live chat they belong to and their payload."""
    where, params = (scope or Scope()).where(db.dialect, status, 0)
    rows = await db.fetch_all(
        f"""SELECT o.id, o.kind, o.lane, o.channel_id, o.ref_id, o.status, o.attempts,
                   o.next_attempt_at, o.created_at, o.updated_at, o.last_error, o.payload,
                   {_channel(db.dialect)} AS channel, {_livechat(db.dialect)} AS livechat
            {_SCOPE_FROM} WHERE {where} ORDER BY o.id LIMIT ?""",
        (*params, limit),
    )
    return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]


# --- dead letters ---------------------------------------------------------------------------


def status_of(conn: Connection, item_id: int) -> str | None:
    row = conn.execute("SELECT status FROM outbox WHERE id = ?", (item_id,)).fetchone()
    return str(row["status"]) if row else None


def dead_items(
    conn: Connection, scope: Scope, after: int, limit: int
) -> list[tuple[OutboxItem, str | None]]:
    """The next dead items of `scope` after id `after`, oldest first, with their last error."""
    where, params = scope.where(conn.dialect, "dead", after)
    rows = conn.execute(
        f"SELECT o.* {_SCOPE_FROM} WHERE {where} ORDER BY o.id LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [(_item(r), r["last_error"]) for r in rows]


def bury_new(
    conn: Connection,
    *,
    kind: str,
    lane: str,
    payload: dict[str, Any],
    error: str,
    now: float,
    channel_id: str | None = None,
    ref_id: int | None = None,
) -> int:
    """A dead letter from the start: something that cannot be delivered, kept for an admin."""
    row = conn.execute(
        """INSERT INTO outbox (kind, lane, channel_id, ref_id, payload, status, next_attempt_at,
                               created_at, updated_at, last_error)
           VALUES (?, ?, ?, ?, ?, 'dead', ?, ?, ?, ?) RETURNING id""",
        (kind, lane, channel_id, ref_id, json.dumps(payload), now, now, now, error),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def find_kept_reply(conn: Connection, lane: str, message_id: str) -> int | None:
    """The id of the dead letter of kind `KEPT_REPLY` in `lane` that holds the live chat's
    message `message_id`, if any (uses the partial index outbox_kept_replies: hence the
    kind written out)."""
    row = conn.execute(
        f"""SELECT id FROM outbox WHERE kind = 'operator.reply' AND lane = ?
             AND status = 'dead' AND {json_text(conn.dialect, "payload", "message_id")} = ?
           ORDER BY id LIMIT 1""",  # noqa: S608 (constants only)
        (lane, message_id),
    ).fetchone()
    return int(row["id"]) if row else None


def requeue(conn: Connection, item: OutboxItem, now: float) -> int:
    """A dead item pending again: a fresh count of attempts and a fresh give-up horizon, at the
    end of its lane. A new row, not the old one revived: an older id would jump the lane's
    queue, even ahead of an item of the lane in flight, and a lane has one in flight at most.
    Its channel is kept, so a messenger's items stay held while the channel is not active."""
    new_id = enqueue(
        conn,
        kind=item.kind,
        lane=item.lane,
        now=now,
        ref_id=item.ref_id,
        channel_id=item.channel_id,
        payload=item.payload,
    )
    conn.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
    return new_id


def still_dead(conn: Connection, item_id: int, *, error: str, now: float) -> None:
    conn.execute(
        "UPDATE outbox SET last_error = ?, updated_at = ? WHERE id = ? AND status = 'dead'",
        (error, now, item_id),
    )


def purge(conn: Connection, item_ids: list[int]) -> int:
    cur = conn.executemany(
        "DELETE FROM outbox WHERE id = ? AND status = 'dead'", [(i,) for i in item_ids]
    )
    return cur.rowcount


async def depth(db: Store) -> dict[str, Any]:
    row = await db.fetch_one(
        """SELECT count(*) AS pending, min(created_at) AS oldest FROM outbox
           WHERE status = 'pending'"""
    )
    dead = await db.fetch_one("SELECT count(*) AS n FROM outbox WHERE status = 'dead'")
    return {
        "pending": row["pending"] if row else 0,
        "oldest_created_at": row["oldest"] if row else None,
        "dead": dead["n"] if dead else 0,
    }


async def items_of_session(
    db: Store, session_id: int, kinds: tuple[str, ...]
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
