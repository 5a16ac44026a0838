"""The Chatvisor-style live chat (shared/protocols/chatvisor.md): REST calls out, hooks in.

The hook takes two shapes, told apart by the `event` field:

- The contract's named events (`conversation.new`, `conversation.status`, `message.new`,
  `message.read`), as a live chat or a relay in front of one sends them.
- Chatvisor's own WebHooks (its public developer documentation, v1.9: a new conversation, a
  status change, a new customer message) POST a bare Conversation object, `{"customerId",
  "status", "lastMessage", "url"}`, with no `event`. Its status decides: `DONE` closes the
  session; `UNREAD` is a new or reopened conversation (the docs fire "new conversation" for a
  new customer or one going from `DONE` back to `UNREAD`); anything else is a status change,
  which reopens a closed session as `UNRESOLVED` does. A bare conversation of a customer the
  bridge does not know is recorded as a new one too (`ConversationState.name_if_unknown`: the
  relay knows whether the customer is known). The
  docs' example spells `lastMessage`'s text key `test`; `text` and `test` are read alike.

Chatvisor sends no webhook for an agent's message: operator replies arrive only from a live
chat that posts `message.new`, which stays supported as it is.

Tagging (`POST <api_url>/customer`) sends the bridge's client key as `id`, a stable unique
string (the docs' example has a number; a string is what stays unique across messengers), and
leaves out `email`, `firstname`, `lastname` and `phone` when there is no value: the public body
has strings there, never null.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import Field, SecretStr, field_validator

from bridge.core.config import HttpUrl, RequiredSecret
from bridge.core.errors import InvalidInput
from bridge.core.model import (
    AgentMessage,
    AgentRead,
    ChatRef,
    ConversationState,
    CrmAnswer,
    Customer,
    Delivered,
    DeliveryResult,
    Failed,
    FileRef,
    LiveChatEvent,
    Operator,
    OtherEvent,
    OutgoingMessage,
    Retry,
)
from connectors import http as outside
from connectors.base import LiveChatSettingsBase
from connectors.wire import (
    WireModel,
    id_str,
    json_object,
    null_as_blank,
    null_as_default,
    null_as_empty,
    validate,
)

CLOSED_STATUS = "DONE"
NEW_STATUS = "UNREAD"


class ChatvisorSettings(LiveChatSettingsBase):
    """`[livechats.<id>]` with `kind = "chatvisor"`."""

    kind: Literal["chatvisor"]
    api_url: HttpUrl
    api_token: RequiredSecret
    hook_token: RequiredSecret

    def named_secrets(self) -> list[tuple[str, SecretStr]]:
        return [("hook_token", self.hook_token), ("api_token", self.api_token)]


class _File(WireModel):
    name: str = ""
    url: str = Field(min_length=1)
    size: int | None = Field(default=None, ge=0)


class _Sender(WireModel):
    type: str
    id: str | None = None
    name: str | None = None

    _ids = field_validator("id", mode="before")(id_str)


class _Message(WireModel):
    id: str | None = None
    text: str = ""
    files: list[_File] = []
    sender: _Sender

    _text = field_validator("text", mode="before")(null_as_blank)
    _files = field_validator("files", mode="before")(null_as_empty)

    _ids = field_validator("id", mode="before")(id_str)


class _MessageNew(WireModel):
    customerId: str = Field(min_length=1)
    message: _Message

    _ids = field_validator("customerId", mode="before")(id_str)


class _MessageRead(WireModel):
    customerId: str = Field(min_length=1)
    messageId: str = Field(min_length=1)

    _ids = field_validator("customerId", "messageId", mode="before")(id_str)


def _last_text(value: Any) -> Any:
    """`lastMessage` as its text: an object with `text` (or `test`, as Chatvisor's docs spell
    it), a bare string, or nothing; anything else is no text rather than an error."""
    if isinstance(value, dict):
        value = value.get("text", value.get("test"))
    return value if isinstance(value, str) else None


class _Conversation(WireModel):
    customerId: str = Field(min_length=1)
    status: str = NEW_STATUS
    url: str | None = None
    lastMessage: str | None = None

    _ids = field_validator("customerId", mode="before")(id_str)
    _status = field_validator("status", mode="before")(null_as_default)
    _last = field_validator("lastMessage", mode="before")(_last_text)


class _ConversationEvent(WireModel):
    conversation: _Conversation


def _conversation(conv: _Conversation, doc: dict[str, Any], name: str | None) -> ConversationState:
    """`name` None: a bare Conversation object, whose name follows from its status."""
    status = conv.status.upper()
    inferred = name is None
    if name is None:
        name = "conversation.new" if status == NEW_STATUS else "conversation.status"
    return ConversationState(
        chat=ChatRef(customer_id=conv.customerId),
        open=status != CLOSED_STATUS,
        name=name,
        url=conv.url,
        raw=doc,
        inferred=inferred,
        last_text=conv.lastMessage,
        # An unknown customer's bare conversation is a new one, whatever its status.
        name_if_unknown="conversation.new" if inferred else None,
    )


def parse_hook(body: bytes) -> list[LiveChatEvent]:
    doc = json_object(body)
    name = doc.get("event")
    if name is None and "customerId" in doc:
        return [_conversation(validate(_Conversation, doc), doc, None)]
    if not isinstance(name, str) or not name:
        raise InvalidInput(
            "missing_field",
            "event: required string is missing (or customerId, for a bare conversation)",
        )

    if name == "message.new":
        event = validate(_MessageNew, doc)
        chat = ChatRef(customer_id=event.customerId)
        if event.message.sender.type != "agent":
            # Customer messages are our own echoes; system notes are kept in the event log.
            return [] if event.message.sender.type == "customer" else [OtherEvent(name, doc, chat)]
        files = tuple(
            FileRef(f.name or f.url.rsplit("/", 1)[-1], f.url, f.size) for f in event.message.files
        )
        if not event.message.text and not files:
            raise InvalidInput("empty_message", "message.text: a message needs text or files")
        sender = event.message.sender
        return [
            AgentMessage(
                chat=chat,
                message_id=event.message.id,
                text=event.message.text,
                files=files,
                operator=Operator(id=sender.id, name=sender.name),
            )
        ]
    if name in ("conversation.new", "conversation.status"):
        return [_conversation(validate(_ConversationEvent, doc).conversation, doc, name)]
    if name == "message.read":
        read = validate(_MessageRead, doc)
        return [AgentRead(ChatRef(customer_id=read.customerId), read.messageId)]
    return [OtherEvent(name, doc)]


def customer_body(customer: Customer) -> dict[str, Any]:
    """The tagging body: `id` the client key; a field with no value is left out, never null."""
    profile = customer.profile
    body: dict[str, Any] = {
        "id": customer.client_key,
        "firstname": profile.username or customer.chat_name or profile.user_id,
        "labels": [f"messenger:{customer.channel_id}"],
    }
    if profile.phone:
        body["phone"] = profile.phone
    return body


_ENCODE_SORTED = json.JSONEncoder(sort_keys=True).encode  # one encoder, not one per delivery


def customer_tag(body: dict[str, Any]) -> str:
    """A digest of what we told the live chat about a customer, to re-tag only on change."""
    return hashlib.sha256(_ENCODE_SORTED(body).encode()).hexdigest()[:16]


class ChatvisorConnector:
    kind = "chatvisor"

    def __init__(self, livechat_id: str, settings: ChatvisorSettings, http: outside.Client) -> None:
        self.livechat_id = livechat_id
        self._api = settings.api_url
        self._auth = {"Authorization": f"Bearer {settings.api_token.get_secret_value()}"}
        self._http = http

    def parse_hook(self, body: bytes) -> list[LiveChatEvent]:
        return parse_hook(body)

    async def deliver(self, customer: Customer, message: OutgoingMessage) -> DeliveryResult:
        body = customer_body(customer)
        tag = customer_tag(body)
        customer_id = customer.customer_id
        if customer_id is None or customer.customer_tag != tag:
            answer = await self._call("/customer", body)
            if not isinstance(answer, Delivered):
                return answer
            customer_id = answer.remote_id
        assert customer_id is not None
        answer = await self._call(
            f"/conversation/{quote(customer_id, safe='')}/message",
            {
                "id": message.uid,
                "text": message.text,
                "files": [{"name": f.name, "size": f.size, "url": f.url} for f in message.files],
                "timestamp": datetime.fromtimestamp(message.created_at, UTC).isoformat(),
            },
        )
        if isinstance(answer, Retry | Failed):
            # The customer was tagged even though the message was not taken: kept all the same.
            return replace(answer, customer_id=customer_id, customer_tag=tag)
        if not isinstance(answer, Delivered):
            return answer
        return Delivered(remote_id=answer.remote_id, customer_id=customer_id, customer_tag=tag)

    async def _call(self, path: str, body: dict[str, Any]) -> DeliveryResult:
        outcome = await outside.request(
            self._http, "POST", self._api + path, body, headers=self._auth
        )
        result = outside.classify(outcome)
        if not isinstance(result, Delivered):
            return result
        assert isinstance(outcome, outside.Response)
        doc = outcome.json()
        remote = doc.get("customerId", doc.get("id")) if isinstance(doc, dict) else None
        if remote is None:
            return Retry(f"{path.rsplit('/', 1)[-1]}: answer without an id")
        return Delivered(remote_id=str(remote))

    def hook_reply(self, answers: list[CrmAnswer]) -> dict[str, Any]:
        return {"result": "ok"}

    async def readiness(self) -> dict[str, Any]:
        return {"kind": self.kind}
