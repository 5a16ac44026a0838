"""JivoChat (shared/protocols/jivochat.md): the Chat API for messages, the Webhooks API for events.

Both of JivoChat's APIs post to the same bridge URL; a body with `event_name` is a Webhooks-API
event, a body with `recipient` and `message` is a Chat-API agent message. The models are
tolerant on purpose: ids come as strings or numbers, optional fields may be null or absent,
unknown fields are ignored and unknown events are kept, never refused.

What links a Webhooks-API event to the bridge's chat (decided in `bridge.relay.Relay._link`;
shared/protocols/jivochat.md, "Linking Webhooks-API events"): JivoChat documents no key common
to its two APIs, and an event for a Chat-API client usually has no `user_token`. So every
client message carries `sender.url`, the chat's own URL at the bridge (bridge/chat_links.py),
and an event's `page.url` is read as the page its visitor is on. **Inferred** (from public
client code, not documented): JivoChat reports the client's `sender.url` as that `page.url`.
The other ways stay: `user_token`, the visitor's phone and email, a `chat_id` linked before.
"""

from __future__ import annotations

import asyncio
import mimetypes
import time
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator

from bridge.core.config import PhoneRegion, RequiredSecret, http_url
from bridge.core.errors import InvalidInput
from bridge.core.model import (
    AgentMessage,
    ChatRef,
    Contact,
    CrmAnswer,
    Customer,
    Delivered,
    DeliveryResult,
    Failed,
    FileRef,
    Lifecycle,
    LiveChatEvent,
    Operator,
    OtherEvent,
    OutgoingMessage,
    Retry,
    TranscriptLine,
)
from connectors import http as outside
from connectors.base import LiveChatSettingsBase
from connectors.wire import (
    WireModel,
    empty_list_as_null,
    id_str,
    json_object,
    null_as_default,
    null_as_empty,
    validate,
)

# Event names as documented, with the quirks real payloads have mapped to one name each.
EVENT_ALIASES = {"offline_messages": "offline_message"}
ANSWERED = {"chat_accepted", "chat_updated"}
ACCEPTED = "chat_accepted"  # an agent took the chat: the event's agent is the session's
FINISHED = "chat_finished"
FILE_TYPES = {"photo", "video", "document", "audio", "file", "image"}


class JivochatSettings(LiveChatSettingsBase):
    """`[livechats.<id>]` with `kind = "jivochat"`."""

    kind: Literal["jivochat"]
    # The Chat API channel's URL carries a random secret in its path: treated as a secret.
    chat_api_url: Annotated[
        SecretStr, AfterValidator(lambda v: SecretStr(http_url(v.get_secret_value())))
    ]
    hook_token: RequiredSecret
    status_timeout: float = Field(default=2.0, gt=0)
    # Seconds /readyz reuses the answer of the Chat API's /status (0: probe on every /readyz,
    # still one probe at a time).
    status_cache: float = Field(default=30.0, ge=0)
    # Reads phone numbers written without "+" (in events and profiles) as national numbers of
    # this country when linking events to chats; None: such numbers are read as international.
    default_region: PhoneRegion | None = None

    def named_secrets(self) -> list[tuple[str, SecretStr]]:
        return [("hook_token", self.hook_token), ("chat_api_url", self.chat_api_url)]

    def secret_values(self) -> list[str]:
        url = self.chat_api_url.get_secret_value()
        # The URL's random path part too: it may be logged apart from the rest.
        return [self.hook_token.get_secret_value(), url, url.rstrip("/").rsplit("/", 2)[-2]]

    def phone_region(self) -> str | None:
        return self.default_region


# --- Webhooks API: the documented objects (seed 001's field tables) ------------------------


class Visitor(WireModel):
    name: str | None = None
    email: str | None = None
    phone: str | None = None
    number: str | None = None
    description: str | None = None
    social: dict[str, Any] | None = None
    chats_count: int | str | None = None

    _ids = field_validator("number", "phone", mode="before")(id_str)
    _objects = field_validator("social", mode="before")(empty_list_as_null)


class Agent(WireModel):
    id: str | None = None
    name: str | None = None
    email: str | None = None
    phone: str | None = None

    _ids = field_validator("id", "phone", mode="before")(id_str)


class Department(WireModel):
    id: str | None = None
    name: str | None = None

    _ids = field_validator("id", mode="before")(id_str)


class Call(WireModel):
    type: str | None = None
    phone: str | None = None
    status: str | None = None
    reason: str | None = None
    record_url: str | None = None

    _ids = field_validator("phone", mode="before")(id_str)


class ChatLogMessage(WireModel):
    timestamp: float | None = None
    type: str | None = None
    agent_id: str | None = None
    message: str | None = None
    blacklisted: bool | None = None

    _ids = field_validator("agent_id", mode="before")(id_str)


class ChatLog(WireModel):
    messages: list[ChatLogMessage] = []
    rate: str | None = None
    blacklisted: bool | None = None

    _lists = field_validator("messages", mode="before")(null_as_empty)


class Event(WireModel):
    """The fields every Webhooks-API event may carry."""

    event_name: str = Field(min_length=1)
    chat_id: str | None = None
    widget_id: str | None = None
    user_token: str | None = None
    visitor: Visitor | None = None
    department: Department | None = None
    session: dict[str, Any] | None = None
    page: dict[str, Any] | None = None
    analytics: dict[str, Any] | list[Any] | None = None

    _ids = field_validator("chat_id", "widget_id", "user_token", mode="before")(id_str)
    _objects = field_validator(
        "visitor", "department", "session", "page", "analytics", mode="before"
    )(empty_list_as_null)


class AgentEvent(Event):
    """chat_accepted, chat_updated, client_updated, client_attribute_updated."""

    agent: Agent | None = None


class ChatAssigned(AgentEvent):
    assign_to: str | None = None


class ChatFinished(Event):
    agents: list[Agent] = []
    chat: ChatLog | None = None
    plain_messages: str | None = None
    html_messages: str | None = None

    _lists = field_validator("agents", mode="before")(null_as_empty)
    _chat = field_validator("chat", mode="before")(empty_list_as_null)


class CallEvent(AgentEvent):
    call: Call | None = None


class OfflineMessage(Event):
    offline_message_id: str | None = None
    message: str | None = None

    _offline_ids = field_validator("offline_message_id", mode="before")(id_str)


EVENT_MODELS: dict[str, type[Event]] = {
    "chat_accepted": AgentEvent,
    "chat_updated": AgentEvent,
    "client_updated": AgentEvent,
    "client_attribute_updated": AgentEvent,
    "chat_assigned": ChatAssigned,
    "chat_finished": ChatFinished,
    "call_event": CallEvent,
    "offline_message": OfflineMessage,
}

# --- Chat API: an agent's message -----------------------------------------------------------


class ApiSender(WireModel):
    id: str | None = None
    name: str | None = None

    _ids = field_validator("id", mode="before")(id_str)


class ApiRecipient(WireModel):
    id: str = Field(min_length=1)

    _ids = field_validator("id", mode="before")(id_str)


class ApiMessage(WireModel):
    type: str = "text"

    _type = field_validator("type", mode="before")(null_as_default)
    id: str | None = None
    text: str | None = None
    file: str | None = None
    file_name: str | None = None

    _ids = field_validator("id", mode="before")(id_str)


class ApiAgentMessage(WireModel):
    sender: ApiSender | None = None
    recipient: ApiRecipient
    message: ApiMessage


def parse_hook(body: bytes) -> list[LiveChatEvent]:
    doc = json_object(body)
    if "event_name" in doc:
        return [_lifecycle(doc)]
    if "recipient" in doc or "message" in doc:
        return [_agent_message(doc)]
    raise InvalidInput(
        "unknown_body",
        "neither a Webhooks API event (event_name) nor a Chat API message (recipient, message)",
    )


def _lifecycle(doc: dict[str, Any]) -> LiveChatEvent:
    raw_name = doc.get("event_name")
    if not isinstance(raw_name, str) or not raw_name:
        raise InvalidInput("invalid_field", "event_name: must be a non-empty string")
    name = EVENT_ALIASES.get(raw_name, raw_name)
    model = EVENT_MODELS.get(name)
    if model is None:
        return OtherEvent(name, doc)
    event = validate(model, doc)
    visitor = event.visitor
    contact = (
        Contact(visitor.name, visitor.email, visitor.phone, visitor.description)
        if visitor
        else None
    )
    page_url = event.page.get("url") if event.page else None
    chat = ChatRef(
        client_key=event.user_token,
        conversation_id=event.chat_id,
        email=visitor.email if visitor else None,
        phone=visitor.phone if visitor else None,
        page_url=page_url if isinstance(page_url, str) else None,
    )
    agent: Agent | None = None
    if isinstance(event, AgentEvent):
        agent = event.agent
    elif isinstance(event, ChatFinished) and event.agents:
        agent = event.agents[-1]
    transcript = None
    if isinstance(event, ChatFinished) and event.chat is not None:
        transcript = tuple(
            TranscriptLine(m.type or "unknown", m.message or "", m.timestamp, m.agent_id)
            for m in event.chat.messages
        )
    return Lifecycle(
        name=name,
        chat=chat,
        raw=doc,
        contact=contact,
        agent=Operator(agent.id, agent.name) if agent else None,
        wants_answer=name in ANSWERED,
        accepts=name == ACCEPTED,
        closes=name == FINISHED,
        assign_to=event.assign_to if isinstance(event, ChatAssigned) else None,
        transcript=transcript,
    )


def _agent_message(doc: dict[str, Any]) -> LiveChatEvent:
    payload = validate(ApiAgentMessage, doc)
    msg = payload.message
    chat = ChatRef(client_key=payload.recipient.id)
    files: tuple[FileRef, ...] = ()
    if msg.type in FILE_TYPES:
        if not msg.file:
            raise InvalidInput("missing_field", f"message.file: required for a {msg.type} message")
        files = (FileRef(msg.file_name or msg.file.rsplit("/", 1)[-1], msg.file),)
    elif msg.type != "text":
        return OtherEvent(f"chat_api.{msg.type}", doc, chat)  # typing notices and the like
    text = msg.text or ""
    if not text and not files:
        raise InvalidInput("empty_message", "message.text: a message needs text or a file")
    sender = payload.sender
    return AgentMessage(
        chat=chat,
        message_id=msg.id,
        text=text,
        files=files,
        operator=Operator(sender.id, sender.name) if sender else None,
    )


# --- bridge → JivoChat ---------------------------------------------------------------------


def _file_type(file: FileRef) -> str:
    mime, _ = mimetypes.guess_type(file.name or file.url)
    if mime and mime.startswith("image/"):
        return "photo"
    if mime and mime.startswith("video/"):
        return "video"
    return "document"


def client_messages(customer: Customer, message: OutgoingMessage) -> list[dict[str, Any]]:
    """The Chat-API bodies for one message, in order: a `photo`, `video` or `document`
    message per file, then the text as a `text` message of its own. Public Chat-API clients
    send a caption so, and one inside a file message may be dropped (jivochat.md, facts from
    public client code). Part i's id is the bridge's id (i = 0) or `<id>-<i>`: the same on
    every attempt, so JivoChat drops a part it already has."""
    profile = customer.profile
    sender: dict[str, Any] = {
        "id": customer.client_key,
        "name": profile.username or customer.chat_name or profile.user_id,
    }
    if profile.phone:
        sender["phone"] = profile.phone
    if profile.avatar and profile.avatar.startswith(("http://", "https://")):
        sender["photo"] = profile.avatar
    if customer.url:
        sender["url"] = customer.url  # comes back as events' page.url (inferred: see above)
    parts: list[dict[str, Any]] = [
        {"type": _file_type(file), "file": file.url, "file_name": file.name}
        for file in message.files
    ]
    if message.text or not parts:
        parts.append({"type": "text", "text": message.text})
    return [
        {"sender": sender, "message": {**part, "id": _part_id(message.uid, index)}}
        for index, part in enumerate(parts)
    ]


def _part_id(uid: str, index: int) -> str:
    return uid if index == 0 else f"{uid}-{index}"


def crm_reply(answers: list[CrmAnswer]) -> dict[str, Any]:
    if not answers:
        return {"result": "ok"}
    answer = answers[0]
    contact = {
        key: value
        for key, value in (
            ("name", answer.contact.name),
            ("phone", answer.contact.phone),
            ("email", answer.contact.email),
            ("description", answer.contact.description),
        )
        if value
    }
    reply: dict[str, Any] = {
        "result": "ok",
        "contact_info": contact,
        "custom_data": [{"title": title, "content": content} for title, content in answer.fields],
        "enable_assign": answer.link is not None,
    }
    if answer.link is not None:
        reply["crm_link"] = answer.link
    return reply


class JivochatConnector:
    kind = "jivochat"

    def __init__(self, livechat_id: str, settings: JivochatSettings, http: outside.Client) -> None:
        self.livechat_id = livechat_id
        self._url = settings.chat_api_url.get_secret_value()
        self._status_timeout = settings.status_timeout
        self._status_cache = settings.status_cache
        self._http = http
        # /readyz is unauthenticated: without a cache each request would be a call to JivoChat.
        self._probe_lock = asyncio.Lock()
        self._probed: tuple[float, dict[str, Any]] | None = None  # (monotonic time, facts)

    def parse_hook(self, body: bytes) -> list[LiveChatEvent]:
        return parse_hook(body)

    def hook_reply(self, answers: list[CrmAnswer]) -> dict[str, Any]:
        return crm_reply(answers)

    async def deliver(self, customer: Customer, message: OutgoingMessage) -> DeliveryResult:
        """Post the message's parts, one call each, from the first one not yet delivered; a
        failure says how many were (`parts_done`), so the next attempt starts there."""
        bodies = client_messages(customer, message)
        for index in range(message.parts_done, len(bodies)):
            answer = await outside.request(self._http, "POST", self._url, bodies[index])
            result = outside.classify(answer)
            if isinstance(result, Retry | Failed):
                return replace(result, parts_done=index)
            if not isinstance(result, Delivered):
                return result
        return Delivered()

    async def readiness(self) -> dict[str, Any]:
        """Whether agents are online, from the Chat API's /status: informative only.

        The answer is kept `status_cache` seconds (settings; default 30), and concurrent callers
        share one probe: however often /readyz is asked, JivoChat gets at most one /status call
        at a time and one per period. `status_age` says how old the answer is, in seconds.
        """
        async with self._probe_lock:
            now = time.monotonic()
            if self._probed is None or now - self._probed[0] >= self._status_cache:
                self._probed = (now, await self._probe())
                now = time.monotonic()
            at, facts = self._probed
        return {**facts, "status_age": round(now - at, 1)}

    async def _probe(self) -> dict[str, Any]:
        answer = await outside.request(
            self._http, "GET", f"{self._url}/status", seconds=self._status_timeout
        )
        if isinstance(answer, outside.NoResponse):
            return {"kind": self.kind, "agents_online": None, "status_error": answer.error}
        text = answer.body.decode("utf-8", "replace").strip()
        if answer.status != 200 or text not in ("0", "1"):
            return {
                "kind": self.kind,
                "agents_online": None,
                "status_error": outside.describe(answer),
            }
        return {"kind": self.kind, "agents_online": text == "1"}
