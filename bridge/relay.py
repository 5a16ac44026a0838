"""The relay: decides what an inbound message or event means and commits it with its outbox items.

Nothing here calls an outside party. Each public method is one write transaction; when it
returns, everything it decided is on disk and the delivery worker has been woken.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import structlog

from bridge import chat_links
from bridge.core import contacts
from bridge.core.errors import InvalidInput
from bridge.core.model import (
    AgentMessage,
    AgentRead,
    ChatRef,
    Contact,
    ConversationState,
    CrmAnswer,
    FileRef,
    Lifecycle,
    LiveChatEvent,
    Operator,
    OtherEvent,
    UserMessage,
    UserProfile,
)
from bridge.core.outbox_kinds import (
    kept_reply_lane,
    livechat_lane,
    messenger_lane,
    subscriber_lane,
)
from bridge.settings import Settings
from storage import chats, events, messages, outbox
from storage.outbox import KEPT_REPLY, OUTCOME, READ, TO_LIVECHAT, TO_MESSENGER, TO_SUBSCRIBER
from storage.port import Connection, Store

log = structlog.get_logger("relay")

SESSION_REFUSED = "no open session and the messenger does not allow operator-started sessions"


@dataclass(frozen=True, slots=True)
class Applied:
    queued: bool = False  # something was put in the outbox: wake the worker
    answer: CrmAnswer | None = None


def _failed_for_good(conn: Connection, stored: messages.Stored) -> bool:
    """The message's delivery was given up (its messenger told `success: false`) and nothing
    is delivering it now (an admin may have put its dead item back in the lane)."""
    return stored.status == "failed" and not outbox.has_pending(
        conn, lane=livechat_lane(stored.chat_id), kind=TO_LIVECHAT, ref_id=stored.id
    )


def _links_by_hand(
    stored: events.Stored, parse: Callable[[str, dict[str, Any]], list[LiveChatEvent]]
) -> bool:
    """Whether linking this event by hand means something: a life-cycle event of the live
    chat's own (JivoChat's Webhooks API), not a record of the bridge's or a message."""
    try:
        parsed = parse(stored.livechat_id, stored.payload)
    except InvalidInput:  # a record of the bridge's own, not the live chat's body
        return False
    return any(isinstance(item, Lifecycle) for item in parsed)


def _contact_json(contact: Contact) -> dict[str, Any]:
    return {
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
        "description": contact.description,
    }


def _operator(operator_id: str | None, operator_name: str | None) -> Operator | None:
    return Operator(operator_id, operator_name) if operator_id or operator_name else None


def _kept_lane(livechat_id: str, ref: ChatRef) -> str:
    """The lane of the dead letters keeping one chat's undeliverable replies."""
    return kept_reply_lane(livechat_id, ref.client_key or ref.customer_id)


def _reply_fields(event: AgentMessage) -> dict[str, Any]:
    """What an operator wrote, as kept in an event or a dead letter."""
    operator = event.operator
    return {
        "message_id": event.message_id,
        "text": event.text,
        "files": messages.files_list(event.files),
        "operator_id": operator.id if operator else None,
        "operator_name": operator.name if operator else None,
    }


@dataclass(frozen=True, slots=True)
class Link:
    """What a life-cycle event was linked to; `why_not` says, when there is no session, what
    each way of linking found."""

    chat: chats.ChatRow | None
    session_id: int | None
    why_not: str | None = None


@dataclass(frozen=True, slots=True)
class HandLink:
    """What linking an event by hand did: `error` (an errcode and a message) when it could
    not, else the events now linked to the session, and the live-chat chat id, if any."""

    events: tuple[int, ...] = ()
    remote_chat_id: str | None = None
    error: tuple[str, str] | None = None


# How many rows of a table a start-up pass keys in one transaction.
KEYING_BATCH = 500


@dataclass(frozen=True, slots=True)
class Accepted:
    """A user's message was committed, or was a true repeat of one (`duplicate`: nothing new
    stored). `requeued`: a resend of a message whose delivery had failed for good, queued
    again under its first `uid`."""

    duplicate: bool
    uid: str | None = None
    session_id: int | None = None
    requeued: bool = False


@dataclass(frozen=True, slots=True)
class Conflicting:
    """A repeat of an `externalMessageId` that differs from the message stored under it (in
    `differs`: "chat", "text", "files"). Not a retry: nothing was stored or queued."""

    uid: str
    stored_chat: str  # the externalChatId the stored message came with
    differs: tuple[str, ...]


def _differences(stored: messages.Stored, msg: UserMessage) -> tuple[str, ...]:
    """How a repeat differs from the stored message, compared as the connector parsed both
    (so `url` or `URL`, an id as a number or a string, make no difference). The chat's name
    and the user id are not compared: a name may change between tries."""
    found = []
    if stored.external_chat_id != msg.external_chat_id:
        found.append("chat")
    if stored.text != msg.text:
        found.append("text")
    if stored.files != msg.files:
        found.append("files")
    return tuple(found)


class Relay:
    def __init__(
        self,
        db: Store,
        settings: Settings,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._settings = settings
        self._wake = wake
        self._clock = clock

    async def accept_user_message(
        self, channel_id: str, msg: UserMessage
    ) -> Accepted | Conflicting:
        """Commit a messenger user's message with the outbox item that delivers it.

        The idempotency key is `in:<channel>:<externalMessageId>`. A repeat of a stored
        message is a true repeat (nothing changes) while the first is in flight or delivered;
        if the first one's delivery failed for good (refused by the live chat, or past
        `delivery.give_up_after`), it is queued again: the same `uid`, a fresh item at the tail
        of the chat's lane, the dead items it supersedes deleted. A repeat that differs from
        the stored message is `Conflicting`. One write transaction: two resends at once queue
        once. Raises StorageUnavailable when the database cannot take it, and InvalidInput
        (`too_many_files`) for more than `server.max_files` files: the messenger is told, so
        nothing is cut silently.
        """
        limit = self._settings.server.max_files
        if len(msg.files) > limit:
            raise InvalidInput(
                "too_many_files",
                f"data.files: {len(msg.files)} files; a message takes at most {limit}",
            )
        livechat_id = self._settings.messengers[channel_id].livechat
        dedupe_key = f"in:{channel_id}:{msg.external_message_id}"
        url_key = self._url_key(livechat_id, chats.client_key(channel_id, msg.external_chat_id))

        def work(conn: Connection) -> Accepted | Conflicting:
            # The chat's lock (PostgreSQL only) is what a READ COMMITTED ingest needs first
            # (docs/decisions.md); under SERIALIZABLE, below, it is not what keeps two works on
            # one chat apart: the server's conflict checks are.
            chats.lock_chat(conn, channel_id, msg.external_chat_id)
            stored = messages.stored(conn, dedupe_key)
            if stored is not None:
                differs = _differences(stored, msg)
                if differs:
                    return Conflicting(stored.uid, stored.external_chat_id, differs)
                if not _failed_for_good(conn, stored):
                    return Accepted(duplicate=True, uid=stored.uid, session_id=stored.session_id)
            now = self._clock()
            chat_id = chats.upsert_chat(
                conn,
                channel_id=channel_id,
                external_chat_id=msg.external_chat_id,
                name=msg.external_chat_name,
                user_id=msg.external_user_id,
                livechat_id=livechat_id,
                now=now,
                url_key=url_key,
            )
            chats.ensure_user(conn, channel_id, msg.external_user_id)
            session_id, _ = chats.open_session(conn, chat_id, livechat_id, "user", now)
            progress = 0
            if stored is not None:
                uid, message_id = stored.uid, stored.id
                messages.requeue(conn, message_id, session_id)
                # The parts the live chat already took are not sent again: the new attempt
                # starts where the given-up one stopped.
                progress = outbox.dead_progress(conn, ref_id=message_id, kind=TO_LIVECHAT)
                # The failure it was given up with, and a failure outcome that never reached
                # the messenger, are superseded: the new attempt ends with an outcome of its own.
                outbox.drop_dead(conn, ref_id=message_id, kinds=(TO_LIVECHAT, OUTCOME))
            else:
                uid = messages.new_uid()
                message_id = messages.insert(
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
            outbox.enqueue(
                conn,
                kind=TO_LIVECHAT,
                lane=livechat_lane(chat_id),
                ref_id=message_id,
                now=now,
                payload={"parts_done": progress} if progress else None,
            )
            return Accepted(
                duplicate=False, uid=uid, session_id=session_id, requeued=stored is not None
            )

        # SERIALIZABLE (the default) on PostgreSQL: run READ COMMITTED, this work's reads of the
        # chat's open session and customer link escape the conflict checks of the live chat's
        # events (a session closed, a customer linked) that decide on the same rows; the
        # chat's lock alone does not order those. Measured: READ COMMITTED here cut
        # serialization failures from 1.8 to 0.1 per message, but the three-replica kill -9
        # test then failed about one run in five.
        accepted = await self._db.write(work)
        if isinstance(accepted, Accepted) and not accepted.duplicate:
            self._wake()
        return accepted

    async def accept_livechat_events(
        self, livechat_id: str, batch: list[LiveChatEvent]
    ) -> list[CrmAnswer]:
        """Apply a hook's events; return what the live chat should show its agent."""

        def work(conn: Connection) -> tuple[bool, list[CrmAnswer]]:
            queued, answers = False, []
            for event in batch:
                applied = self._apply(conn, livechat_id, event)
                queued |= applied.queued
                if applied.answer is not None:
                    answers.append(applied.answer)
            return queued, answers

        if not batch:
            return []
        queued, answers = await self._db.write(work)
        if queued:
            self._wake()
        return answers

    def _apply(self, conn: Connection, livechat_id: str, event: LiveChatEvent) -> Applied:
        if isinstance(event, OtherEvent):
            chat = chats.find_chat(conn, livechat_id, event.chat) if event.chat else None
            session_id = chats.open_session_id(conn, chat.id) if chat else None
            return Applied(self._record(conn, livechat_id, event.name, event.raw, session_id))
        if isinstance(event, Lifecycle):
            return self._on_lifecycle(conn, livechat_id, event)
        if isinstance(event, AgentMessage):
            found = self._reply_chat(conn, livechat_id, event.chat)
            customer = event.chat.customer_id
            if (
                isinstance(found, str)
                and customer is not None
                and messages.lock_orphans(conn, livechat_id, customer)
            ):
                # Another replica may be linking that customer right now: its commit is waited
                # for, and the chat looked up again, rather than keep an orphan it would miss.
                found = self._reply_chat(conn, livechat_id, event.chat)
            if isinstance(found, str):
                return self._on_unlinked_reply(conn, livechat_id, event, found)
            return self._on_agent_message(conn, livechat_id, found, event)
        chat = chats.find_chat(conn, livechat_id, event.chat)
        if isinstance(event, ConversationState):
            return self._on_conversation(conn, livechat_id, chat, event)
        if chat is None:
            log.warning(
                "relay.unlinked_event",
                livechat=livechat_id,
                kind=type(event).__name__,
                customer_id=event.chat.customer_id,
                client_key=event.chat.client_key,
            )
            payload: dict[str, Any] = {
                "kind": type(event).__name__,
                "customer_id": event.chat.customer_id,
                "client_key": event.chat.client_key,
            }
            return Applied(self._record(conn, livechat_id, "unlinked", payload, None))
        return self._on_read(conn, chat, event)

    def _record(
        self,
        conn: Connection,
        livechat_id: str,
        name: str,
        payload: dict[str, Any],
        session_id: int | None,
        unlinked_reason: str | None = None,
        remote_chat_id: str | None = None,
    ) -> bool:
        """Keep the event and queue it for every subscription that wants it."""
        now = self._clock()
        event_id = events.record(
            conn,
            livechat_id=livechat_id,
            name=name,
            payload=payload,
            session_id=session_id,
            now=now,
            unlinked_reason=unlinked_reason,
            remote_chat_id=remote_chat_id,
        )
        queued = False
        for sub in self._settings.subscriptions:
            if sub.wants(livechat_id, name):
                outbox.enqueue(
                    conn,
                    kind=TO_SUBSCRIBER,
                    lane=subscriber_lane(sub.key),
                    ref_id=event_id,
                    payload={"subscription": sub.key},
                    now=now,
                )
                queued = True
        return queued

    # --- an operator's reply: delivered, kept until its chat is linked, or a dead letter ------

    def _reply_chat(self, conn: Connection, livechat_id: str, ref: ChatRef) -> chats.ChatRow | str:
        """The chat an operator's reply is for, or why there is none.

        Found by our client key or the live chat's customer id (`chats.find_chat`). Failing
        that, a client key (JivoChat's `recipient.id`: the `sender.id` the bridge sent, which is
        `<messenger id>:<externalChatId>`) is read back into its messenger chat, and the chat is
        stored again when that messenger is configured for this live chat: its row was lost (a
        restored or a fresh database), not the chat. A customer id cannot be read back."""
        chat = chats.find_chat(conn, livechat_id, ref)
        if chat is not None:
            return chat
        if ref.client_key is None:
            return f"no chat is linked to customer {ref.customer_id!r} of live chat {livechat_id!r}"
        key = ref.client_key
        parsed = chats.parse_client_key(key)
        if parsed is None:
            return f"no chat is stored for key {key!r}, and it names no messenger chat"
        channel_id, external_chat_id = parsed
        messenger = self._settings.messengers.get(channel_id)
        if messenger is None:
            return f"no chat is stored for key {key!r}: messenger {channel_id!r} is not configured"
        if messenger.livechat != livechat_id:
            return (
                f"no chat is stored for key {key!r}: messenger {channel_id!r} belongs to"
                f" live chat {messenger.livechat!r}, not {livechat_id!r}"
            )
        chat = chats.recover_chat(
            conn,
            channel_id=channel_id,
            external_chat_id=external_chat_id,
            livechat_id=livechat_id,
            now=self._clock(),
        )
        if chat is None:
            return f"the chat of key {key!r} is stored under another live chat"
        log.warning("relay.chat_recovered", livechat=livechat_id, client_key=key, chat=chat.id)
        return chat

    def _on_unlinked_reply(
        self, conn: Connection, livechat_id: str, event: AgentMessage, reason: str
    ) -> Applied:
        """A reply no chat was found for. One naming a live chat's customer id is kept as an
        orphan: the live chat may have answered before the bridge stored that id, and it is
        delivered once it is (`adopt_orphans`), or made a dead letter after
        `retention.orphan_after` (`bury_orphans`). Any other (a client key that names no
        chat this live chat can reach) is a dead letter at once, and a repeat of it (the same
        message id) is dropped: it is kept once. Either way the event log keeps an `unlinked`
        event with the operator's words, for subscribers (an orphan's repeat too: the orphans
        table keeps it once)."""
        ref = event.chat
        if ref.customer_id is None and self._kept_already(conn, livechat_id, event) is not None:
            return Applied()  # a repeat of a reply kept already: nothing new to keep or tell
        log.warning(
            "relay.unlinked_event",
            livechat=livechat_id,
            kind=type(event).__name__,
            customer_id=ref.customer_id,
            client_key=ref.client_key,
        )
        payload: dict[str, Any] = {
            "kind": type(event).__name__,
            "customer_id": ref.customer_id,
            "client_key": ref.client_key,
            **_reply_fields(event),
        }
        if ref.customer_id is not None:
            self._keep_orphan(conn, livechat_id, ref.customer_id, event)
        else:
            parsed = chats.parse_client_key(ref.client_key) if ref.client_key else None
            payload["dead_letter"] = self.bury_reply(
                conn, livechat_id, event, reason, channel_id=parsed[0] if parsed else None
            )
        return Applied(self._record(conn, livechat_id, "unlinked", payload, None))

    def _keep_orphan(
        self, conn: Connection, livechat_id: str, customer_id: str, event: AgentMessage
    ) -> None:
        operator = event.operator
        messages.keep_orphan(
            conn,
            livechat_id=livechat_id,
            customer_id=customer_id,
            message_id=event.message_id,
            text=event.text,
            files=event.files,
            operator_id=operator.id if operator else None,
            operator_name=operator.name if operator else None,
            now=self._clock(),
        )

    def adopt_orphans(self, conn: Connection, chat_id: int) -> bool:
        """The chat's customer id was just stored: deliver what its operator already wrote."""
        chat = chats.get_chat(conn, chat_id)
        if chat is None or chat.customer_id is None:
            return False
        queued = False
        for message_id, text, files, operator_id, operator_name in messages.take_orphans(
            conn, chat.livechat_id, chat.customer_id
        ):
            event = AgentMessage(
                chat=ChatRef(customer_id=chat.customer_id),
                message_id=message_id,
                text=text,
                files=files,
                operator=Operator(operator_id, operator_name)
                if operator_id or operator_name
                else None,
            )
            queued |= self._on_agent_message(conn, chat.livechat_id, chat, event).queued
        return queued

    # --- operator replies no chat was found for: dead letters --------------------------

    def bury_reply(
        self,
        conn: Connection,
        livechat_id: str,
        event: AgentMessage,
        reason: str,
        *,
        channel_id: str | None = None,
        received_at: float | None = None,
    ) -> int:
        """Keep an operator's reply that cannot be delivered as a dead letter with its text
        (outbox kind `KEPT_REPLY`), for an admin to retry or purge; return its outbox id. A
        repeat (the same live-chat message id, for the same chat) is kept once: the id of the
        dead letter already holding it is returned.

        The payload: {"livechat_id", "customer_id", "client_key", "channel_id", "message_id",
        "text", "files": [{"name", "url", "size"}], "operator_id", "operator_name",
        "received_at" (Unix time)}."""
        now = self._clock()
        ref = event.chat
        kept = self._kept_already(conn, livechat_id, event)
        if kept is not None:
            return kept
        payload = {
            "livechat_id": livechat_id,
            "customer_id": ref.customer_id,
            "client_key": ref.client_key,
            "channel_id": channel_id,
            **_reply_fields(event),
            "received_at": now if received_at is None else received_at,
        }
        item_id = outbox.bury_new(
            conn,
            kind=KEPT_REPLY,
            lane=_kept_lane(livechat_id, ref),
            payload=payload,
            error=reason,
            now=now,
        )
        log.warning(
            "relay.reply_dead",
            livechat=livechat_id,
            customer_id=ref.customer_id,
            client_key=ref.client_key,
            message_id=event.message_id,
            item=item_id,
            reason=reason,
        )
        return item_id

    @staticmethod
    def _kept_already(conn: Connection, livechat_id: str, event: AgentMessage) -> int | None:
        """The dead letter already holding this reply (the live chat sent it again), if any."""
        if event.message_id is None:
            return None
        kept = outbox.find_kept_reply(conn, _kept_lane(livechat_id, event.chat), event.message_id)
        if kept is not None:
            log.info("relay.reply_dead_repeat", livechat=livechat_id, item=kept)
        return kept

    def bury_orphans(self, conn: Connection, cutoff: float, limit: int) -> int:
        """Orphans received before `cutoff` whose customer was never linked become dead
        letters; return how many (at most `limit`)."""
        orphans = messages.take_expired_orphans(conn, cutoff, limit)
        for orphan in orphans:
            event = AgentMessage(
                chat=ChatRef(customer_id=orphan.customer_id),
                message_id=orphan.message_id,
                text=orphan.text,
                files=orphan.files,
                operator=_operator(orphan.operator_id, orphan.operator_name),
            )
            reason = (
                f"no chat is linked to customer {orphan.customer_id!r} of live chat"
                f" {orphan.livechat_id!r} after {self._settings.retention.orphan_after:g} h"
            )
            self.bury_reply(conn, orphan.livechat_id, event, reason, received_at=orphan.received_at)
        return len(orphans)

    def route_kept_reply(self, conn: Connection, payload: dict[str, Any]) -> str | None:
        """Try a dead letter of kind `KEPT_REPLY` again: None when it is now queued for its
        chat's messenger (or was delivered before), else why it still cannot be. Its chat is
        found, or recovered from its client key, as when it first came (`_reply_chat`)."""
        livechat_id = str(payload["livechat_id"])
        ref = ChatRef(customer_id=payload.get("customer_id"), client_key=payload.get("client_key"))
        chat = self._reply_chat(conn, livechat_id, ref)
        if isinstance(chat, str):
            return chat
        reason = self._undeliverable(conn, chat)
        if reason is not None:
            return reason
        event = AgentMessage(
            chat=ref,
            message_id=payload.get("message_id"),
            text=str(payload.get("text", "")),
            files=messages.files_from(payload.get("files") or []),
            operator=_operator(payload.get("operator_id"), payload.get("operator_name")),
        )
        self._on_agent_message(conn, livechat_id, chat, event)
        return None

    def _operator_sessions(self, chat: chats.ChatRow) -> bool:
        messenger = self._settings.messengers.get(chat.channel_id)
        return messenger is not None and messenger.operator_sessions

    def _undeliverable(self, conn: Connection, chat: chats.ChatRow) -> str | None:
        """Why a reply for this chat cannot be queued for its messenger now, or None. A
        messenger that is configured but not active (disconnected, interrupted) is no reason:
        its replies are queued and held."""
        if chat.channel_id not in self._settings.messengers:
            return f"messenger {chat.channel_id!r} is not configured (removed from the config?)"
        if chats.open_session_id(conn, chat.id) is None and not self._operator_sessions(chat):
            return SESSION_REFUSED
        return None

    def _on_agent_message(
        self, conn: Connection, livechat_id: str, chat: chats.ChatRow, event: AgentMessage
    ) -> Applied:
        """Store an operator's reply and queue it for the chat's messenger, in the chat's open
        session or in one the operator opens (when the messenger allows it).

        A reply that cannot be queued (`_undeliverable`: its messenger was removed from the
        config, or there is no open session and the messenger allows no operator-started one)
        becomes a dead letter with its text, and a `message.refused` event says so to
        subscribers (docs/decisions.md, "Operator replies that cannot be delivered"). A repeat
        of a live-chat message id already stored (`out:<live chat>:<id>`) is dropped on
        purpose: that reply is delivered or on its way, and a second copy would reach the user
        twice."""
        now = self._clock()
        dedupe_key = f"out:{livechat_id}:{event.message_id}" if event.message_id else None
        if dedupe_key and messages.seen(conn, dedupe_key):
            return Applied()
        reason = self._undeliverable(conn, chat)
        if reason is not None:
            return self._refuse_reply(conn, livechat_id, chat, event, reason)
        session_id, _ = chats.open_session(conn, chat.id, livechat_id, "operator", now)
        uid = messages.new_uid()
        files = self._keep_files(conn, livechat_id, chat, session_id, uid, event)
        operator = event.operator
        message_id = messages.insert(
            conn,
            uid=uid,
            dedupe_key=dedupe_key,
            session_id=session_id,
            chat_id=chat.id,
            direction="out",
            text=event.text,
            files=files,
            now=now,
            remote_id=event.message_id,
            operator_id=operator.id if operator else None,
            operator_name=operator.name if operator else None,
        )
        outbox.enqueue(
            conn,
            kind=TO_MESSENGER,
            lane=messenger_lane(chat.id),
            channel_id=chat.channel_id,
            ref_id=message_id,
            now=now,
        )
        return Applied(queued=True)

    def _refuse_reply(
        self,
        conn: Connection,
        livechat_id: str,
        chat: chats.ChatRow,
        event: AgentMessage,
        reason: str,
    ) -> Applied:
        """Keep a reply for a known chat that cannot be queued as a dead letter, named by the
        chat's client key so a retry finds the chat again, and record `message.refused`:
        {"reason", "chat_id", "message_id", "dead_letter" (its outbox id)}. A repeat of a reply
        kept already is dropped: it is kept once, and told once."""
        event = replace(
            event, chat=ChatRef(customer_id=event.chat.customer_id, client_key=chat.client_key)
        )
        if self._kept_already(conn, livechat_id, event) is not None:
            return Applied()  # a repeat of a reply kept already: nothing new to keep or tell
        item_id = self.bury_reply(conn, livechat_id, event, reason, channel_id=chat.channel_id)
        payload = {
            "reason": reason,
            "chat_id": chat.id,
            "message_id": event.message_id,
            "dead_letter": item_id,
        }
        return Applied(self._record(conn, livechat_id, "message.refused", payload, None))

    def _keep_files(
        self,
        conn: Connection,
        livechat_id: str,
        chat: chats.ChatRow,
        session_id: int,
        uid: str,
        event: AgentMessage,
    ) -> tuple[FileRef, ...]:
        """The files an operator's reply passes on: the first `server.max_files`. A live chat
        is not refused (it may not resend, and the reply would be lost): the rest are kept in
        the event log as `message.files_dropped`, names and URLs, for an admin to pass on."""
        limit = self._settings.server.max_files
        if len(event.files) <= limit:
            return event.files
        dropped = event.files[limit:]
        log.warning(
            "relay.files_dropped", channel=chat.channel_id, message=uid, dropped=len(dropped)
        )
        payload = {
            "message": uid,
            "remote_message_id": event.message_id,
            "chat_id": chat.external_chat_id,
            "channel": chat.channel_id,
            "kept": limit,
            "dropped": [{"name": f.name, "url": f.url, "size": f.size} for f in dropped],
        }
        self._record(conn, livechat_id, "message.files_dropped", payload, session_id)
        return event.files[:limit]

    def _on_conversation(
        self,
        conn: Connection,
        livechat_id: str,
        chat: chats.ChatRow | None,
        event: ConversationState,
    ) -> Applied:
        now = self._clock()
        if chat is None:
            # Kept under its own name, with the live chat's own body, for subscribers.
            log.info("relay.unlinked_conversation", livechat=livechat_id, name=event.name)
            name = event.name_if_unknown or event.name
            reason = f"customerId {event.chat.customer_id}: no chat of the bridge has it"
            return Applied(self._record(conn, livechat_id, name, event.raw, None, reason))
        if event.open:
            session_id = chats.reopen_last_session(conn, chat.id)
            if session_id is None and self._operator_sessions(chat):
                session_id, _ = chats.open_session(conn, chat.id, livechat_id, "operator", now)
            if session_id is not None:
                chats.set_session_url(conn, session_id, event.url)
        else:
            session_id = chats.close_session(conn, chat.id, now)
        return Applied(self._record(conn, livechat_id, event.name, event.raw, session_id))

    def _on_read(self, conn: Connection, chat: chats.ChatRow, event: AgentRead) -> Applied:
        target = messages.find_inbound(conn, chat.id, event.message_id)
        if target is None or target.status == "read" or target.external_id is None:
            return Applied()
        messages.set_status(conn, target.id, "read")
        outbox.enqueue(
            conn,
            kind=READ,
            lane=messenger_lane(chat.id),
            channel_id=chat.channel_id,
            ref_id=target.id,
            payload={"external_id": target.external_id},
            now=self._clock(),
        )
        return Applied(queued=True)

    def _on_lifecycle(self, conn: Connection, livechat_id: str, event: Lifecycle) -> Applied:
        link = self._link(conn, livechat_id, event)
        answer = None
        if link.chat is not None:
            answer = self._lifecycle_effects(conn, link.chat, link.session_id, event)
        else:
            log.info("relay.unlinked_lifecycle", livechat=livechat_id, kind=event.name)
        queued = self._record(
            conn,
            livechat_id,
            event.name,
            event.raw,
            link.session_id,
            link.why_not,
            event.chat.conversation_id,
        )
        return Applied(queued, answer)

    def _lifecycle_effects(
        self,
        conn: Connection,
        chat: chats.ChatRow,
        session_id: int | None,
        event: Lifecycle,
    ) -> CrmAnswer | None:
        """What a life-cycle event linked to this chat (and session) changes; the answer the
        agent is to see, if the event wants one."""
        if event.contact is not None and not event.closes:
            self._set_contact(conn, chat, event.contact)
        if session_id is None:
            return None
        agent = event.agent
        if event.accepts or event.chat.conversation_id:
            accepted = agent is not None and event.accepts
            chats.link_session(
                conn,
                session_id,
                event.chat.conversation_id,
                agent.id if agent and accepted else None,
                agent.name if agent and accepted else None,
            )
        if event.assign_to:
            chats.set_crm_link(conn, session_id, event.assign_to)
        if event.closes:
            transcript = (
                None
                if event.transcript is None
                else [
                    {
                        "sender": t.sender,
                        "text": t.text,
                        "timestamp": t.timestamp,
                        "agent_id": t.agent_id,
                    }
                    for t in event.transcript
                ]
            )
            chats.finish_session(conn, session_id, transcript, self._clock())
        return self._crm_answer(conn, chat, session_id) if event.wants_answer else None

    def _link(self, conn: Connection, livechat_id: str, event: Lifecycle) -> Link:
        """The chat and session a life-cycle event speaks of. The ways, in order:

        1. `user_token` equal to the chat's client key (set only by a website widget);
        2. `page.url` equal to the chat's URL the bridge sent as `sender.url` (bridge/chat_links.py;
           inferred, see connectors/jivochat.py);
        3. a JivoChat `chat_id` linked to a session before (by an earlier event or an admin);
        4. the visitor's phone as a number, or email trimmed and case-folded
           (bridge/core/contacts.py), equal to the messenger user's profile phone or to a contact
           stored on the chat; the latest such chat.

        The contract lists `chat_id` last; it comes before the contact details here because it
        is a fact, where a phone or an email can be shared by several chats: an admin's link by
        hand, or the first event's, must not be overridden by a later event's contact details.
        A key of 1 or 2 naming another chat than the `chat_id`'s session moves the `chat_id`."""
        ref, tried = event.chat, []
        chat = None
        if ref.client_key is None:
            tried.append("user_token: absent")
        else:
            chat = chats.find_chat(conn, livechat_id, ChatRef(client_key=ref.client_key))
            if chat is None:
                tried.append("user_token: no chat has this key")
        if chat is None:
            key = chat_links.key_in_url(ref.page_url)
            if key is not None:
                chat = chats.find_chat_by_url_key(conn, livechat_id, key)
            if chat is None:
                tried.append(
                    "page.url: absent"
                    if not ref.page_url
                    else "page.url: no chat of the bridge has this URL"
                )
        session_id = None
        if ref.conversation_id is None:
            tried.append("chat_id: absent")
        else:
            found = chats.find_session_by_remote(conn, livechat_id, ref.conversation_id)
            if found is not None and (chat is None or found[1] == chat.id):
                session_id = found[0]
                chat = chat or chats.get_chat(conn, found[1])
            elif found is None:
                tried.append(f"chat_id {ref.conversation_id}: not linked to a session before")
        if chat is None:
            chat = self._link_by_contact(conn, livechat_id, ref, tried)
        if chat is not None and session_id is None:
            session_id = chats.open_session_id(conn, chat.id)
            if session_id is None and event.closes:
                session_id = chats.last_session_id(conn, chat.id)
            if session_id is None:
                return Link(chat, None, f"chat {chat.client_key}: no open session")
        return Link(chat, session_id, None if chat else "; ".join(tried))

    def _link_by_contact(
        self, conn: Connection, livechat_id: str, ref: ChatRef, tried: list[str]
    ) -> chats.ChatRow | None:
        phone = contacts.phone_key(ref.phone, self._region(livechat_id))
        email = contacts.email_key(ref.email)
        chat = chats.find_chat_by_contact(conn, livechat_id, email, phone)
        if chat is None:
            if not ref.phone:
                tried.append("phone: absent")
            elif phone is None:
                tried.append("phone: not a phone number")
            else:
                tried.append(f"phone {phone}: no profile or contact has it")
            tried.append(f"email {email}: no contact has it" if email else "email: absent")
        return chat

    async def link_by_hand(
        self,
        event_id: int,
        session_id: int,
        parse: Callable[[str, dict[str, Any]], list[LiveChatEvent]],
    ) -> HandLink:
        """An admin links an event to a session: the event, every other unlinked event of the
        same live-chat `chat_id`, and that `chat_id` itself, so that later events link too.
        Their effects are applied in order as if they had linked on arrival (a `chat_finished`
        closes the session and keeps its transcript); subscribers are not told again.
        `parse(livechat_id, payload)` reads a stored event's payload (the live chat's
        connector)."""

        def work(conn: Connection) -> HandLink:
            return self._link_by_hand(conn, event_id, session_id, parse)

        done = await self._db.write(work)
        if done.error is None:
            log.info("relay.linked_by_hand", session=session_id, events=len(done.events))
        return done

    def _link_by_hand(
        self,
        conn: Connection,
        event_id: int,
        session_id: int,
        parse: Callable[[str, dict[str, Any]], list[LiveChatEvent]],
    ) -> HandLink:
        stored = events.get(conn, event_id)
        if stored is None:
            return HandLink(error=("unknown_event", "no event with this id"))
        if stored.session_id is not None:
            # A link an event or an admin made is not moved silently.
            return HandLink(
                error=(
                    "already_linked",
                    f"the event is linked to session {stored.session_id} already",
                )
            )
        if not _links_by_hand(stored, parse):
            return HandLink(
                error=(
                    "not_linkable",
                    "only a JivoChat Webhooks-API event can be linked by hand (an operator's"
                    " reply that found no chat is a dead letter: retry it from the outbox)",
                )
            )
        found = chats.session_chat(conn, session_id)
        if found is None:
            return HandLink(error=("unknown_session", "no session with this id"))
        chat_id, session_livechat = found
        if session_livechat != stored.livechat_id:
            return HandLink(
                error=(
                    "invalid_field",
                    f"session_id: the session belongs to live chat {session_livechat!r},"
                    f" the event to {stored.livechat_id!r}",
                )
            )
        chat = chats.get_chat(conn, chat_id)
        assert chat is not None
        linked = [stored]
        if stored.remote_chat_id is not None:
            linked += [
                e
                for e in events.unlinked_of_remote_chat(
                    conn, stored.livechat_id, stored.remote_chat_id
                )
                if e.id != stored.id
            ]
            chats.link_session(conn, session_id, stored.remote_chat_id, None, None)
        for event in sorted(linked, key=lambda e: e.id):
            events.set_session(conn, event.id, session_id)
            try:
                parsed = parse(event.livechat_id, event.payload)
            except InvalidInput:  # a record of the bridge's own, not the live chat's body
                continue
            for item in parsed:
                if isinstance(item, Lifecycle):
                    self._lifecycle_effects(conn, chat, session_id, item)
        return HandLink(tuple(sorted(e.id for e in linked)), stored.remote_chat_id)

    def _region(self, livechat_id: str) -> str | None:
        """The default region phone numbers of this live chat's chats are read in."""
        settings = self._settings.livechats.get(livechat_id)
        return settings.phone_region() if settings is not None else None

    def _channel_region(self, channel_id: str) -> str | None:
        messenger = self._settings.messengers.get(channel_id)
        return self._region(messenger.livechat) if messenger else None

    def _url_key(self, livechat_id: str, client_key: str) -> str:
        secret = self._settings.livechats[livechat_id].hook_token.get_secret_value()
        return chat_links.url_key(secret, client_key)

    def _set_contact(self, conn: Connection, chat: chats.ChatRow, contact: Contact) -> None:
        chats.set_contact(
            conn,
            chat.id,
            _contact_json(contact),
            contacts.phone_key(contact.phone, self._region(chat.livechat_id)),
            contacts.email_key(contact.email),
        )

    def save_profile(
        self, conn: Connection, channel_id: str, profile: UserProfile, now: float
    ) -> None:
        """Store a messenger user's fetched profile, its phone keyed for linking."""
        key = contacts.phone_key(profile.phone, self._channel_region(channel_id))
        chats.save_profile(conn, channel_id, profile, now, key)

    async def key_old_contacts(self) -> int:
        """Key the phones and emails stored before keys existed (storage/migrations.py V5), in
        batches; a no-op once done (partial indexes find what is left). Returns rows keyed."""

        def users(conn: Connection) -> int:
            rows = chats.unkeyed_users(conn, KEYING_BATCH)
            for channel_id, user_id, phone in rows:
                key = contacts.phone_key(phone, self._channel_region(channel_id))
                chats.set_user_phone_key(conn, channel_id, user_id, phone, key)
            return len(rows)

        def chat_contacts(conn: Connection) -> int:
            rows = chats.unkeyed_contacts(conn, KEYING_BATCH)
            for chat_id, livechat_id, contact in rows:
                contact = contact if isinstance(contact, dict) else {}
                phone, email = contact.get("phone"), contact.get("email")
                chats.set_contact_keys(
                    conn,
                    chat_id,
                    contacts.phone_key(phone, self._region(livechat_id))
                    if isinstance(phone, str)
                    else None,
                    contacts.email_key(email) if isinstance(email, str) else None,
                )
            return len(rows)

        total = 0
        for work in (users, chat_contacts):
            while done := await self._db.write(work):
                total += done
        return total

    def _crm_answer(self, conn: Connection, chat: chats.ChatRow, session_id: int) -> CrmAnswer:
        found = chats.get_user(conn, chat.channel_id, chat.user_id)
        profile = found[0] if found else UserProfile(chat.user_id)
        messenger = self._settings.messengers.get(chat.channel_id)
        channel_name = messenger.name if messenger else chat.channel_id
        opened = datetime.fromtimestamp(chats.session_opened_at(conn, session_id), UTC)
        return CrmAnswer(
            contact=Contact(
                name=profile.username or chat.name or profile.user_id,
                phone=profile.phone,
                description=f"{channel_name} user {profile.user_id}",
            ),
            fields=(
                ("Messenger", channel_name),
                ("User ID", profile.user_id),
                ("Session started", opened.strftime("%Y-%m-%d %H:%M:%S UTC")),
            ),
            # The console's page (a browser, signed in), not the JSON API (a Bearer token).
            link=f"{self._settings.server.public_url}/admin/ui/sessions/{session_id}",
        )

    async def user_read(self, channel_id: str, uid: str) -> None:
        """The messenger reports that its user read an operator's message."""

        def work(conn: Connection) -> bool:
            return messages.mark_read_by_uid(conn, channel_id, uid)

        await self._db.write(work)

    async def known_profile(self, channel_id: str, user_id: str) -> UserProfile | None:
        found = await chats.read_user(self._db, channel_id, user_id)
        return found[0] if found else None
