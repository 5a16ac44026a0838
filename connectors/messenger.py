"""The "arbitrary messenger" protocol (shared/protocols/messenger.md), both directions.

Inbound: `parse_envelope` reads a request body; `parse_request` turns it into a bridge type.
Outbound: `MessengerClient` formats each call and reads the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import Field, SecretStr, field_validator

from bridge.core.errors import InvalidInput
from bridge.core.model import (
    Delivered,
    DeliveryResult,
    FileRef,
    MessengerDisconnect,
    MessengerRequest,
    OperatorReply,
    Retry,
    Unauthorized,
    UserInfoQuery,
    UserMessage,
    UserProfile,
    UserRead,
)
from connectors import http as outside
from connectors.wire import WireModel, id_str, json_object, null_as_blank, null_as_empty, validate

INBOUND_TYPES = {
    "message": "message",
    "userinfo": "userInfo",
    "disconnect": "disconnect",
    "markasread": "markAsRead",
    "markmessageasread": "markAsRead",
}


@dataclass(frozen=True, slots=True)
class Envelope:
    type: str  # normalised: one of INBOUND_TYPES' values, or the raw type if unknown
    token: str | None
    data: dict[str, Any]


def parse_envelope(body: bytes) -> Envelope:
    """The common part of every request. Raises InvalidInput for anything unreadable."""
    doc = json_object(body)
    kind = doc.get("type")
    if not isinstance(kind, str) or not kind:
        raise InvalidInput("missing_field", "type: required string is missing")
    token = doc.get("token")
    data = doc.get("data")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidInput("invalid_field", "data: must be an object")
    return Envelope(
        type=INBOUND_TYPES.get(kind.lower(), kind),
        token=token if isinstance(token, str) else None,
        data=data,
    )


class _File(WireModel):
    name: str = ""
    size: int | None = Field(default=None, ge=0)
    url_upper: str | None = Field(default=None, alias="URL")
    url_lower: str | None = Field(default=None, alias="url")

    def to_ref(self) -> FileRef:
        url = self.url_upper or self.url_lower
        assert url is not None
        return FileRef(name=self.name or url.rsplit("/", 1)[-1], url=url, size=self.size)


class _MessageData(WireModel):
    externalMessageId: str = Field(min_length=1, max_length=256)
    externalChatId: str = Field(min_length=1, max_length=256)
    externalUserId: str = Field(min_length=1, max_length=256)
    externalChatName: str | None = Field(default=None, max_length=1024)
    text: str = ""
    files: list[_File] = []

    _text = field_validator("text", mode="before")(null_as_blank)
    _files = field_validator("files", mode="before")(null_as_empty)
    _ids = field_validator("externalMessageId", "externalChatId", "externalUserId", mode="before")(
        id_str
    )


class _ReadData(WireModel):
    messageId: str = Field(min_length=1, max_length=256)

    _ids = field_validator("messageId", mode="before")(id_str)


class _UserInfoData(WireModel):
    userId: str = Field(min_length=1, max_length=256)

    _ids = field_validator("userId", mode="before")(id_str)


def parse_request(envelope: Envelope) -> MessengerRequest:
    """The bridge type for an inbound request. Raises InvalidInput naming the faulty field."""
    if envelope.type == "message":
        data = validate(_MessageData, envelope.data, "data")
        files = []
        for index, item in enumerate(data.files):
            if not (item.url_upper or item.url_lower):
                raise InvalidInput("missing_field", f"data.files.{index}.URL: required")
            files.append(item.to_ref())
        if not data.text and not files:
            raise InvalidInput("empty_message", "data.text: a message needs text or files")
        return UserMessage(
            external_message_id=data.externalMessageId,
            external_chat_id=data.externalChatId,
            external_user_id=data.externalUserId,
            external_chat_name=data.externalChatName,
            text=data.text,
            files=tuple(files),
        )
    if envelope.type == "userInfo":
        return UserInfoQuery(validate(_UserInfoData, envelope.data, "data").userId)
    if envelope.type == "disconnect":
        return MessengerDisconnect()
    if envelope.type == "markAsRead":
        return UserRead(validate(_ReadData, envelope.data, "data").messageId)
    raise InvalidInput(
        "unknown_type", f"type: {envelope.type[:64]!r} is not a request the bridge takes"
    )


def profile_body(profile: UserProfile) -> dict[str, Any]:
    """Our answer to the messenger's own `userInfo` request."""
    return {
        "id": profile.user_id,
        "username": profile.username,
        "phoneNumber": profile.phone,
        "avatar": profile.avatar,
    }


def _files(files: tuple[FileRef, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for f in files:
        item: dict[str, Any] = {"name": f.name, "URL": f.url}
        if f.size is not None:
            item["size"] = f.size
        out.append(item)
    return out


class MessengerAccount(Protocol):
    """What a messenger client is made from (bridge.settings.MessengerSettings has it)."""

    @property
    def webhook(self) -> str: ...

    @property
    def confirmation_code(self) -> SecretStr: ...


class MessengerClient:
    """Calls to one messenger's webhook. Every call returns a DeliveryResult, never raises."""

    def __init__(self, http: outside.Client, channel_id: str, webhook: str, code: str) -> None:
        self._http = http
        self._channel_id = channel_id
        self._webhook = webhook
        self._code = code

    async def _post(
        self, kind: str, data: dict[str, Any] | None = None, seconds: float | None = None
    ) -> DeliveryResult:
        body: dict[str, Any] = {"type": kind, "token": self._code, "channelId": self._channel_id}
        if data is not None:
            body["data"] = data
        answer = await outside.request(self._http, "POST", self._webhook, body, seconds=seconds)
        return _read_answer(answer)

    async def connect(self, webhook_url: str) -> DeliveryResult:
        return await self._post("connect", {"webhook": webhook_url})

    async def disconnect(self) -> DeliveryResult:
        return await self._post("disconnect")

    async def send_message(self, reply: OperatorReply) -> DeliveryResult:
        data: dict[str, Any] = {
            "targetChatId": reply.target_chat_id,
            "text": reply.text,
            "files": _files(reply.files),
            "messageId": reply.uid,
        }
        if reply.operator is not None:
            # What is known of the operator, no nulls: JivoChat's agents often come without an
            # id (shared/protocols/jivochat.md, "Facts from public client code").
            operator = {"id": reply.operator.id, "name": reply.operator.name}
            data["operator"] = {k: v for k, v in operator.items() if v is not None}
        return await self._post("message", data)

    async def send_outcome(
        self, external_message_id: str, success: bool, *, seconds: float | None = None
    ) -> DeliveryResult:
        return await self._post(
            "messageOutcome", {"success": success, "messageId": external_message_id}, seconds
        )

    async def mark_as_read(self, external_message_id: str) -> DeliveryResult:
        return await self._post("markAsRead", {"messageId": external_message_id})

    async def user_info(self, user_id: str) -> UserProfile | None:
        """The user's profile, or None when the messenger cannot say (never blocks a message)."""
        body = {
            "type": "userInfo",
            "token": self._code,
            "channelId": self._channel_id,
            "data": {"userId": user_id},
        }
        answer = await outside.request(self._http, "POST", self._webhook, body)
        if not isinstance(answer, outside.Response) or answer.status != 200:
            return None  # a 3xx too: its target is not the messenger
        doc = answer.json()
        if not isinstance(doc, dict):
            return None
        return UserProfile(
            user_id=user_id,
            username=_opt_str(doc.get("username")),
            phone=_opt_str(doc.get("phoneNumber")),
            avatar=_opt_str(doc.get("avatar")),
        )


def _opt_str(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _read_answer(outcome: outside.Response | outside.NoResponse) -> DeliveryResult:
    # The messenger contract: 200 accepted, 401 codes differ, 404 the channel does not exist
    # (both need an admin: the channel is rejected); anything else is worth retrying, a 3xx
    # included ("No side follows HTTP redirects: a 3xx is a failed call").
    if isinstance(outcome, outside.NoResponse):
        return Retry(outcome.error)
    if outcome.status == 200:
        return Delivered()
    if outcome.status == 401:
        return Unauthorized("the messenger refused the confirmation code (HTTP 401)")
    if outcome.status == 404:
        return Unauthorized("the messenger has no such channel (HTTP 404)")
    return Retry(outside.describe(outcome), after=outcome.retry_after)
