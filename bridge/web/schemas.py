"""What the admin API answers, as typed models: the handlers build each answer with one of these
(`answer(...)`) and `/openapi.json` takes its component schemas from the same classes, so an
answer and its description cannot drift apart.

Times are stored as Unix seconds (floats); a model takes them as stored and writes them as the
API gives every time: ISO 8601, UTC, milliseconds (`2026-11-21T14:03:05.120+00:00`). A field the
storage row has and a model does not is left out of the answer, never passed through unseen.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

from bridge.core.model import ChannelState
from bridge.web.views import SQLITE_MAX_INTEGER


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601, UTC, milliseconds. None for none, and for a time a live chat
    sent that no calendar holds (an infinite or absurd JivoChat transcript timestamp)."""
    if ts is None:
        return None
    try:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
    except (OverflowError, ValueError, OSError):
        return None


Time = Annotated[
    float,
    PlainSerializer(iso, return_type=str | None),
    WithJsonSchema({"type": "string", "format": "date-time"}, mode="serialization"),
]
Count = Annotated[int, Field(ge=0)]


class Answer(BaseModel):
    # Built from storage rows: keys a row has beyond the fields are dropped, not refused. The
    # schema is closed all the same: the answer holds exactly the fields.
    model_config = ConfigDict(extra="ignore", json_schema_extra={"additionalProperties": False})


def answer(model: Answer, status: int = 200) -> web.Response:
    """`model` as the JSON response body."""
    return web.json_response(model.model_dump(mode="json"), status=status)


# --- every error -----------------------------------------------------------------------------


class Error(Answer):
    """Every error body the bridge writes."""

    error: str = Field(description="for people")
    errcode: str = Field(description="for programs")


# --- channels ----------------------------------------------------------------------------------


class Channel(Answer):
    """A messenger channel as an admin sees it; no secret (webhook URL, confirmation code)."""

    id: str
    name: str
    livechat: str
    state: str = Field(json_schema_extra={"enum": [state.value for state in ChannelState]})
    since: Time
    last_error: str | None
    enabled: bool
    held_messages: Count


class ChannelList(Answer):
    channels: list[Channel]


# --- sessions ----------------------------------------------------------------------------------


class Session(Answer):
    id: int
    status: Literal["open", "closed"]
    opened_by: Literal["user", "operator"]
    opened_at: Time
    closed_at: Time | None
    conversation_url: str | None
    livechat_id: str
    channel_id: str
    external_chat_id: str
    chat_name: str | None
    user_id: str
    customer_id: str | None
    messages: Count = Field(description="how many messages")


class SessionList(Answer):
    sessions: list[Session]


class StoredFile(Answer):
    name: str
    url: str
    size: int | None


class SessionMessage(Answer):
    uid: str
    direction: Literal["in", "out"]
    external_id: str | None
    remote_id: str | None
    user_id: str | None
    operator_id: str | None
    operator_name: str | None
    text: str
    files: list[StoredFile]
    status: Literal["pending", "delivered", "failed", "read"]
    created_at: Time


class Contact(Answer):
    name: str | None
    email: str | None
    phone: str | None
    description: str | None


class TranscriptLine(Answer):
    sender: str = Field(description="visitor, agent, or what the live chat said")
    text: str
    timestamp: Time | None = Field(
        description="JivoChat's time of the line; null when it sent none or none valid"
    )
    agent_id: str | None


class SessionDetail(Answer):
    id: int
    chat_id: int
    livechat_id: str
    status: Literal["open", "closed"]
    opened_by: Literal["user", "operator"]
    opened_at: Time
    closed_at: Time | None
    conversation_url: str | None
    agent_id: str | None
    agent_name: str | None
    remote_chat_id: str | None = Field(description="JivoChat's chat_id")
    crm_link: str | None = Field(description="what a JivoChat agent assigned")
    transcript: list[TranscriptLine] | None = Field(
        description="JivoChat's transcript, kept when the chat finished"
    )
    channel_id: str
    external_chat_id: str
    chat_name: str | None
    user_id: str
    client_key: str
    customer_id: str | None
    contact: Contact | None
    messages: list[SessionMessage] = Field(
        max_length=1000, description="the first 1000, oldest first"
    )


# --- the outbox and its dead letters -----------------------------------------------------------


class OutboxItem(Answer):
    id: int
    kind: str = Field(
        description="livechat.message, messenger.message, messenger.outcome, messenger.read,"
        " subscriber.event, or operator.reply (an operator's reply no chat was linked to: only"
        " ever dead, its text in the payload)"
    )
    lane: str
    channel_id: str | None = Field(description="the messenger channel that holds it")
    ref_id: int | None
    status: Literal["pending", "dead"]
    attempts: Count
    next_attempt_at: Time
    created_at: Time
    updated_at: Time
    last_error: str | None
    payload: dict[str, Any] = Field(
        description="what the item carries besides its message or event; for operator.reply:"
        " livechat_id, customer_id, client_key, channel_id, message_id, text, files,"
        " operator_id, operator_name, received_at (Unix time)"
    )
    channel: str | None = Field(description="the messenger channel it belongs to")
    livechat: str | None = Field(description="the live chat it belongs to")


class OutboxDepth(Answer):
    pending: Count
    oldest_created_at: Time | None = Field(description="when the oldest pending item was queued")
    dead: Count


class OutboxPage(Answer):
    depth: OutboxDepth
    items: list[OutboxItem]


class DeadLetterItem(Answer):
    id: int
    kind: str
    result: Literal["retried", "adopted", "dead", "purged", "skipped"]
    new_id: int | None = Field(description="the retried item's id now")
    error: str | None = Field(description="why it is still dead")


class DeadLetterReport(Answer):
    action: Literal["retry", "purge"]
    at: Time
    matched: Count = Field(description="dead items the action found (a pending one: skipped)")
    retried: Count = Field(description="made pending again, at the end of their lane")
    adopted: Count = Field(description="operator replies now queued for their linked chat")
    dead: Count = Field(description="operator replies still with no chat: dead again")
    purged: Count = Field(description="deleted")
    skipped: Count = Field(description="the one item named is pending: left alone")
    items: list[DeadLetterItem] = Field(
        max_length=100, description="the first 100 items, with what became of each"
    )


# --- the live-chat event log -------------------------------------------------------------------


class Event(Answer):
    id: int
    livechat_id: str
    name: str
    session_id: int | None
    remote_chat_id: str | None = Field(description="the live chat's own chat id (JivoChat)")
    unlinked_reason: str | None = Field(
        description="why the event linked to no session: what each way of linking found"
    )
    payload: dict[str, Any] = Field(description="the live chat's own JSON")
    received_at: Time


class EventList(Answer):
    events: list[Event]


class EventLink(BaseModel):
    """The body of `POST /admin/events/{id}/link`; other fields are ignored."""

    session_id: int = Field(
        strict=True, ge=1, le=SQLITE_MAX_INTEGER, description="the session to link to"
    )


class EventLinked(Answer):
    session_id: int
    events: list[int] = Field(
        description="the event, and the other events of its chat id that were unlinked"
    )
    remote_chat_id: str | None = Field(
        description="the live-chat chat id now linked: its later events link too"
    )


# The models /openapi.json describes, each under its class name.
RESPONSES: tuple[type[BaseModel], ...] = (
    Error,
    ChannelList,
    Channel,
    SessionList,
    SessionDetail,
    OutboxPage,
    DeadLetterReport,
    EventList,
    EventLinked,
)
REQUESTS: tuple[type[BaseModel], ...] = (EventLink,)
