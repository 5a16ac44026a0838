"""The bridge's own types. Connectors parse wire formats into these and format them back."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ChannelState(StrEnum):
    """A messenger channel's state (bridge/channels.py runs the life cycle; README, "Channel
    life cycle"). The values are what the admin API, /metrics, the console and the database say."""

    CONNECTING = "connecting"
    ACTIVE = "active"
    INTERRUPTED = "interrupted"
    REJECTED = "rejected"
    DISCONNECTED = "disconnected"


@dataclass(frozen=True, slots=True)
class FileRef:
    name: str
    url: str
    size: int | None = None


# No slots: it crosses the socket to the delivery process, where slots pickle slowly.
@dataclass(frozen=True)
class UserProfile:
    user_id: str
    username: str | None = None
    phone: str | None = None
    avatar: str | None = None


@dataclass(frozen=True, slots=True)
class Operator:
    id: str | None = None
    name: str | None = None


# --- messenger → bridge -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserMessage:
    external_message_id: str
    external_chat_id: str
    external_user_id: str
    text: str
    files: tuple[FileRef, ...] = ()
    external_chat_name: str | None = None


@dataclass(frozen=True, slots=True)
class UserInfoQuery:
    user_id: str


@dataclass(frozen=True, slots=True)
class MessengerDisconnect:
    pass


@dataclass(frozen=True, slots=True)
class UserRead:
    """The user has read an operator's message (`message_id` is the bridge's id for it)."""

    message_id: str


MessengerRequest = UserMessage | UserInfoQuery | MessengerDisconnect | UserRead


# --- live chat → bridge -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatRef:
    """How a live chat names a messenger chat: by its own customer id, by our client key, by
    its own conversation id, by the page URL the bridge gave the chat, or only by the
    visitor's contact details (as the live chat spelt them)."""

    customer_id: str | None = None
    client_key: str | None = None
    conversation_id: str | None = None
    email: str | None = None
    phone: str | None = None
    page_url: str | None = None


@dataclass(frozen=True, slots=True)
class Contact:
    """Contact details the live chat holds for a visitor."""

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    sender: str  # "visitor" | "agent" | what the live chat said
    text: str
    timestamp: float | None = None
    agent_id: str | None = None


@dataclass(frozen=True, slots=True)
class AgentMessage:
    chat: ChatRef
    message_id: str | None
    text: str
    files: tuple[FileRef, ...] = ()
    operator: Operator | None = None


@dataclass(frozen=True, slots=True)
class ConversationState:
    """A conversation was opened, reopened or closed on the live-chat side."""

    chat: ChatRef
    open: bool
    name: str
    url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    # The live chat sent a bare conversation object, not a named event: `name` is inferred
    # from its status, and a customer the bridge does not know makes it "conversation.new".
    inferred: bool = False
    last_text: str | None = None  # the conversation's last message, if the live chat said
    # The name it is recorded under when no chat of the bridge has its customer (None: `name`).
    name_if_unknown: str | None = None


@dataclass(frozen=True, slots=True)
class AgentRead:
    chat: ChatRef
    message_id: str


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """Anything else the live chat told us: recorded, never an error."""

    name: str
    raw: dict[str, Any]
    chat: ChatRef | None = None


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """A chat life-cycle event (JivoChat's Webhooks API): accepted, updated, finished..."""

    name: str  # normalised event name, e.g. "chat_accepted", "offline_message"
    chat: ChatRef
    raw: dict[str, Any]
    contact: Contact | None = None
    agent: Operator | None = None
    wants_answer: bool = False  # the live chat shows the agent what we answer
    accepts: bool = False  # an agent took the chat: `agent` becomes the session's operator
    closes: bool = False  # the chat is over: the session closes (its contact is not taken)
    assign_to: str | None = None
    transcript: tuple[TranscriptLine, ...] | None = None


LiveChatEvent = AgentMessage | ConversationState | AgentRead | Lifecycle | OtherEvent


@dataclass(frozen=True, slots=True)
class CrmAnswer:
    """What the bridge tells an agent about the messenger user behind a chat."""

    contact: Contact
    fields: tuple[tuple[str, str], ...]
    link: str | None = None


# --- bridge → live chat -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Customer:
    """What the live chat needs to know about the messenger chat a message comes from."""

    channel_id: str
    client_key: str
    profile: UserProfile
    chat_name: str | None = None
    customer_id: str | None = None
    customer_tag: str | None = None
    url: str | None = None  # the chat's own URL at the bridge (bridge/chat_links.py)


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    uid: str
    text: str
    files: tuple[FileRef, ...]
    created_at: float
    # A live chat that takes a message as several calls (JivoChat: one per file, then the
    # text): how many of them earlier attempts had delivered. This attempt starts after them.
    parts_done: int = 0


# --- bridge → messenger -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OperatorReply:
    uid: str
    target_chat_id: str
    text: str
    files: tuple[FileRef, ...]
    operator: Operator | None = None


# --- the outcome of one outside call -----------------------------------------------------


# No slots: it crosses the socket to the delivery process, where slots pickle slowly.
@dataclass(frozen=True)
class Delivered:
    remote_id: str | None = None
    customer_id: str | None = None
    customer_tag: str | None = None


# No slots: it crosses the socket to the delivery process, where slots pickle slowly.
@dataclass(frozen=True)
class Retry:
    """A transient failure: try again later (after `after` seconds if the other side said so)."""

    error: str
    after: float | None = None
    # A message sent as several calls: how many parts, from the first, the live chat had
    # accepted when this failure came (None: a message sent in one call).
    parts_done: int | None = None
    # The live chat's customer id and tag, when the attempt got them before it failed (a
    # customer tagged, then the message refused): stored all the same, so that the operator's
    # replies to that customer find the chat.
    customer_id: str | None = None
    customer_tag: str | None = None


# No slots: it crosses the socket to the delivery process, where slots pickle slowly.
@dataclass(frozen=True)
class Failed:
    """A permanent failure: the other side refused this item; sending it again cannot help."""

    error: str
    parts_done: int | None = None  # as in Retry: kept should an admin retry the item
    customer_id: str | None = None  # as in Retry
    customer_tag: str | None = None


# No slots: it crosses the socket to the delivery process, where slots pickle slowly.
@dataclass(frozen=True)
class Unauthorized:
    """The other side refused our credentials, or has no such channel (a messenger's 404):
    nothing for it will pass until an admin acts."""

    error: str


DeliveryResult = Delivered | Retry | Failed | Unauthorized
