"""Retention: what pruning deletes, one small batch per call (each its own short write).

Every step is `step(conn, *, cutoff, after, limit) -> (rows pruned, next cursor)`: it looks at
up to `limit` rows after id `after`, prunes those older than `cutoff` (Unix time), and returns
the cursor to go on from, or None when nothing older is left. Rows are walked in id order,
which is nearly time order, so a walk stops at the first row younger than the cutoff.

Nothing an outbox item refers to is pruned, pending or dead: a message, an event, or the
session and chat holding such a message.
"""

from __future__ import annotations

from itertools import takewhile

from bridge.core.outbox_kinds import EVENT_KINDS, MESSAGE_KINDS
from storage.port import Connection

BODY_MARK = "message_bodies"


def _marks(kinds: tuple[str, ...]) -> str:
    return ", ".join("?" for _ in kinds)


# Only "?" placeholders are formatted into these.
_IN_OUTBOX = "SELECT 1 FROM outbox WHERE ref_id = ? AND kind IN ({}) LIMIT 1"
_SESSION_IN_OUTBOX = f"""SELECT 1 FROM messages m JOIN outbox o ON o.ref_id = m.id
    WHERE m.session_id = ? AND o.kind IN ({_marks(MESSAGE_KINDS)}) LIMIT 1"""  # noqa: S608


def _in_outbox(conn: Connection, ref_id: int, kinds: tuple[str, ...]) -> bool:
    sql = _IN_OUTBOX.format(_marks(kinds))
    return conn.execute(sql, (ref_id, *kinds)).fetchone() is not None


def _mark(conn: Connection, name: str) -> int:
    row = conn.execute("SELECT last_id FROM retention_marks WHERE name = ?", (name,)).fetchone()
    return int(row["last_id"]) if row else 0


def _set_mark(conn: Connection, name: str, last_id: int) -> None:
    conn.execute(
        """INSERT INTO retention_marks (name, last_id) VALUES (?, ?)
           ON CONFLICT (name) DO UPDATE SET last_id = excluded.last_id""",
        (name, last_id),
    )


def prune_bodies(
    conn: Connection, *, cutoff: float, after: int, limit: int
) -> tuple[int, int | None]:
    """Blank the text and files of messages created before `cutoff` that are done (delivered,
    read, or failed with no dead item kept): the row, its ids and its dedupe key stay.

    Goes on from a mark kept in the database, not from `after`: blanked rows stay in the
    table, and walking them again on every pass would cost more and more. A row passed over
    while still in the outbox keeps its body until the row itself is pruned."""
    start = _mark(conn, BODY_MARK)
    rows = conn.execute(
        "SELECT id, created_at, status FROM messages WHERE id > ? ORDER BY id LIMIT ?",
        (start, limit),
    ).fetchall()
    old = list(takewhile(lambda r: r["created_at"] < cutoff, rows))
    if not old:
        return 0, None
    done = [
        (r["id"],)
        for r in old
        if r["status"] in ("delivered", "read", "failed")
        and not _in_outbox(conn, r["id"], MESSAGE_KINDS)
    ]
    cur = conn.executemany(
        """UPDATE messages SET text = '', files = '[]'
           WHERE id = ? AND (text != '' OR files != '[]')""",
        done,
    )
    _set_mark(conn, BODY_MARK, old[-1]["id"])
    return max(cur.rowcount, 0), old[-1]["id"] if len(old) == limit else None


def prune_messages(
    conn: Connection, *, cutoff: float, after: int, limit: int
) -> tuple[int, int | None]:
    """Delete messages created before `cutoff`, whatever their session: after this, a resend
    with the same `externalMessageId` is no longer recognised as a repeat."""
    rows = conn.execute(
        "SELECT id, created_at FROM messages WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
    ).fetchall()
    old = list(takewhile(lambda r: r["created_at"] < cutoff, rows))
    if not old:
        return 0, None
    cur = conn.executemany(
        "DELETE FROM messages WHERE id = ?",
        [(r["id"],) for r in old if not _in_outbox(conn, r["id"], MESSAGE_KINDS)],
    )
    return max(cur.rowcount, 0), old[-1]["id"] if len(old) == limit else None


def prune_events(
    conn: Connection, *, cutoff: float, after: int, limit: int
) -> tuple[int, int | None]:
    """Delete events received before `cutoff` that no subscriber delivery still needs."""
    rows = conn.execute(
        "SELECT id, received_at FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
    ).fetchall()
    old = list(takewhile(lambda r: r["received_at"] < cutoff, rows))
    if not old:
        return 0, None
    cur = conn.executemany(
        "DELETE FROM events WHERE id = ?",
        [(r["id"],) for r in old if not _in_outbox(conn, r["id"], EVENT_KINDS)],
    )
    return max(cur.rowcount, 0), old[-1]["id"] if len(old) == limit else None


def prune_sessions(
    conn: Connection, *, cutoff: float, after: int, limit: int
) -> tuple[int, int | None]:
    """Delete sessions closed before `cutoff` with their messages and transcript (their events
    stay, unlinked), then their chat and its user once nothing else refers to them. About
    `limit` rows per call: a session with more messages is deleted over several calls."""
    rows = conn.execute(
        """SELECT id, chat_id, status, opened_at, closed_at FROM sessions WHERE id > ?
           ORDER BY id LIMIT ?""",
        (after, limit),
    ).fetchall()
    budget, pruned, cursor = limit, 0, after
    for row in rows:
        session_id, chat_id, opened_at, closed_at = (
            row["id"],
            row["chat_id"],
            row["opened_at"],
            row["closed_at"],
        )
        if opened_at >= cutoff:  # nor can any later one have closed before the cutoff
            return pruned, None
        if row["status"] == "closed" and closed_at is not None and closed_at < cutoff:
            deleted, finished = _delete_session(conn, session_id, chat_id, budget)
            pruned += deleted
            budget -= deleted
            if not finished:
                return pruned, cursor  # the rest of its messages next time
        cursor = session_id
        if budget <= 0:
            return pruned, cursor
    return pruned, cursor if len(rows) == limit else None


def _delete_session(
    conn: Connection, session_id: int, chat_id: int, budget: int
) -> tuple[int, bool]:
    """(rows deleted, whether the session is gone); kept whole while the outbox needs one of
    its messages."""
    needed = conn.execute(_SESSION_IN_OUTBOX, (session_id, *MESSAGE_KINDS)).fetchone()
    if needed is not None:
        return 0, True
    batch = [
        r["id"]
        for r in conn.execute(
            "SELECT id FROM messages WHERE session_id = ? ORDER BY id LIMIT ?",
            (session_id, max(budget, 1) + 1),
        ).fetchall()
    ]
    more = len(batch) > max(budget, 1)
    batch = batch[: max(budget, 1)]
    conn.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in batch])
    if more:
        return len(batch), False
    conn.execute("UPDATE events SET session_id = NULL WHERE session_id = ?", (session_id,))
    conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
    return len(batch) + 1 + _delete_chat_if_unused(conn, chat_id), True


def _delete_chat_if_unused(conn: Connection, chat_id: int) -> int:
    """The chat, once it has no session and no message left, and its user's cached profile
    when no other chat of the channel has that user."""
    used = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM sessions WHERE chat_id = ?)
               OR EXISTS (SELECT 1 FROM messages WHERE chat_id = ?) AS used""",
        (chat_id, chat_id),
    ).fetchone()
    if used is not None and used["used"]:
        return 0
    row = conn.execute(
        "DELETE FROM chats WHERE id = ? RETURNING channel_id, user_id", (chat_id,)
    ).fetchone()
    if row is None:
        return 0
    cur = conn.execute(
        """DELETE FROM users WHERE channel_id = ? AND user_id = ?
             AND NOT EXISTS (SELECT 1 FROM chats WHERE channel_id = ? AND user_id = ?)""",
        (row["channel_id"], row["user_id"], row["channel_id"], row["user_id"]),
    )
    return 1 + cur.rowcount
