"""The relay: decides what an inbound message or event means and commits it with its outbox items.

Nothing here calls an outside party. Each public method is one write transaction; when it
returns, everything it decided is on disk and the delivery worker has been woken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosqlite
import structlog

from bridge.model import (
    AgentMessage,
    AgentRead,
    ConversationState,
    LiveChatEvent,
    OtherEvent,
    UserMessage,
    UserProfile,
)
from bridge.settings import Settings
from storage import chats, events, messages, outbox
from storage.database import Database

log = structlog.get_logger("relay")

# Outbox kinds: what the delivery worker does with an item.
TO_LIVECHAT = "livechat.message"
TO_MESSENGER = "messenger.message"
OUTCOME = "messenger.outcome"
READ = "messenger.read"


def livechat_lane(chat_id: int) -> str:
    return f"lc:{chat_id}"


def messenger_lane(chat_id: int) -> str:
    return f"ms:{chat_id}"


@dataclass(frozen=True, slots=True)
class Accepted:
    duplicate: bool
    uid: str | None = None
    session_id: int | None = None


class Relay:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._settings = settings
        self._wake = wake
        self._clock = clock

    async def accept_user_message(self, channel_id: str, msg: UserMessage) -> Accepted:
        livechat_id = self._settings.messengers[channel_id].livechat
        dedupe_key = f"in:{channel_id}:{msg.external_message_id}"

        async def work(conn: aiosqlite.Connection) -> Accepted:
            if await messages.seen(conn, dedupe_key):
                return Accepted(duplicate=True)
            now = self._clock()
            chat_id = await chats.upsert_chat(
                conn,
                channel_id=channel_id,
                external_chat_id=msg.external_chat_id,
                name=msg.external_chat_name,
                user_id=msg.external_user_id,
                livechat_id=livechat_id,
                now=now,
            )
            await chats.ensure_user(conn, channel_id, msg.external_user_id)
            session_id, _ = await chats.open_session(conn, chat_id, livechat_id, "user", now)
            uid = messages.new_uid()
            message_id = await messages.insert(
                conn,
                uid=uid,
                dedupe_key=dedupe_key,
                session_id=session_id,
                chat_id=chat_id,
                direction="in",
                text=msg.text,
                files=msg.files,
                now=now,
                external_id=msg.external_message_id,
                user_id=msg.external_user_id,
            )
            await outbox.enqueue(
                conn, kind=TO_LIVECHAT, lane=livechat_lane(chat_id), ref_id=message_id, now=now
            )
            return Accepted(duplicate=False, uid=uid, session_id=session_id)

        accepted = await self._db.write(work)
        if not accepted.duplicate:
            self._wake()
        return accepted

    async def accept_livechat_events(self, livechat_id: str, batch: list[LiveChatEvent]) -> None:
        async def work(conn: aiosqlite.Connection) -> bool:
            woke = False
            for event in batch:
                woke |= await self._apply(conn, livechat_id, event)
            return woke

        if not batch:
            return
        queued: bool = await self._db.write(work)
        if queued:
            self._wake()

    async def _apply(
        self, conn: aiosqlite.Connection, livechat_id: str, event: LiveChatEvent
    ) -> bool:
        """Apply one event; True if it queued something to deliver."""
        now = self._clock()
        if isinstance(event, OtherEvent):
            chat = await chats.find_chat(conn, livechat_id, event.chat) if event.chat else None
            session_id = await chats.open_session_id(conn, chat.id) if chat else None
            await events.record(
                conn,
                livechat_id=livechat_id,
                name=event.name,
                payload=event.raw,
                session_id=session_id,
                now=now,
            )
            return False

        chat = await chats.find_chat(conn, livechat_id, event.chat)
        if chat is None:
            log.warning("relay.unlinked_event", livechat=livechat_id, kind=type(event).__name__)
            await events.record(
                conn,
                livechat_id=livechat_id,
                name="unlinked",
                payload={
                    "kind": type(event).__name__,
                    "customer_id": event.chat.customer_id,
                    "client_key": event.chat.client_key,
                },
                now=now,
            )
            return False
        messenger = self._settings.messengers.get(chat.channel_id)
        operator_sessions = messenger is not None and messenger.operator_sessions

        if isinstance(event, AgentMessage):
            dedupe_key = f"out:{livechat_id}:{event.message_id}" if event.message_id else None
            if dedupe_key and await messages.seen(conn, dedupe_key):
                return False
            session_id = await chats.open_session_id(conn, chat.id)
            if session_id is None:
                if not operator_sessions:
                    await events.record(
                        conn,
                        livechat_id=livechat_id,
                        name="message.refused",
                        payload={
                            "reason": "no open session and the messenger does not allow"
                            " operator-started sessions",
                            "chat_id": chat.id,
                            "message_id": event.message_id,
                        },
                        now=now,
                    )
                    log.warning("relay.operator_session_refused", channel=chat.channel_id)
                    return False
                session_id, _ = await chats.open_session(
                    conn, chat.id, livechat_id, "operator", now
                )
            operator = event.operator
            message_id = await messages.insert(
                conn,
                uid=messages.new_uid(),
                dedupe_key=dedupe_key,
                session_id=session_id,
                chat_id=chat.id,
                direction="out",
                text=event.text,
                files=event.files,
                now=now,
                remote_id=event.message_id,
                operator_id=operator.id if operator else None,
                operator_name=operator.name if operator else None,
            )
            await outbox.enqueue(
                conn,
                kind=TO_MESSENGER,
                lane=messenger_lane(chat.id),
                channel_id=chat.channel_id,
                ref_id=message_id,
                now=now,
            )
            return True

        if isinstance(event, ConversationState):
            if event.open:
                session_id = await chats.reopen_last_session(conn, chat.id)
                if session_id is None and operator_sessions:
                    session_id, _ = await chats.open_session(
                        conn, chat.id, livechat_id, "operator", now
                    )
                if session_id is not None:
                    await chats.set_session_url(conn, session_id, event.url)
            else:
                session_id = await chats.close_session(conn, chat.id, now)
            await events.record(
                conn,
                livechat_id=livechat_id,
                name=event.name,
                payload=event.raw,
                session_id=session_id,
                now=now,
            )
            return False

        if isinstance(event, AgentRead):
            target = await messages.find_inbound(conn, chat.id, event.message_id)
            if target is None or target.status == "read" or target.external_id is None:
                return False
            await messages.set_status(conn, target.id, "read")
            await outbox.enqueue(
                conn,
                kind=READ,
                lane=messenger_lane(chat.id),
                channel_id=chat.channel_id,
                ref_id=target.id,
                payload={"external_id": target.external_id},
                now=now,
            )
            return True
        return False

    async def user_read(self, channel_id: str, uid: str) -> None:
        """The messenger reports that its user read an operator's message."""

        async def work(conn: aiosqlite.Connection) -> bool:
            return await messages.mark_read_by_uid(conn, channel_id, uid)

        await self._db.write(work)

    async def known_profile(self, channel_id: str, user_id: str) -> UserProfile | None:
        found = await chats.get_user(self._db.reader, channel_id, user_id)
        return found[0] if found else None
