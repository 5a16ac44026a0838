"""Messages in both directions, each with the bridge's own stable id (`uid`)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from bridge.core.model import FileRef, UserProfile
from storage.chats import ChatRow
from storage.port import Connection, Row, Store, transaction_lock


@dataclass(frozen=True, slots=True)
class MessageRow:
    id: int
    uid: str
    session_id: int
    chat_id: int
    direction: str
    external_id: str | None
    remote_id: str | None
    user_id: str | None
    operator_id: str | None
    operator_name: str | None
    text: str
    files: tuple[FileRef, ...]
    status: str
    created_at: float


def new_uid() -> str:
    return uuid.uuid4().hex


def files_list(files: tuple[FileRef, ...]) -> list[dict[str, Any]]:
    """Files as stored: [{"name", "url", "size"}]."""
    return [{"name": f.name, "url": f.url, "size": f.size} for f in files]


def files_json(files: tuple[FileRef, ...]) -> str:
    return json.dumps(files_list(files))


def files_from(stored: list[dict[str, Any]]) -> tuple[FileRef, ...]:
    return tuple(FileRef(f["name"], f["url"], f.get("size")) for f in stored)


def _files(text: str) -> tuple[FileRef, ...]:
    return files_from(json.loads(text))


def _row(row: Row) -> MessageRow:
    return MessageRow(
        id=row["id"],
        uid=row["uid"],
        session_id=row["session_id"],
        chat_id=row["chat_id"],
        direction=row["direction"],
        external_id=row["external_id"],
        remote_id=row["remote_id"],
        user_id=row["user_id"],
        operator_id=row["operator_id"],
        operator_name=row["operator_name"],
        text=row["text"],
        files=_files(row["files"]),
        status=row["status"],
        created_at=row["created_at"],
    )


def seen(conn: Connection, dedupe_key: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM messages WHERE dedupe_key = ?", (dedupe_key,)).fetchone()
        is not None
    )


@dataclass(frozen=True, slots=True)
class Stored:
    """What a repeat of a message is compared with: the message first stored under its
    idempotency key, with the messenger's id of the chat it came from."""

    id: int
    uid: str
    session_id: int
    chat_id: int
    external_chat_id: str
    text: str
    files: tuple[FileRef, ...]
    status: str  # pending | delivered | failed | read


def stored(conn: Connection, dedupe_key: str) -> Stored | None:
    """The message stored under `dedupe_key`, or None (one lookup on its UNIQUE index)."""
    row = conn.execute(
        """SELECT m.id, m.uid, m.session_id, m.chat_id, c.external_chat_id, m.text, m.files,
                  m.status
           FROM messages m JOIN chats c ON c.id = m.chat_id WHERE m.dedupe_key = ?""",
        (dedupe_key,),
    ).fetchone()
    if row is None:
        return None
    return Stored(
        row["id"],
        row["uid"],
        row["session_id"],
        row["chat_id"],
        row["external_chat_id"],
        row["text"],
        _files(row["files"]),
        row["status"],
    )


def requeue(conn: Connection, message_id: int, session_id: int) -> None:
    """A message whose delivery failed for good is to be delivered again, in `session_id`
    (the chat's open session: the one it failed in may have closed since)."""
    conn.execute(
        "UPDATE messages SET status = 'pending', session_id = ? WHERE id = ?",
        (session_id, message_id),
    )


def insert(
    conn: Connection,
    *,
    uid: str,
    dedupe_key: str | None,
    session_id: int,
    chat_id: int,
    direction: str,
    text: str,
    files: tuple[FileRef, ...],
    now: float,
    external_id: str | None = None,
    remote_id: str | None = None,
    user_id: str | None = None,
    operator_id: str | None = None,
    operator_name: str | None = None,
) -> int:
    row = conn.execute(
        """INSERT INTO messages (uid, dedupe_key, session_id, chat_id, direction, external_id,
                                 remote_id, user_id, operator_id, operator_name, text, files,
                                 status, created_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?) RETURNING id""",
        (
            uid,
            dedupe_key,
            session_id,
            chat_id,
            direction,
            external_id,
            remote_id,
            user_id,
            operator_id,
            operator_name,
            text,
            files_json(files),
            now,
        ),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def find_inbound(conn: Connection, chat_id: int, live_chat_id: str) -> MessageRow | None:
    """A user's message named by the live chat: by the id it gave it, or by our uid."""
    row = conn.execute(
        """SELECT * FROM messages WHERE direction = 'in'
               AND ((chat_id = ? AND remote_id = ?) OR uid = ?)
           ORDER BY id LIMIT 1""",
        (chat_id, live_chat_id, live_chat_id),
    ).fetchone()
    return _row(row) if row else None


def set_status(
    conn: Connection, message_id: int, status: str, remote_id: str | None = None
) -> None:
    conn.execute(
        "UPDATE messages SET status = ?, remote_id = coalesce(?, remote_id) WHERE id = ?",
        (status, remote_id, message_id),
    )


async def read_status(db: Store, message_id: int) -> str | None:
    """A message's status now (pending, delivered, failed, read), or None if not stored."""
    row = await db.fetch_one("SELECT status FROM messages WHERE id = ?", (message_id,))
    return None if row is None else str(row["status"])


def mark_read_by_uid(conn: Connection, channel_id: str, uid: str) -> bool:
    cur = conn.execute(
        """UPDATE messages SET status = 'read'
           WHERE uid = ? AND direction = 'out'
             AND chat_id IN (SELECT id FROM chats WHERE channel_id = ?)""",
        (uid, channel_id),
    )
    return cur.rowcount > 0


async def read_with_chat(
    db: Store, message_id: int
) -> tuple[MessageRow, ChatRow, tuple[UserProfile, float | None] | None] | None:
    """A message, its chat and its sender's cached profile, in one read (the delivery path)."""
    row = await db.fetch_one(
        """SELECT m.*, c.channel_id, c.external_chat_id, c.name AS chat_name,
                  c.user_id AS chat_user_id, c.client_key, c.livechat_id, c.customer_id,
                  c.customer_tag, c.url_key, u.user_id AS u_user_id, u.username, u.phone, u.avatar,
                  u.fetched_at
           FROM messages m JOIN chats c ON c.id = m.chat_id
           LEFT JOIN users u ON u.channel_id = c.channel_id
                            AND u.user_id = coalesce(m.user_id, c.user_id)
           WHERE m.id = ?""",
        (message_id,),
    )
    if row is None:
        return None
    chat = ChatRow(
        row["chat_id"],
        row["channel_id"],
        row["external_chat_id"],
        row["chat_name"],
        row["chat_user_id"],
        row["client_key"],
        row["livechat_id"],
        row["customer_id"],
        row["customer_tag"],
        row["url_key"],
    )
    user = None
    if row["u_user_id"] is not None:
        profile = UserProfile(row["u_user_id"], row["username"], row["phone"], row["avatar"])
        user = (profile, row["fetched_at"])
    return _row(row), chat, user


def keep_orphan(
    conn: Connection,
    *,
    livechat_id: str,
    customer_id: str,
    message_id: str | None,
    text: str,
    files: tuple[FileRef, ...],
    operator_id: str | None,
    operator_name: str | None,
    now: float,
) -> None:
    conn.execute(
        """INSERT INTO orphans (livechat_id, customer_id, message_id, text, files, operator_id,
                                operator_name, received_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING""",
        (
            livechat_id,
            customer_id,
            message_id,
            text,
            files_json(files),
            operator_id,
            operator_name,
            now,
        ),
    )


def lock_orphans(conn: Connection, livechat_id: str, customer_id: str) -> bool:
    """Take, until this transaction ends, the lock on keeping and taking a customer's orphans.

    Replicas on PostgreSQL (READ COMMITTED): one replica's settle links a chat to the customer
    and takes its orphans, while another's hook finds no chat for that customer (the link is
    not committed yet) and keeps the reply as an orphan; unserialised, the take misses the
    orphan, which would wait until `retention.orphan_after` made it a dead letter. Both take
    this lock first (`take_orphans` itself; the hook before it looks for the chat again), so
    the hook either sees the link or keeps its orphan before the take runs. Returns whether a
    lock was taken (see `storage.port.transaction_lock`)."""
    return transaction_lock(conn, f"orphans:{livechat_id}:{customer_id}")


def take_orphans(
    conn: Connection, livechat_id: str, customer_id: str
) -> list[tuple[str | None, str, tuple[FileRef, ...], str | None, str | None]]:
    """The orphans of a customer in arrival order, removed: (message id, text, files,
    operator id, operator name)."""
    lock_orphans(conn, livechat_id, customer_id)
    rows = conn.execute(
        """DELETE FROM orphans WHERE livechat_id = ? AND customer_id = ?
           RETURNING id, message_id, text, files, operator_id, operator_name""",
        (livechat_id, customer_id),
    ).fetchall()
    rows.sort(key=lambda r: r["id"])  # RETURNING promises no order
    return [
        (r["message_id"], r["text"], _files(r["files"]), r["operator_id"], r["operator_name"])
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class Orphan:
    livechat_id: str
    customer_id: str
    message_id: str | None
    text: str
    files: tuple[FileRef, ...]
    operator_id: str | None
    operator_name: str | None
    received_at: float


def _orphan(r: Row) -> Orphan:
    return Orphan(
        r["livechat_id"],
        r["customer_id"],
        r["message_id"],
        r["text"],
        _files(r["files"]),
        r["operator_id"],
        r["operator_name"],
        r["received_at"],
    )


async def list_orphans(db: Store, limit: int = 1000) -> list[Orphan]:
    """The operator messages kept until their customer is linked, oldest first."""
    rows = await db.fetch_all("SELECT * FROM orphans ORDER BY id LIMIT ?", (limit,))
    return [_orphan(r) for r in rows]


def take_expired_orphans(conn: Connection, cutoff: float, limit: int) -> list[Orphan]:
    """Up to `limit` orphans received before `cutoff`, oldest first, removed."""
    rows = conn.execute(
        """DELETE FROM orphans WHERE id IN (
               SELECT id FROM orphans WHERE received_at < ? ORDER BY id LIMIT ?)
           RETURNING *""",
        (cutoff, limit),
    ).fetchall()
    rows.sort(key=lambda r: r["id"])  # RETURNING promises no order
    return [_orphan(r) for r in rows]
