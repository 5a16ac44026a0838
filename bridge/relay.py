"""The relay: decides what an inbound message or event means and commits it with its outbox items.

Nothing here calls an outside party. Each public method is one write transaction; when it
returns, everything it decided is on disk and the delivery worker has been woken.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog

from bridge import chat_links, contacts
from bridge.errors import BadRequest
from bridge.model import (
    AgentMessage,
    AgentRead,
    ChatRef,
    Contact,
    ConversationState,
    CrmAnswer,
    Lifecycle,
    LiveChatEvent,
    Operator,
    OtherEvent,
    UserMessage,
    UserProfile,
)
from bridge.settings import JivochatSettings, Settings
from storage import chats, events, messages, outbox
from storage.database import Database

log = structlog.get_logger("relay")

# Outbox kinds: what the delivery worker does with an item.
TO_LIVECHAT = "livechat.message"
TO_MESSENGER = "messenger.message"
OUTCOME = "messenger.outcome"
READ = "messenger.read"
TO_SUBSCRIBER = "subscriber.event"


def livechat_lane(chat_id: int) -> str:
    return f"lc:{chat_id}"


def messenger_lane(chat_id: int) -> str:
    return f"ms:{chat_id}"


@dataclass(frozen=True, slots=True)
class Applied:
    queued: bool = False  # something was put in the outbox: wake the worker
    answer: CrmAnswer | None = None


def _contact_json(contact: Contact) -> dict[str, Any]:
    return {
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
        "description": contact.description,
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
        url_key = self._url_key(livechat_id, chats.client_key(channel_id, msg.external_chat_id))

        def work(conn: sqlite3.Connection) -> Accepted:
            if messages.seen(conn, dedupe_key):
                return Accepted(duplicate=True)
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
                conn, kind=TO_LIVECHAT, lane=livechat_lane(chat_id), ref_id=message_id, now=now
            )
            return Accepted(duplicate=False, uid=uid, session_id=session_id)

        accepted = await self._db.write(work)
        if not accepted.duplicate:
            self._wake()
        return accepted

    async def accept_livechat_events(
        self, livechat_id: str, batch: list[LiveChatEvent]
    ) -> list[CrmAnswer]:
        """Apply a hook's events; return what the live chat should show its agent."""

        def work(conn: sqlite3.Connection) -> tuple[bool, list[CrmAnswer]]:
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

    def _apply(self, conn: sqlite3.Connection, livechat_id: str, event: LiveChatEvent) -> Applied:
        if isinstance(event, OtherEvent):
            chat = chats.find_chat(conn, livechat_id, event.chat) if event.chat else None
            session_id = chats.open_session_id(conn, chat.id) if chat else None
            return Applied(self._record(conn, livechat_id, event.name, event.raw, session_id))
        if isinstance(event, Lifecycle):
            return self._on_lifecycle(conn, livechat_id, event)
        chat = chats.find_chat(conn, livechat_id, event.chat)
        if isinstance(event, ConversationState):
            return self._on_conversation(conn, livechat_id, chat, event)
        if chat is None:
            log.warning("relay.unlinked_event", livechat=livechat_id, kind=type(event).__name__)
            if isinstance(event, AgentMessage) and event.chat.customer_id is not None:
                self._keep_orphan(conn, livechat_id, event.chat.customer_id, event)
            payload = {
                "kind": type(event).__name__,
                "customer_id": event.chat.customer_id,
                "client_key": event.chat.client_key,
            }
            return Applied(self._record(conn, livechat_id, "unlinked", payload, None))
        if isinstance(event, AgentMessage):
            return self._on_agent_message(conn, livechat_id, chat, event)
        return self._on_read(conn, chat, event)

    def _record(
        self,
        conn: sqlite3.Connection,
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
                    lane=f"sub:{sub.key}",
                    ref_id=event_id,
                    payload={"subscription": sub.key},
                    now=now,
                )
                queued = True
        return queued

    def _keep_orphan(
        self, conn: sqlite3.Connection, livechat_id: str, customer_id: str, event: AgentMessage
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

    def adopt_orphans(self, conn: sqlite3.Connection, chat_id: int) -> bool:
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

    def _operator_sessions(self, chat: chats.ChatRow) -> bool:
        messenger = self._settings.messengers.get(chat.channel_id)
        return messenger is not None and messenger.operator_sessions

    def _on_agent_message(
        self, conn: sqlite3.Connection, livechat_id: str, chat: chats.ChatRow, event: AgentMessage
    ) -> Applied:
        now = self._clock()
        dedupe_key = f"out:{livechat_id}:{event.message_id}" if event.message_id else None
        if dedupe_key and messages.seen(conn, dedupe_key):
            return Applied()
        session_id = chats.open_session_id(conn, chat.id)
        if session_id is None:
            if not self._operator_sessions(chat):
                log.warning("relay.operator_session_refused", channel=chat.channel_id)
                payload = {
                    "reason": "no open session and the messenger does not allow"
                    " operator-started sessions",
                    "chat_id": chat.id,
                    "message_id": event.message_id,
                }
                return Applied(self._record(conn, livechat_id, "message.refused", payload, None))
            session_id, _ = chats.open_session(conn, chat.id, livechat_id, "operator", now)
        operator = event.operator
        message_id = messages.insert(
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
        outbox.enqueue(
            conn,
            kind=TO_MESSENGER,
            lane=messenger_lane(chat.id),
            channel_id=chat.channel_id,
            ref_id=message_id,
            now=now,
        )
        return Applied(queued=True)

    def _on_conversation(
        self,
        conn: sqlite3.Connection,
        livechat_id: str,
        chat: chats.ChatRow | None,
        event: ConversationState,
    ) -> Applied:
        now = self._clock()
        if chat is None:
            # Kept under its own name, with the live chat's own body, for subscribers.
            log.info("relay.unlinked_conversation", livechat=livechat_id, name=event.name)
            name = "conversation.new" if event.inferred else event.name
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

    def _on_read(self, conn: sqlite3.Connection, chat: chats.ChatRow, event: AgentRead) -> Applied:
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

    def _on_lifecycle(
        self, conn: sqlite3.Connection, livechat_id: str, event: Lifecycle
    ) -> Applied:
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
        conn: sqlite3.Connection,
        chat: chats.ChatRow,
        session_id: int | None,
        event: Lifecycle,
    ) -> CrmAnswer | None:
        """What a life-cycle event linked to this chat (and session) changes; the answer the
        agent is to see, if the event wants one."""
        if event.contact is not None and event.name != "chat_finished":
            self._set_contact(conn, chat, event.contact)
        if session_id is None:
            return None
        agent = event.agent
        if event.name == "chat_accepted" or event.chat.conversation_id:
            accepted = agent is not None and event.name == "chat_accepted"
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

    def _link(self, conn: sqlite3.Connection, livechat_id: str, event: Lifecycle) -> Link:
        """The chat and session a life-cycle event speaks of. The ways, in order:

        1. `user_token` equal to the chat's client key (set only by a website widget);
        2. `page.url` equal to the chat's URL the bridge sent as `sender.url` (bridge/chat_links.py;
           inferred, see connectors/jivochat.py);
        3. a JivoChat `chat_id` linked to a session before (by an earlier event or an admin);
        4. the visitor's phone as a number, or email trimmed and case-folded
           (bridge/contacts.py), equal to the messenger user's profile phone or to a contact
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
        self, conn: sqlite3.Connection, livechat_id: str, ref: ChatRef, tried: list[str]
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

        def work(conn: sqlite3.Connection) -> HandLink:
            return self._link_by_hand(conn, event_id, session_id, parse)

        done = await self._db.write(work)
        if done.error is None:
            log.info("relay.linked_by_hand", session=session_id, events=len(done.events))
        return done

    def _link_by_hand(
        self,
        conn: sqlite3.Connection,
        event_id: int,
        session_id: int,
        parse: Callable[[str, dict[str, Any]], list[LiveChatEvent]],
    ) -> HandLink:
        stored = events.get(conn, event_id)
        if stored is None:
            return HandLink(error=("unknown_event", "no event with this id"))
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
            except BadRequest:  # a record of the bridge's own, not the live chat's body
                continue
            for item in parsed:
                if isinstance(item, Lifecycle):
                    self._lifecycle_effects(conn, chat, session_id, item)
        return HandLink(tuple(sorted(e.id for e in linked)), stored.remote_chat_id)

    def _region(self, livechat_id: str) -> str | None:
        """The default region phone numbers of this live chat's chats are read in."""
        settings = self._settings.livechats.get(livechat_id)
        return settings.default_region if isinstance(settings, JivochatSettings) else None

    def _channel_region(self, channel_id: str) -> str | None:
        messenger = self._settings.messengers.get(channel_id)
        return self._region(messenger.livechat) if messenger else None

    def _url_key(self, livechat_id: str, client_key: str) -> str:
        secret = self._settings.livechats[livechat_id].hook_token.get_secret_value()
        return chat_links.url_key(secret, client_key)

    def _set_contact(self, conn: sqlite3.Connection, chat: chats.ChatRow, contact: Contact) -> None:
        chats.set_contact(
            conn,
            chat.id,
            _contact_json(contact),
            contacts.phone_key(contact.phone, self._region(chat.livechat_id)),
            contacts.email_key(contact.email),
        )

    def save_profile(
        self, conn: sqlite3.Connection, channel_id: str, profile: UserProfile, now: float
    ) -> None:
        """Store a messenger user's fetched profile, its phone keyed for linking."""
        key = contacts.phone_key(profile.phone, self._channel_region(channel_id))
        chats.save_profile(conn, channel_id, profile, now, key)

    async def key_old_contacts(self) -> int:
        """Key the phones and emails stored before keys existed (storage/migrations.py V5), in
        batches; a no-op once done (partial indexes find what is left). Returns rows keyed."""

        def users(conn: sqlite3.Connection) -> int:
            rows = chats.unkeyed_users(conn, KEYING_BATCH)
            for channel_id, user_id, phone in rows:
                key = contacts.phone_key(phone, self._channel_region(channel_id))
                chats.set_user_phone_key(conn, channel_id, user_id, phone, key)
            return len(rows)

        def chat_contacts(conn: sqlite3.Connection) -> int:
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

    def _crm_answer(
        self, conn: sqlite3.Connection, chat: chats.ChatRow, session_id: int
    ) -> CrmAnswer:
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
            link=f"{self._settings.server.public_url}/admin/sessions/{session_id}",
        )

    async def user_read(self, channel_id: str, uid: str) -> None:
        """The messenger reports that its user read an operator's message."""

        def work(conn: sqlite3.Connection) -> bool:
            return messages.mark_read_by_uid(conn, channel_id, uid)

        await self._db.write(work)

    async def known_profile(self, channel_id: str, user_id: str) -> UserProfile | None:
        found = await chats.read_user(self._db, channel_id, user_id)
        return found[0] if found else None
