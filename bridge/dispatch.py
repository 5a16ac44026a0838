"""What each kind of outbox item means: which outside call it makes and what follows from it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import structlog

from bridge import relay
from bridge.channels import ACTIVE, ChannelManager
from bridge.model import (
    Customer,
    Delivered,
    DeliveryResult,
    Failed,
    Operator,
    OperatorReply,
    OutgoingMessage,
    Retry,
    UserProfile,
)
from bridge.settings import Settings
from connectors import webhooks
from connectors.base import LiveChatConnector
from storage import chats, events, messages, outbox
from storage.database import Database
from storage.outbox import OutboxItem

log = structlog.get_logger("dispatch")

Work = Callable[[sqlite3.Connection], object]


@dataclass(frozen=True, slots=True)
class Attempt:
    result: DeliveryResult
    on_delivered: Work | None = None  # committed with the item's completion
    on_dead: Work | None = None  # committed when the item is given up
    channel_id: str | None = None  # the messenger channel whose health this result speaks of


def _bind(channel_id: str, msg: messages.MessageRow) -> None:
    # Each delivery runs in its own task, so these ids tag only that delivery's log lines.
    structlog.contextvars.bind_contextvars(
        channel=channel_id, session=msg.session_id, message=msg.uid
    )


class Dispatcher:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        livechats: dict[str, LiveChatConnector],
        channels: ChannelManager,
        http: aiohttp.ClientSession,
        relay: relay.Relay,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._relay = relay
        self._db = db
        self._settings = settings
        self._livechats = livechats
        self._channels = channels
        self._clock = clock

    async def attempt(self, item: OutboxItem) -> Attempt:
        if item.kind == relay.TO_LIVECHAT:
            return await self._to_livechat(item)
        if item.kind == relay.TO_MESSENGER:
            return await self._to_messenger(item)
        if item.kind in (relay.OUTCOME, relay.READ):
            return await self._notice(item)
        if item.kind == relay.TO_SUBSCRIBER:
            return await self._to_subscriber(item)
        return Attempt(Failed(f"unknown outbox kind {item.kind!r}"))

    async def _to_livechat(self, item: OutboxItem) -> Attempt:
        assert item.ref_id is not None
        loaded = await messages.read_with_chat(self._db, item.ref_id)
        if loaded is None:
            return Attempt(Failed("the message is no longer stored"))
        msg, chat, cached = loaded
        _bind(chat.channel_id, msg)
        connector = self._livechats.get(chat.livechat_id)
        if connector is None:
            return Attempt(Retry(f"live chat {chat.livechat_id!r} is not configured"))
        profile = await self._profile(chat.channel_id, msg.user_id or chat.user_id, cached)
        customer = Customer(
            channel_id=chat.channel_id,
            client_key=chat.client_key,
            profile=profile,
            chat_name=chat.name,
            customer_id=chat.customer_id,
            customer_tag=chat.customer_tag,
        )
        result = await connector.deliver(
            customer, OutgoingMessage(msg.uid, msg.text, msg.files, msg.created_at)
        )

        def outcome(success: bool) -> Work:
            def work(conn: sqlite3.Connection) -> None:
                if isinstance(result, Delivered):
                    messages.set_status(conn, msg.id, "delivered", result.remote_id)
                    chats.set_customer(conn, chat.id, result.customer_id, result.customer_tag)
                    if result.customer_id and result.customer_id != chat.customer_id:
                        self._relay.adopt_orphans(conn, chat.id)
                else:
                    messages.set_status(conn, msg.id, "failed")
                outbox.enqueue(
                    conn,
                    kind=relay.OUTCOME,
                    lane=relay.messenger_lane(chat.id),
                    channel_id=chat.channel_id,
                    ref_id=msg.id,
                    payload={"external_id": msg.external_id, "success": success},
                    now=self._clock(),
                )

            return work

        return Attempt(result, on_delivered=outcome(True), on_dead=outcome(False))

    async def _profile(
        self, channel_id: str, user_id: str, cached: tuple[UserProfile, float | None] | None
    ) -> UserProfile:
        """The cached profile, refreshed through `userInfo` when stale; never blocks a message."""
        profile, fetched_at = cached if cached else (UserProfile(user_id), None)
        ttl = self._settings.delivery.profile_ttl
        fresh = fetched_at is not None and self._clock() - fetched_at < ttl
        client = self._channels.clients.get(channel_id)
        if fresh or client is None or self._channels.state(channel_id) != ACTIVE:
            return profile
        fetched = await client.user_info(user_id)
        now = self._clock()

        def save(conn: sqlite3.Connection) -> None:
            if fetched is not None:
                chats.save_profile(conn, channel_id, fetched, now)
            else:
                chats.mark_profile_tried(conn, channel_id, user_id, now)

        await self._db.write(save)
        if fetched is None:
            log.info("dispatch.profile_unavailable", channel=channel_id, user=user_id)
        return fetched or profile

    async def _to_messenger(self, item: OutboxItem) -> Attempt:
        assert item.ref_id is not None and item.channel_id is not None
        loaded = await messages.read_with_chat(self._db, item.ref_id)
        if loaded is None:
            return Attempt(Failed("the message is no longer stored"))
        msg, chat, _ = loaded
        _bind(chat.channel_id, msg)
        client = self._channels.clients.get(item.channel_id)
        if client is None:
            return Attempt(Retry(f"messenger {item.channel_id!r} is not configured"))
        operator = (
            Operator(msg.operator_id, msg.operator_name)
            if msg.operator_id or msg.operator_name
            else None
        )
        result = await client.send_message(
            OperatorReply(msg.uid, chat.external_chat_id, msg.text, msg.files, operator)
        )

        def status(value: str) -> Work:
            def work(conn: sqlite3.Connection) -> None:
                messages.set_status(conn, msg.id, value)

            return work

        return Attempt(result, status("delivered"), status("failed"), channel_id=item.channel_id)

    async def _notice(self, item: OutboxItem) -> Attempt:
        assert item.channel_id is not None
        structlog.contextvars.bind_contextvars(channel=item.channel_id)
        client = self._channels.clients.get(item.channel_id)
        if client is None:
            return Attempt(Retry(f"messenger {item.channel_id!r} is not configured"))
        external_id = str(item.payload["external_id"])
        if item.kind == relay.OUTCOME:
            result = await client.send_outcome(external_id, bool(item.payload["success"]))
        else:
            result = await client.mark_as_read(external_id)
        return Attempt(result, channel_id=item.channel_id)

    async def _to_subscriber(self, item: OutboxItem) -> Attempt:
        key = item.payload["subscription"]
        sub = next((s for s in self._settings.subscriptions if s.key == key), None)
        if sub is None:
            return Attempt(Failed(f"subscription {key!r} is no longer configured"))
        assert item.ref_id is not None
        event = await events.read(self._db, item.ref_id)
        if event is None:
            return Attempt(Failed("the event is no longer stored"))
        connector = self._livechats.get(event.livechat_id)
        notice = webhooks.EventNotice(
            uid=event.uid,
            name=event.name,
            livechat_id=event.livechat_id,
            livechat_kind=connector.kind if connector else "unknown",
            received_at=event.received_at,
            payload=event.payload,
            session_id=event.session_id,
            channel_id=event.channel_id,
            external_chat_id=event.external_chat_id,
        )
        structlog.contextvars.bind_contextvars(subscription=key, event=event.uid)
        result = await webhooks.deliver(
            self._http,
            sub.url,
            sub.secret.get_secret_value(),
            f"msg_{event.uid}_{key}",  # the same on every retry: receivers drop repeats
            webhooks.body(notice),
        )
        return Attempt(result)
