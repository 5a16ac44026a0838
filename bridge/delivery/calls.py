"""The outside call each kind of outbox item makes (`CALLS`, by kind), and what it found out.

`LocalCaller.call` only reads the database and calls out; everything it learnt comes back as
`CallResult`, plain data, so that it can run in the delivery process (see `bridge.delivery.child`)
while every write stays with the serving process (see `bridge.delivery.settle`).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

import structlog

from bridge import chat_links
from bridge.core import outbox_kinds
from bridge.core.model import (
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
from bridge.core.outbox_kinds import messenger_lane
from bridge.settings import Settings
from connectors import http as outside
from connectors import webhooks
from connectors.base import LiveChatConnector
from connectors.messenger import MessengerClient
from connectors.registry import Connectors
from storage import chats, events, messages, outbox
from storage.outbox import OutboxItem
from storage.port import Store

log = structlog.get_logger("dispatch")

INLINE_OUTCOME_SECONDS = 2.0  # the most a delivery waits for the outcome sent with it


# No slots: it crosses the socket to the delivery process, where slots pickle slowly.
@dataclass(frozen=True)
class MessageFacts:
    """The stored message an item was about, as its follow-ups need it."""

    id: int
    uid: str
    session_id: int | None
    external_id: str | None
    chat_id: int
    channel_id: str
    customer_id: str | None  # the chat's customer id and tag when the attempt began
    customer_tag: str | None

    def log_ids(self) -> dict[str, object]:
        return {"channel": self.channel_id, "session": self.session_id, "message": self.uid}


# No slots: it crosses the socket to the delivery process, where slots pickle slowly.
@dataclass(frozen=True)
class ProfileFetch:
    """A `userInfo` lookup made on the way: `profile` is None when it failed."""

    channel_id: str
    user_id: str
    profile: UserProfile | None
    at: float


# No slots: it crosses the socket to the delivery process, where slots pickle slowly.
@dataclass(frozen=True)
class CallResult:
    result: DeliveryResult
    channel_id: str | None = None  # the messenger channel whose health this result speaks of
    message: MessageFacts | None = None
    profile: ProfileFetch | None = None
    # A message reached the live chat and its `messageOutcome` was sent right away (True: the
    # messenger took it; nothing more to queue).
    notified: bool = False


# A delivery's message, its chat, its sender's cached profile (and when it was fetched), its facts.
_Loaded = tuple[
    messages.MessageRow,
    chats.ChatRow,
    tuple[UserProfile, float | None] | None,
    MessageFacts,
]


def _facts(msg: messages.MessageRow, chat: chats.ChatRow) -> MessageFacts:
    """What follow-ups need of a loaded message; its ids also tag this delivery's log lines
    (each delivery runs in its own task, so they tag only its own)."""
    facts = MessageFacts(
        msg.id,
        msg.uid,
        msg.session_id,
        msg.external_id,
        chat.id,
        chat.channel_id,
        chat.customer_id,
        chat.customer_tag,
    )
    structlog.contextvars.bind_contextvars(**facts.log_ids())
    return facts


class LocalCaller:
    def __init__(
        self,
        db: Store,
        settings: Settings,
        http: outside.Client,
        connectors: Connectors,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`connectors`: this process's, from `connectors.registry.build_connectors` (built once
        per process, shared with the channel life cycle)."""
        self._http = http
        self._db = db
        self._settings = settings
        self._livechats: dict[str, LiveChatConnector] = connectors.livechats
        self._clients = connectors.messengers
        self._clock = clock

    async def call(self, item: OutboxItem, active: Collection[str]) -> CallResult:
        """Make the item's outside call. `active`: the messenger channels now active."""
        call = CALLS.get(item.kind)
        if call is None:
            return CallResult(Failed(f"unknown outbox kind {item.kind!r}"))
        return await call(self, item, active)

    async def to_livechat(self, item: OutboxItem, active: Collection[str]) -> CallResult:
        """A user's message to its chat's live chat."""
        loaded = await self._stored_message(item)
        if isinstance(loaded, CallResult):
            return loaded
        msg, chat, cached, facts = loaded
        connector = self._livechats.get(chat.livechat_id)
        if connector is None:
            return CallResult(
                Retry(f"live chat {chat.livechat_id!r} is not configured"), message=facts
            )
        user_id = msg.user_id or chat.user_id
        fetch = await self._profile(chat.channel_id, user_id, cached, active)
        profile = (fetch.profile if fetch else None) or (cached[0] if cached else None)
        customer = Customer(
            channel_id=chat.channel_id,
            client_key=chat.client_key,
            profile=profile or UserProfile(user_id),
            chat_name=chat.name,
            customer_id=chat.customer_id,
            customer_tag=chat.customer_tag,
            url=chat_links.chat_url(self._settings.server.public_url, chat.url_key)
            if chat.url_key
            else None,
        )
        parts_done = int(item.payload.get("parts_done", 0))  # see settle._progress
        result = await connector.deliver(
            customer, OutgoingMessage(msg.uid, msg.text, msg.files, msg.created_at, parts_done)
        )
        notified = isinstance(result, Delivered) and await self._outcome_now(facts, active)
        return CallResult(result, message=facts, profile=fetch, notified=notified)

    async def _outcome_now(self, msg: MessageFacts, active: Collection[str]) -> bool:
        """Send the success outcome at once, rather than as an outbox item of its own (which
        costs a commit, a claim and a settle more), when nothing is waiting before it in the
        chat's messenger lane. Any failure leaves it to the outbox item, as before; a crash
        before the settle sends it once more with the delivery, which the messenger's
        `messageId` makes harmless.

        The call is bounded well below `request_timeout`: until it returns, the chat's next
        message waits, and so does the settle that stores a new conversation's id."""
        client = self._clients.get(msg.channel_id)
        if client is None or msg.external_id is None or msg.channel_id not in active:
            return False
        if not await outbox.lane_idle(self._db, messenger_lane(msg.chat_id)):
            return False
        seconds = min(INLINE_OUTCOME_SECONDS, self._settings.delivery.request_timeout)
        told = await client.send_outcome(msg.external_id, True, seconds=seconds)
        return isinstance(told, Delivered)

    async def _profile(
        self,
        channel_id: str,
        user_id: str,
        cached: tuple[UserProfile, float | None] | None,
        active: Collection[str],
    ) -> ProfileFetch | None:
        """A `userInfo` lookup when the cached profile is stale; never blocks a message."""
        fetched_at = cached[1] if cached else None
        fresh = (
            fetched_at is not None
            and self._clock() - fetched_at < self._settings.delivery.profile_ttl
        )
        client = self._clients.get(channel_id)
        if fresh or client is None or channel_id not in active:
            return None
        fetched = await client.user_info(user_id)
        if fetched is None:
            log.info("dispatch.profile_unavailable", channel=channel_id, user=user_id)
        return ProfileFetch(channel_id, user_id, fetched, self._clock())

    async def to_messenger(self, item: OutboxItem, active: Collection[str]) -> CallResult:
        """An operator's reply to its chat's messenger."""
        assert item.channel_id is not None
        loaded = await self._stored_message(item)
        if isinstance(loaded, CallResult):
            return loaded
        msg, chat, _, facts = loaded
        client = self._clients.get(item.channel_id)
        if client is None:
            return CallResult(Retry(f"messenger {item.channel_id!r} is not configured"))
        operator = (
            Operator(msg.operator_id, msg.operator_name)
            if msg.operator_id or msg.operator_name
            else None
        )
        result = await client.send_message(
            OperatorReply(msg.uid, chat.external_chat_id, msg.text, msg.files, operator)
        )
        return CallResult(result, channel_id=item.channel_id, message=facts)

    async def _stored_message(self, item: OutboxItem) -> _Loaded | CallResult:
        """The message a delivery's item names, with its chat, its sender's cached profile and
        its facts (see `_facts`); the result when it is no longer stored."""
        assert item.ref_id is not None
        loaded = await messages.read_with_chat(self._db, item.ref_id)
        if loaded is None:
            return CallResult(Failed("the message is no longer stored"))
        msg, chat, cached = loaded
        return msg, chat, cached, _facts(msg, chat)

    async def outcome(self, item: OutboxItem, active: Collection[str]) -> CallResult:
        """A message's outcome (`success`: the live chat took it) to its messenger."""
        client = self._notice_client(item)
        if isinstance(client, CallResult):
            return client
        external_id = str(item.payload["external_id"])
        success = bool(item.payload["success"])
        if not success and await self._superseded(item):
            return CallResult(Delivered())
        result = await client.send_outcome(external_id, success)
        return CallResult(result, channel_id=item.channel_id)

    async def read(self, item: OutboxItem, active: Collection[str]) -> CallResult:
        """A read receipt (an operator read the user's message) to its messenger."""
        client = self._notice_client(item)
        if isinstance(client, CallResult):
            return client
        result = await client.mark_as_read(str(item.payload["external_id"]))
        return CallResult(result, channel_id=item.channel_id)

    def _notice_client(self, item: OutboxItem) -> MessengerClient | CallResult:
        """The client a notice goes through, or the result when its messenger is gone."""
        assert item.channel_id is not None
        structlog.contextvars.bind_contextvars(channel=item.channel_id)
        client = self._clients.get(item.channel_id)
        if client is None:
            return CallResult(Retry(f"messenger {item.channel_id!r} is not configured"))
        return client

    async def _superseded(self, item: OutboxItem) -> bool:
        """A failure outcome not sent yet whose message the messenger has since resent: it
        was queued again (see `Relay.accept_user_message`), so "failed" is no longer true and
        the new attempt ends with an outcome of its own. Settled as done without a call (it
        still counts as delivered in `bridge_deliveries_total`)."""
        if item.ref_id is None:
            return False
        status = await messages.read_status(self._db, item.ref_id)
        if status is None or status == "failed":
            return False
        log.info("dispatch.outcome_superseded", item=item.id, status=status)
        return True

    async def to_subscriber(self, item: OutboxItem, active: Collection[str]) -> CallResult:
        """A recorded event to a subscription's webhook."""
        key = item.payload["subscription"]
        sub = next((s for s in self._settings.subscriptions if s.key == key), None)
        if sub is None:
            return CallResult(Failed(f"subscription {key!r} is no longer configured"))
        assert item.ref_id is not None
        event = await events.read(self._db, item.ref_id)
        if event is None:
            return CallResult(Failed("the event is no longer stored"))
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
        return CallResult(result)


# Each performed kind's call (what the kind is: `bridge.core.outbox_kinds`; what follows its
# outcome: `bridge.delivery.settle.FOLLOW_UPS`). A kind with none (one stored by another
# release, or a kept reply, which is never performed) fails as an unknown outbox kind.
CALLS: dict[str, Callable[[LocalCaller, OutboxItem, Collection[str]], Awaitable[CallResult]]] = {
    outbox_kinds.TO_LIVECHAT.name: LocalCaller.to_livechat,
    outbox_kinds.TO_MESSENGER.name: LocalCaller.to_messenger,
    outbox_kinds.OUTCOME.name: LocalCaller.outcome,
    outbox_kinds.READ.name: LocalCaller.read,
    outbox_kinds.TO_SUBSCRIBER.name: LocalCaller.to_subscriber,
}
