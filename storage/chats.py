"""Chats, their users and their sessions: the map between a messenger chat and the live chat."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from bridge.core.model import ChatRef, UserProfile
from storage.port import Connection, Row, Store, matching, transaction_lock


@dataclass(frozen=True, slots=True)
class ChatRow:
    id: int
    channel_id: str
    external_chat_id: str
    name: str | None
    user_id: str
    client_key: str
    livechat_id: str
    customer_id: str | None
    customer_tag: str | None
    url_key: str | None = None  # of the chat's URL sent as JivoChat's sender.url


def _chat(row: Row) -> ChatRow:
    return ChatRow(
        row["id"],
        row["channel_id"],
        row["external_chat_id"],
        row["name"],
        row["user_id"],
        row["client_key"],
        row["livechat_id"],
        row["customer_id"],
        row["customer_tag"],
        row["url_key"],
    )


def client_key(channel_id: str, external_chat_id: str) -> str:
    """The stable key a live chat knows a messenger chat by; deterministic, so it survives a
    lost database and the live chat keeps one customer per chat."""
    return f"{channel_id}:{external_chat_id}"


def parse_client_key(key: str) -> tuple[str, str] | None:
    """The (channel id, external chat id) a `client_key` was made of, or None when `key` is
    not one of ours. A channel id never holds ':' (`bridge.settings.CHANNEL_ID`), so the first
    ':' splits it; the chat id may hold more."""
    channel_id, sep, external_chat_id = key.partition(":")
    if not sep or not channel_id or not external_chat_id:
        return None
    return channel_id, external_chat_id


def recover_chat(
    conn: Connection,
    *,
    channel_id: str,
    external_chat_id: str,
    livechat_id: str,
    now: float,
) -> ChatRow | None:
    """Store again a chat known only from its client key (its row was lost: a restored or a
    fresh database) and return it. Its user id is unknown until the user writes: '' until
    then (`upsert_chat` sets it). None when a row for that messenger chat exists under
    another live chat."""
    conn.execute(
        """INSERT INTO chats (channel_id, external_chat_id, name, user_id, client_key,
                              livechat_id, created_at)
           VALUES (?, ?, NULL, '', ?, ?, ?) ON CONFLICT DO NOTHING""",
        (channel_id, external_chat_id, client_key(channel_id, external_chat_id), livechat_id, now),
    )
    row = conn.execute(
        "SELECT * FROM chats WHERE channel_id = ? AND external_chat_id = ?",
        (channel_id, external_chat_id),
    ).fetchone()
    if row is None or row["livechat_id"] != livechat_id:
        return None
    return _chat(row)


def upsert_chat(
    conn: Connection,
    *,
    channel_id: str,
    external_chat_id: str,
    name: str | None,
    user_id: str,
    livechat_id: str,
    now: float,
    url_key: str,
) -> int:
    """The chat's id, created or brought up to date. `url_key` is stored only if the chat has
    none yet (a chat from before keys existed gets it here, before its next delivery)."""
    # Nearly always the chat exists unchanged: a read then, where the upsert would rewrite
    # the row (and its page in the WAL) for every message.
    known = conn.execute(
        """SELECT id, name, user_id, livechat_id, url_key FROM chats
           WHERE channel_id = ? AND external_chat_id = ?""",
        (channel_id, external_chat_id),
    ).fetchone()
    if known is not None and (
        (name is None or name == known["name"])
        and known["user_id"] == user_id
        and known["livechat_id"] == livechat_id
        and known["url_key"] is not None
    ):
        return int(known["id"])
    row = conn.execute(
        """INSERT INTO chats (channel_id, external_chat_id, name, user_id, client_key,
                              livechat_id, created_at, url_key)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (channel_id, external_chat_id) DO UPDATE SET
               name = coalesce(excluded.name, chats.name),
               user_id = excluded.user_id,
               livechat_id = excluded.livechat_id,
               url_key = coalesce(chats.url_key, excluded.url_key)
           RETURNING id""",
        (
            channel_id,
            external_chat_id,
            name,
            user_id,
            client_key(channel_id, external_chat_id),
            livechat_id,
            now,
            url_key,
        ),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def get_chat(conn: Connection, chat_id: int) -> ChatRow | None:
    row = conn.execute("SELECT * FROM chats WHERE id = ?", (chat_id,)).fetchone()
    return _chat(row) if row else None


def find_chat(conn: Connection, livechat_id: str, ref: ChatRef) -> ChatRow | None:
    """The chat a live chat means: by our client key first, else by its customer id."""
    row = None
    if ref.client_key is not None:
        row = conn.execute(
            "SELECT * FROM chats WHERE client_key = ? AND livechat_id = ?",
            (ref.client_key, livechat_id),
        ).fetchone()
    if row is None and ref.customer_id is not None:
        row = conn.execute(
            "SELECT * FROM chats WHERE livechat_id = ? AND customer_id = ? ORDER BY id LIMIT 1",
            (livechat_id, ref.customer_id),
        ).fetchone()
    return _chat(row) if row else None


def set_customer(conn: Connection, chat_id: int, customer_id: str | None, tag: str | None) -> None:
    conn.execute(
        """UPDATE chats SET customer_id = coalesce(?, customer_id),
                            customer_tag = coalesce(?, customer_tag) WHERE id = ?""",
        (customer_id, tag, chat_id),
    )


# --- users --------------------------------------------------------------------------------


def lock_chat(conn: Connection, channel_id: str, external_chat_id: str) -> bool:
    """Take, until this transaction ends, the lock on deciding about one messenger chat.

    For a work run at READ COMMITTED on PostgreSQL (`Store.write(..., isolation=...)`) that
    reads the chat's rows and decides on them (a message already stored and failed for good is
    queued again once, not by each of two resends at once): taken first, it makes two works on
    the same chat run one after the other, each seeing the other's commit, while works on other
    chats run at once (SERIALIZABLE made those roll each other back). Returns whether a lock was
    taken (see `storage.port.transaction_lock`)."""
    return transaction_lock(conn, f"chat:{channel_id}:{external_chat_id}")


def ensure_user(conn: Connection, channel_id: str, user_id: str) -> None:
    conn.execute(
        "INSERT INTO users (channel_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
        (channel_id, user_id),
    )


def get_user(
    conn: Connection, channel_id: str, user_id: str
) -> tuple[UserProfile, float | None] | None:
    """The cached profile and when it was fetched (None: never)."""
    row = conn.execute(
        "SELECT * FROM users WHERE channel_id = ? AND user_id = ?", (channel_id, user_id)
    ).fetchone()
    return _user(row) if row else None


def _user(row: Row) -> tuple[UserProfile, float | None]:
    """The cached profile and when it was fetched (None: never)."""
    return UserProfile(row["user_id"], row["username"], row["phone"], row["avatar"]), row[
        "fetched_at"
    ]


def save_profile(
    conn: Connection,
    channel_id: str,
    profile: UserProfile,
    now: float,
    phone_key: str | None,
) -> None:
    """Store a fetched profile; `phone_key` is its phone as bridge.contacts keys it."""
    conn.execute(
        """INSERT INTO users (channel_id, user_id, username, phone, avatar, fetched_at,
                              phone_key)
           VALUES (?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT (channel_id, user_id) DO UPDATE SET
               username = excluded.username, phone = excluded.phone,
               avatar = excluded.avatar, fetched_at = excluded.fetched_at,
               phone_key = excluded.phone_key""",
        (
            channel_id,
            profile.user_id,
            profile.username,
            profile.phone,
            profile.avatar,
            now,
            _stored_key(profile.phone, phone_key),
        ),
    )


def _stored_key(raw: str | None, key: str | None) -> str | None:
    """What a key column holds: the key; '' for a value with no key (so it is not keyed
    again at every start); NULL only for no value at all."""
    if raw is None:
        return None
    return key or ""


def mark_profile_tried(conn: Connection, channel_id: str, user_id: str, now: float) -> None:
    """A failed lookup counts as a fetch, so a messenger that cannot answer is not asked for
    every message; the profile is asked for again when the cache ages out."""
    conn.execute(
        "UPDATE users SET fetched_at = ? WHERE channel_id = ? AND user_id = ?",
        (now, channel_id, user_id),
    )


# --- sessions -----------------------------------------------------------------------------


def open_session_id(conn: Connection, chat_id: int) -> int | None:
    row = conn.execute(
        "SELECT id FROM sessions WHERE chat_id = ? AND status = 'open'", (chat_id,)
    ).fetchone()
    return int(row["id"]) if row else None


def open_session(
    conn: Connection, chat_id: int, livechat_id: str, opened_by: str, now: float
) -> tuple[int, bool]:
    """The chat's open session, creating one if there is none; (id, created).

    Race-free between replicas (PostgreSQL): the index of one open session per chat
    (sessions_one_open) decides; a replica whose insert meets another's open session, even one
    not committed yet, waits for it and takes it."""
    existing = open_session_id(conn, chat_id)
    if existing is not None:
        return existing, False
    row = conn.execute(
        """INSERT INTO sessions (chat_id, livechat_id, status, opened_by, opened_at)
           VALUES (?, ?, 'open', ?, ?)
           ON CONFLICT (chat_id) WHERE status = 'open' DO NOTHING RETURNING id""",
        (chat_id, livechat_id, opened_by, now),
    ).fetchone()
    if row is None:  # another replica opened one since the look above: its commit is seen now
        existing = open_session_id(conn, chat_id)
        assert existing is not None
        return existing, False
    return int(row["id"]), True


def reopen_last_session(conn: Connection, chat_id: int) -> int | None:
    """Reopen the chat's latest session if none is open; return the open session's id."""
    existing = open_session_id(conn, chat_id)
    if existing is not None:
        return existing
    row = conn.execute(
        """UPDATE sessions SET status = 'open', closed_at = NULL
           WHERE id = (SELECT max(id) FROM sessions WHERE chat_id = ?) RETURNING id""",
        (chat_id,),
    ).fetchone()
    return int(row["id"]) if row else None


def close_session(conn: Connection, chat_id: int, now: float) -> int | None:
    row = conn.execute(
        """UPDATE sessions SET status = 'closed', closed_at = ?
           WHERE chat_id = ? AND status = 'open' RETURNING id""",
        (now, chat_id),
    ).fetchone()
    return int(row["id"]) if row else None


def set_session_url(conn: Connection, session_id: int, url: str | None) -> None:
    if url:
        conn.execute("UPDATE sessions SET conversation_url = ? WHERE id = ?", (url, session_id))


async def read_user(
    db: Store, channel_id: str, user_id: str
) -> tuple[UserProfile, float | None] | None:
    row = await db.fetch_one(
        "SELECT * FROM users WHERE channel_id = ? AND user_id = ?", (channel_id, user_id)
    )
    return _user(row) if row else None


async def read_chat(db: Store, channel_id: str, external_chat_id: str) -> ChatRow | None:
    """A messenger chat's row, or None when the bridge has not stored it."""
    row = await db.fetch_one(
        "SELECT * FROM chats WHERE channel_id = ? AND external_chat_id = ?",
        (channel_id, external_chat_id),
    )
    return _chat(row) if row else None


@dataclass(frozen=True, slots=True)
class ContactKeys:
    """A chat's contact details as keys (bridge.contacts): its user's profile phone, and the
    phone and email of the contact the live chat holds ('' for a value with no key, None
    for none stored or not keyed yet)."""

    user_phone: str | None
    contact_phone: str | None
    contact_email: str | None


async def read_keys(db: Store, channel_id: str, external_chat_id: str) -> ContactKeys | None:
    """The keys a messenger chat is found by, or None when the chat is not stored."""
    row = await db.fetch_one(
        """SELECT u.phone_key, c.contact_phone_key, c.contact_email_key FROM chats c
           LEFT JOIN users u ON u.channel_id = c.channel_id AND u.user_id = c.user_id
           WHERE c.channel_id = ? AND c.external_chat_id = ?""",
        (channel_id, external_chat_id),
    )
    if row is None:
        return None
    return ContactKeys(row["phone_key"], row["contact_phone_key"], row["contact_email_key"])


async def count_open_sessions(db: Store) -> int:
    row = await db.fetch_one("SELECT count(*) AS n FROM sessions WHERE status = 'open'")
    return int(row["n"]) if row else 0


async def list_sessions(
    db: Store,
    channel_id: str | None,
    status: str | None,
    limit: int,
    *,
    external_chat_id: str | None = None,
    user_id: str | None = None,
) -> list[dict[str, Any]]:
    """Sessions newest first; each filter that is not None must match exactly."""
    where, params = matching(
        {
            "c.channel_id": channel_id,
            "s.status": status,
            "c.external_chat_id": external_chat_id,
            "c.user_id": user_id,
        }
    )
    rows = await db.fetch_all(
        f"""SELECT s.id, s.status, s.opened_by, s.opened_at, s.closed_at, s.conversation_url,
                  s.livechat_id, c.channel_id, c.external_chat_id, c.name AS chat_name,
                  c.user_id, c.customer_id,
                  (SELECT count(*) FROM messages m WHERE m.session_id = s.id) AS messages
           FROM sessions s JOIN chats c ON c.id = s.chat_id
           WHERE {where} ORDER BY s.id DESC LIMIT ?""",  # noqa: S608 (column names only)
        (*params, limit),
    )
    return [dict(r) for r in rows]


# --- what a live chat's life-cycle events record ------------------------------------------


def find_chat_by_contact(
    conn: Connection, livechat_id: str, email_key: str | None, phone_key: str | None
) -> ChatRow | None:
    """The latest chat of this live chat whose user's profile phone, or whose stored contact's
    phone or email, has this key (bridge.contacts); each way an index lookup."""
    found: list[Row | None] = []
    if phone_key:
        found.append(
            conn.execute(
                """SELECT max(c.id) AS id FROM users u JOIN chats c
                       ON c.channel_id = u.channel_id AND c.user_id = u.user_id
                   WHERE u.phone_key = ? AND c.livechat_id = ?""",
                (phone_key, livechat_id),
            ).fetchone()
        )
        found.append(
            conn.execute(
                "SELECT max(id) AS id FROM chats WHERE livechat_id = ? AND contact_phone_key = ?",
                (livechat_id, phone_key),
            ).fetchone()
        )
    if email_key:
        found.append(
            conn.execute(
                "SELECT max(id) AS id FROM chats WHERE livechat_id = ? AND contact_email_key = ?",
                (livechat_id, email_key),
            ).fetchone()
        )
    ids = [int(r["id"]) for r in found if r is not None and r["id"] is not None]
    return get_chat(conn, max(ids)) if ids else None


def find_chat_by_url_key(conn: Connection, livechat_id: str, key: str) -> ChatRow | None:
    row = conn.execute(
        "SELECT * FROM chats WHERE url_key = ? AND livechat_id = ?", (key, livechat_id)
    ).fetchone()
    return _chat(row) if row else None


def find_session_by_remote(
    conn: Connection, livechat_id: str, remote_chat_id: str
) -> tuple[int, int] | None:
    """(session id, chat id) of the session a live chat's own chat id was linked to."""
    row = conn.execute(
        """SELECT id, chat_id FROM sessions WHERE livechat_id = ? AND remote_chat_id = ?
           ORDER BY id DESC LIMIT 1""",
        (livechat_id, remote_chat_id),
    ).fetchone()
    return (int(row["id"]), int(row["chat_id"])) if row else None


def session_chat(conn: Connection, session_id: int) -> tuple[int, str] | None:
    """(chat id, live chat id) of a session."""
    row = conn.execute(
        "SELECT chat_id, livechat_id FROM sessions WHERE id = ?", (session_id,)
    ).fetchone()
    return (int(row["chat_id"]), row["livechat_id"]) if row else None


def last_session_id(conn: Connection, chat_id: int) -> int | None:
    row = conn.execute(
        "SELECT max(id) AS id FROM sessions WHERE chat_id = ?", (chat_id,)
    ).fetchone()
    return int(row["id"]) if row and row["id"] is not None else None


def session_opened_at(conn: Connection, session_id: int) -> float:
    row = conn.execute("SELECT opened_at FROM sessions WHERE id = ?", (session_id,)).fetchone()
    assert row is not None
    return float(row["opened_at"])


def link_session(
    conn: Connection,
    session_id: int,
    remote_chat_id: str | None,
    agent_id: str | None,
    agent_name: str | None,
) -> None:
    """Store what the live chat told of a session. A live-chat chat id names one session:
    linked here, it is unlinked from any other of the same live chat."""
    if remote_chat_id is not None:
        conn.execute(
            """UPDATE sessions SET remote_chat_id = NULL
               WHERE livechat_id = (SELECT livechat_id FROM sessions WHERE id = ?)
                 AND remote_chat_id = ? AND id <> ?""",
            (session_id, remote_chat_id, session_id),
        )
    conn.execute(
        """UPDATE sessions SET remote_chat_id = coalesce(?, remote_chat_id),
                               agent_id = coalesce(?, agent_id),
                               agent_name = coalesce(?, agent_name)
           WHERE id = ?""",
        (remote_chat_id, agent_id, agent_name, session_id),
    )


def set_crm_link(conn: Connection, session_id: int, link: str) -> None:
    conn.execute("UPDATE sessions SET crm_link = ? WHERE id = ?", (link, session_id))


def finish_session(
    conn: Connection, session_id: int, transcript: list[dict[str, Any]] | None, now: float
) -> None:
    conn.execute(
        """UPDATE sessions SET status = 'closed', closed_at = coalesce(closed_at, ?),
                               transcript = coalesce(?, transcript)
           WHERE id = ?""",
        (
            now,
            None if transcript is None else json.dumps(transcript, ensure_ascii=False),
            session_id,
        ),
    )


def set_contact(
    conn: Connection,
    chat_id: int,
    contact: dict[str, Any],
    phone_key: str | None,
    email_key: str | None,
) -> None:
    """Store the contact the live chat holds for the chat's visitor, with its keys."""
    conn.execute(
        """UPDATE chats SET contact = ?, contact_phone_key = ?, contact_email_key = ?
           WHERE id = ?""",
        (json.dumps(contact, ensure_ascii=False), phone_key or "", email_key or "", chat_id),
    )


# --- keys for rows stored before they existed (storage/migrations.py V5) ------------------


def unkeyed_users(conn: Connection, limit: int) -> list[tuple[str, str, str]]:
    """(channel id, user id, phone) of users whose phone has no key yet."""
    rows = conn.execute(
        """SELECT channel_id, user_id, phone FROM users
           WHERE phone IS NOT NULL AND phone_key IS NULL LIMIT ?""",
        (limit,),
    ).fetchall()
    return [(r["channel_id"], r["user_id"], r["phone"]) for r in rows]


def set_user_phone_key(
    conn: Connection, channel_id: str, user_id: str, phone: str, key: str | None
) -> None:
    conn.execute(
        "UPDATE users SET phone_key = ? WHERE channel_id = ? AND user_id = ?",
        (_stored_key(phone, key), channel_id, user_id),
    )


def unkeyed_contacts(conn: Connection, limit: int) -> list[tuple[int, str, Any]]:
    """(chat id, live chat id, stored contact) of chats whose contact has no keys yet."""
    rows = conn.execute(
        """SELECT id, livechat_id, contact FROM chats
           WHERE contact IS NOT NULL AND contact_phone_key IS NULL LIMIT ?""",
        (limit,),
    ).fetchall()
    return [(int(r["id"]), r["livechat_id"], json.loads(r["contact"])) for r in rows]


def set_contact_keys(
    conn: Connection, chat_id: int, phone_key: str | None, email_key: str | None
) -> None:
    conn.execute(
        "UPDATE chats SET contact_phone_key = ?, contact_email_key = ? WHERE id = ?",
        (phone_key or "", email_key or "", chat_id),
    )


async def session_detail(db: Store, session_id: int) -> dict[str, Any] | None:
    row = await db.fetch_one(
        """SELECT s.*, c.channel_id, c.external_chat_id, c.name AS chat_name, c.user_id,
                  c.client_key, c.customer_id, c.contact
           FROM sessions s JOIN chats c ON c.id = s.chat_id WHERE s.id = ?""",
        (session_id,),
    )
    if row is None:
        return None
    detail = dict(row)
    for key in ("transcript", "contact"):
        detail[key] = json.loads(detail[key]) if detail[key] else None
    rows = await db.fetch_all(
        """SELECT uid, direction, external_id, remote_id, user_id, operator_id, operator_name,
                  text, files, status, created_at
           FROM messages WHERE session_id = ? ORDER BY id LIMIT 1000""",
        (session_id,),
    )
    detail["messages"] = [{**dict(r), "files": json.loads(r["files"])} for r in rows]
    return detail
