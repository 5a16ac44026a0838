"""What the bridge stored, read through its repositories (storage/), as the admin API reads it.

Tests outside the storage layer's own (test_storage*.py, test_retention.py's pruning) read
the database only through these: they do not know its tables, so a second backend runs them
unchanged. Everything is oldest first.
"""

from __future__ import annotations

from typing import Any

from storage import channels, chats, events, messages, outbox
from storage.chats import ChatRow
from storage.port import Store

MANY = 10_000  # more rows than any test makes


async def sessions(db: Store, chat: str | None = None) -> list[dict[str, Any]]:
    """The sessions (of the messenger chat `chat`, or all), each as GET /admin/sessions/{id}
    gives it (with its messages)."""
    listed = await chats.list_sessions(db, None, None, MANY, external_chat_id=chat)
    found = [await chats.session_detail(db, s["id"]) for s in reversed(listed)]
    return [s for s in found if s is not None]


async def all_messages(db: Store) -> list[dict[str, Any]]:
    """Every message of every session, in the order they were stored."""
    found = [m for s in await sessions(db) for m in s["messages"]]
    return sorted(found, key=lambda m: m["created_at"])  # stable: by id within a session


async def count_messages(db: Store, direction: str | None = None) -> int:
    return sum(1 for m in await all_messages(db) if direction in (None, m["direction"]))


async def message_statuses(db: Store) -> list[str]:
    return [m["status"] for m in await all_messages(db)]


async def event_list(db: Store, name: str | None = None) -> list[dict[str, Any]]:
    return list(reversed(await events.list_events(db, None, name, MANY)))


async def event_names(db: Store) -> list[str]:
    return [e["name"] for e in await event_list(db)]


async def outbox_items(db: Store, status: str | None = None) -> list[dict[str, Any]]:
    """The outbox's items (`status` "pending" or "dead"; both when None), by id."""
    statuses = ("pending", "dead") if status is None else (status,)
    found = [i for s in statuses for i in await outbox.list_items(db, s, MANY)]
    return sorted(found, key=lambda i: i["id"])


async def chat(db: Store, external_chat_id: str, channel_id: str = "acme") -> ChatRow | None:
    return await chats.read_chat(db, channel_id, external_chat_id)


async def channel_row(db: Store, channel_id: str = "acme") -> channels.ChannelRow:
    (row,) = [c for c in await channels.all_channels(db) if c.id == channel_id]
    return row


async def orphans(db: Store) -> list[messages.Orphan]:
    return await messages.list_orphans(db)
