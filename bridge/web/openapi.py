"""`GET /openapi.json`: the OpenAPI 3.1 description of every endpoint the bridge serves.

The document is built once, at import, from small helpers: an error response is
`_error(...)` with the errcodes it may carry, every object schema lives once under
`components/schemas` and is referenced. tests/test_openapi.py keeps it true: it checks the
document, compares its operations with the app's routes, and fuzzes a real bridge with it.
The admin console's HTML pages (bridge/console, routes named `console.*`) are for browsers and
are not described here.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bridge.core.model import ChannelState
from connectors import jivochat
from connectors.registry import KINDS

routes = web.RouteTableDef()

Schema = dict[str, Any]

# --- schema helpers -------------------------------------------------------------------------


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def _obj(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    """An object with these properties; fields not listed are allowed (tolerant readers)."""
    schema: Schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _closed(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    """An object with exactly these properties: what the bridge itself writes."""
    return {**_obj(required, **properties), "additionalProperties": False}


STRING: Schema = {"type": "string"}
INTEGER: Schema = {"type": "integer"}
BOOLEAN: Schema = {"type": "boolean"}
OPT_STRING = _nullable("string")
OPT_INTEGER = _nullable("integer")
COUNT: Schema = {"type": "integer", "minimum": 0}
TIMESTAMP: Schema = {"type": "string", "format": "date-time"}  # ISO 8601, UTC, milliseconds
OPT_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}


def _wire_id(max_length: int | None = None) -> Schema:
    """An id the other side may send as a string or a number (the bridge keeps strings)."""
    text: Schema = {"type": "string", "minLength": 1}
    if max_length is not None:
        text["maxLength"] = max_length
    return {"anyOf": [text, INTEGER]}


OPT_WIRE_ID: Schema = {"anyOf": [STRING, INTEGER, {"type": "null"}]}


def _json(schema: Schema) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _answer(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": _json(schema)}


def _error(description: str, *errcodes: str, retry_after: bool = False) -> dict[str, Any]:
    """An error response: `{"error", "errcode"}` with errcode one of `errcodes`."""
    schema: Schema = {
        "allOf": [_ref("Error"), {"properties": {"errcode": {"enum": list(errcodes)}}}]
    }
    response: dict[str, Any] = {"description": description, "content": _json(schema)}
    if retry_after:
        response["headers"] = {
            "Retry-After": {
                "description": "seconds to wait before retrying",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            }
        }
    return response


# An unknown path (or a path parameter that does not fit its route) is 404 `not_found`.
NOT_FOUND = "not_found"

STORAGE_UNAVAILABLE = _error(
    "The database cannot take the change now; nothing was stored: retry later.",
    "storage_unavailable",
    retry_after=True,
)
TOO_LARGE = _error(
    "The body is over `server.max_body_bytes` (compressed bodies: once decompressed).",
    "body_too_large",
)
READ_TIMEOUT = _error(
    "The body did not arrive in full within `server.read_timeout` seconds; the connection is"
    " closed.",
    "read_timeout",
)
UNSUPPORTED_ENCODING = _error(
    "A Content-Encoding other than gzip, deflate or identity.", "unsupported_encoding"
)
# Every body is read the same way; these 400s can answer any request that has one.
BODY_ERRCODES = ("invalid_encoding", "invalid_body")


def _path_param(name: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema or {"type": "string", "minLength": 1},
    }


def _query_param(name: str, description: str, schema: Schema) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


LIMIT = _query_param(
    "limit",
    "At most this many rows (newest first where the list is a log).",
    {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
)

# --- the messenger's requests (shared/protocols/messenger.md) --------------------------------

MESSENGER_SCHEMAS: dict[str, Schema] = {
    "MessengerFile": {
        **_obj(
            name=STRING,
            size=_nullable("integer", minimum=0),
            URL={**STRING, "description": "the file's URL (`url` is accepted too)"},
            url=STRING,
        ),
        "anyOf": [{"required": ["URL"]}, {"required": ["url"]}],
    },
    "MessengerMessage": _obj(
        ("type", "data"),
        type={"type": "string", "enum": ["message"]},
        token=STRING,
        channelId=STRING,
        data=_obj(
            ("externalMessageId", "externalChatId", "externalUserId"),
            externalMessageId=_wire_id(256),
            externalChatId=_wire_id(256),
            externalUserId=_wire_id(256),
            externalChatName=_nullable("string", maxLength=1024),
            text={**STRING, "description": "may be empty when files are sent"},
            files={
                "type": "array",
                "items": _ref("MessengerFile"),
                "description": "at most `server.max_files` (400 `too_many_files`)",
            },
        ),
    ),
    "MessengerUserInfo": _obj(
        ("type", "data"),
        type={"type": "string", "enum": ["userInfo"]},
        token=STRING,
        channelId=STRING,
        data=_obj(("userId",), userId=_wire_id(256)),
    ),
    "MessengerDisconnect": _obj(
        ("type",),
        type={"type": "string", "enum": ["disconnect"]},
        token=STRING,
        channelId=STRING,
        data=_nullable("object"),
    ),
    "MessengerMarkAsRead": _obj(
        ("type", "data"),
        type={"type": "string", "enum": ["markAsRead", "MarkMessageAsRead"]},
        token=STRING,
        channelId=STRING,
        data=_obj(("messageId",), messageId=_wire_id(256)),
    ),
    "MessengerRequest": {
        "description": (
            "Every request carries `type` (matched case-insensitively) and `token`, the"
            " channel's confirmation code (any token is accepted when the code is empty)."
        ),
        "anyOf": [
            _ref("MessengerMessage"),
            _ref("MessengerUserInfo"),
            _ref("MessengerDisconnect"),
            _ref("MessengerMarkAsRead"),
        ],
    },
    "UserProfile": _closed(
        ("id", "username", "phoneNumber", "avatar"),
        id=STRING,
        username=OPT_STRING,
        phoneNumber=OPT_STRING,
        avatar={**OPT_STRING, "description": "a URL, possibly a data URL"},
    ),
}

# --- what a live chat sends (shared/protocols/chatvisor.md, jivochat.md) ---------------------

# The connector's own lists, so the description cannot drift from what is parsed.
FILE_TYPES = tuple(sorted(jivochat.FILE_TYPES))
JIVOCHAT_EVENTS = (*jivochat.EVENT_MODELS, *jivochat.EVENT_ALIASES)

LIVECHAT_SCHEMAS: dict[str, Schema] = {
    "ChatvisorFile": _obj(
        ("url",), name=STRING, url={"type": "string", "minLength": 1}, size=OPT_INTEGER
    ),
    "ChatvisorMessageNew": _obj(
        ("event", "customerId", "message"),
        event={"type": "string", "enum": ["message.new"]},
        customerId=_wire_id(),
        message=_obj(
            ("sender",),
            id=OPT_WIRE_ID,
            text={**STRING, "description": "may be empty when files are sent"},
            files={
                "type": "array",
                "items": _ref("ChatvisorFile"),
                "description": "the first `server.max_files` are relayed, the rest recorded",
            },
            timestamp=STRING,
            sender=_obj(
                ("type",),
                type={"type": "string", "enum": ["agent", "customer", "system"]},
                id=OPT_WIRE_ID,
                name=OPT_STRING,
            ),
        ),
    ),
    "ChatvisorConversationEvent": _obj(
        ("event", "conversation"),
        event={"type": "string", "enum": ["conversation.new", "conversation.status"]},
        conversation=_obj(
            ("customerId",),
            customerId=_wire_id(),
            status={"type": "string", "enum": ["UNREAD", "DONE", "UNRESOLVED"]},
            lastMessage=_obj(text=STRING),
            url=OPT_STRING,
        ),
    ),
    "ChatvisorConversation": {
        **_obj(
            ("customerId",),
            customerId=_wire_id(),
            status={
                "type": "string",
                "description": "UNREAD (new or reopened), DONE (closes), UNRESOLVED or any"
                " other (a status change)",
            },
            lastMessage={
                "anyOf": [_obj(text=STRING, test=STRING), STRING, {"type": "null"}],
                "description": "its text under `text`, or `test` as Chatvisor's docs spell it",
            },
            url=OPT_STRING,
        ),
        "description": "What Chatvisor's own WebHooks POST: a bare Conversation object, no"
        " `event`.",
        "not": {"required": ["event"]},
    },
    "ChatvisorMessageRead": _obj(
        ("event", "customerId", "messageId"),
        event={"type": "string", "enum": ["message.read"]},
        customerId=_wire_id(),
        messageId=_wire_id(),
    ),
    "ChatvisorOtherEvent": _obj(
        ("event",),
        event={
            "type": "string",
            "minLength": 1,
            "description": "an event the bridge does not know: recorded and answered 200",
        },
    ),
    "JivochatAgent": _obj(id=OPT_WIRE_ID, name=OPT_STRING, email=OPT_STRING, phone=OPT_WIRE_ID),
    "JivochatVisitor": _obj(
        name=OPT_STRING,
        email=OPT_STRING,
        phone=OPT_WIRE_ID,
        number=OPT_WIRE_ID,
        description=OPT_STRING,
        social=_nullable("object"),
        chats_count={"type": ["integer", "string", "null"]},
    ),
    "JivochatEvent": _obj(
        ("event_name",),
        event_name={
            "anyOf": [
                {"type": "string", "enum": list(JIVOCHAT_EVENTS)},
                {"type": "string", "minLength": 1},
            ],
            "description": "one of the documented events, or any other (recorded, answered 200)",
        },
        chat_id=OPT_WIRE_ID,
        widget_id=OPT_WIRE_ID,
        user_token=OPT_WIRE_ID,
        visitor={"anyOf": [_ref("JivochatVisitor"), {"type": "null"}]},
        department={
            "anyOf": [_obj(id=OPT_WIRE_ID, name=OPT_STRING), {"type": "null"}],
        },
        session=_nullable("object"),
        page=_nullable("object"),
        analytics={"type": ["object", "array", "null"]},
        agent={"anyOf": [_ref("JivochatAgent"), {"type": "null"}]},
        agents={"type": "array", "items": _ref("JivochatAgent")},
        assign_to=OPT_STRING,
        chat={
            "anyOf": [
                _obj(
                    messages={
                        "type": "array",
                        "items": _obj(
                            timestamp=_nullable("number"),
                            type=OPT_STRING,
                            agent_id=OPT_WIRE_ID,
                            message=OPT_STRING,
                            blacklisted=_nullable("boolean"),
                        ),
                    },
                    rate=OPT_STRING,
                    blacklisted=_nullable("boolean"),
                ),
                {"type": "null"},
            ]
        },
        plain_messages=OPT_STRING,
        html_messages=OPT_STRING,
        call={
            "anyOf": [
                _obj(
                    type=OPT_STRING,
                    phone=OPT_WIRE_ID,
                    status=OPT_STRING,
                    reason=OPT_STRING,
                    record_url=OPT_STRING,
                ),
                {"type": "null"},
            ]
        },
        offline_message_id=OPT_WIRE_ID,
        message=OPT_STRING,
    ),
    "JivochatAgentMessage": _obj(
        ("recipient", "message"),
        sender={"anyOf": [_obj(id=OPT_WIRE_ID, name=OPT_STRING), {"type": "null"}]},
        recipient=_obj(
            ("id",), id={**_wire_id(), "description": "the `sender.id` the bridge used"}
        ),
        message=_obj(
            type={
                "anyOf": [{"type": "string", "enum": ["text", *FILE_TYPES]}, STRING],
                "description": "text; photo, video, document, audio, file, image (need `file`);"
                " anything else (typing...) is recorded",
                "default": "text",
            },
            id=OPT_WIRE_ID,
            text=OPT_STRING,
            file=OPT_STRING,
            file_name=OPT_STRING,
        ),
    ),
    "LivechatHook": {
        "description": (
            "Chatvisor: one event per request, by `event`, or a bare Conversation object"
            " (Chatvisor's own WebHooks). JivoChat: a Webhooks API event"
            " (`event_name`) or a Chat API agent message (`recipient`, `message`)."
        ),
        "anyOf": [
            _ref("ChatvisorMessageNew"),
            _ref("ChatvisorConversationEvent"),
            _ref("ChatvisorConversation"),
            _ref("ChatvisorMessageRead"),
            _ref("ChatvisorOtherEvent"),
            _ref("JivochatEvent"),
            _ref("JivochatAgentMessage"),
        ],
    },
    "HookReply": _closed(
        ("result",),
        result={"type": "string", "enum": ["ok"]},
        contact_info=_closed(name=STRING, phone=STRING, email=STRING, description=STRING),
        custom_data={
            "type": "array",
            "items": _closed(("title", "content"), title=STRING, content=STRING, link=STRING),
        },
        enable_assign=BOOLEAN,
        crm_link={**STRING, "description": "the session's page in the admin API"},
    ),
}

# --- what the bridge answers with -------------------------------------------------------------

CHANNEL_STATES = [state.value for state in ChannelState]

BRIDGE_SCHEMAS: dict[str, Schema] = {
    "Error": _closed(
        ("error", "errcode"),
        error={**STRING, "description": "for people"},
        errcode={**STRING, "description": "for programs"},
    ),
    "Ok": _closed(("result",), result={"type": "string", "enum": ["ok"]}),
    "Health": _closed(("status",), status={"type": "string", "enum": ["ok"]}),
    "LivechatReadiness": _closed(
        ("kind",),
        kind={"type": "string", "enum": list(KINDS)},
        agents_online={
            **_nullable("boolean"),
            "description": "JivoChat: its Chat API /status; null when it could not be asked",
        },
        status_error=STRING,
        status_age={
            "type": "number",
            "minimum": 0,
            "description": "JivoChat: seconds since /status was asked (its answer is cached)",
        },
    ),
    "Ready": _closed(
        ("status", "schema_version", "livechats"),
        status={"type": "string", "enum": ["ready"]},
        schema_version=INTEGER,
        livechats={"type": "object", "additionalProperties": _ref("LivechatReadiness")},
    ),
    "NotReady": _closed(
        ("status", "database"),
        status={"type": "string", "enum": ["unavailable"]},
        database=STRING,
    ),
    "Channel": _closed(
        (
            "id",
            "name",
            "livechat",
            "state",
            "since",
            "last_error",
            "enabled",
            "held_messages",
        ),
        id=STRING,
        name=STRING,
        livechat=STRING,
        state={"type": "string", "enum": CHANNEL_STATES},
        since=TIMESTAMP,
        last_error=OPT_STRING,
        enabled=BOOLEAN,
        held_messages={"type": "integer", "minimum": 0},
    ),
    "ChannelList": _closed(("channels",), channels={"type": "array", "items": _ref("Channel")}),
    "Session": _obj(
        (
            "id",
            "status",
            "opened_by",
            "opened_at",
            "closed_at",
            "conversation_url",
            "livechat_id",
            "channel_id",
            "external_chat_id",
            "chat_name",
            "user_id",
            "customer_id",
            "messages",
        ),
        id=INTEGER,
        status={"type": "string", "enum": ["open", "closed"]},
        opened_by={"type": "string", "enum": ["user", "operator"]},
        opened_at=TIMESTAMP,
        closed_at=OPT_TIMESTAMP,
        conversation_url=OPT_STRING,
        livechat_id=STRING,
        channel_id=STRING,
        external_chat_id=STRING,
        chat_name=OPT_STRING,
        user_id=STRING,
        customer_id=OPT_STRING,
        messages={"type": "integer", "minimum": 0, "description": "how many messages"},
    ),
    "SessionList": _closed(("sessions",), sessions={"type": "array", "items": _ref("Session")}),
    "StoredFile": _closed(("name", "url", "size"), name=STRING, url=STRING, size=OPT_INTEGER),
    "SessionMessage": _obj(
        (
            "uid",
            "direction",
            "external_id",
            "remote_id",
            "user_id",
            "operator_id",
            "operator_name",
            "text",
            "files",
            "status",
            "created_at",
        ),
        uid=STRING,
        direction={"type": "string", "enum": ["in", "out"]},
        external_id=OPT_STRING,
        remote_id=OPT_STRING,
        user_id=OPT_STRING,
        operator_id=OPT_STRING,
        operator_name=OPT_STRING,
        text=STRING,
        files={"type": "array", "items": _ref("StoredFile")},
        status={"type": "string", "enum": ["pending", "delivered", "failed", "read"]},
        created_at=TIMESTAMP,
    ),
    "Contact": _closed(
        ("name", "email", "phone", "description"),
        name=OPT_STRING,
        email=OPT_STRING,
        phone=OPT_STRING,
        description=OPT_STRING,
    ),
    "TranscriptLine": _closed(
        ("sender", "text", "timestamp", "agent_id"),
        sender={**STRING, "description": "visitor, agent, or what the live chat said"},
        text=STRING,
        timestamp={
            **OPT_TIMESTAMP,
            "description": "JivoChat's time of the line; null when it sent none or none valid",
        },
        agent_id=OPT_STRING,
    ),
    "SessionDetail": _obj(
        (
            "id",
            "chat_id",
            "livechat_id",
            "status",
            "opened_by",
            "opened_at",
            "closed_at",
            "conversation_url",
            "agent_id",
            "agent_name",
            "remote_chat_id",
            "crm_link",
            "transcript",
            "channel_id",
            "external_chat_id",
            "chat_name",
            "user_id",
            "client_key",
            "customer_id",
            "contact",
            "messages",
        ),
        id=INTEGER,
        chat_id=INTEGER,
        livechat_id=STRING,
        status={"type": "string", "enum": ["open", "closed"]},
        opened_by={"type": "string", "enum": ["user", "operator"]},
        opened_at=TIMESTAMP,
        closed_at=OPT_TIMESTAMP,
        conversation_url=OPT_STRING,
        agent_id=OPT_STRING,
        agent_name=OPT_STRING,
        remote_chat_id={**OPT_STRING, "description": "JivoChat's chat_id"},
        crm_link={**OPT_STRING, "description": "what a JivoChat agent assigned"},
        transcript={
            "anyOf": [{"type": "array", "items": _ref("TranscriptLine")}, {"type": "null"}],
            "description": "JivoChat's transcript, kept when the chat finished",
        },
        channel_id=STRING,
        external_chat_id=STRING,
        chat_name=OPT_STRING,
        user_id=STRING,
        client_key=STRING,
        customer_id=OPT_STRING,
        contact={"anyOf": [_ref("Contact"), {"type": "null"}]},
        messages={
            "type": "array",
            "items": _ref("SessionMessage"),
            "maxItems": 1000,
            "description": "the first 1000, oldest first",
        },
    ),
    "OutboxItem": _obj(
        (
            "id",
            "kind",
            "lane",
            "channel_id",
            "ref_id",
            "status",
            "attempts",
            "next_attempt_at",
            "created_at",
            "updated_at",
            "last_error",
            "channel",
            "livechat",
            "payload",
        ),
        id=INTEGER,
        kind={
            **STRING,
            "description": "livechat.message, messenger.message, messenger.outcome,"
            " messenger.read, subscriber.event, or operator.reply (an operator's reply no"
            " chat was linked to: only ever dead, its text in the payload)",
        },
        lane=STRING,
        channel_id={**OPT_STRING, "description": "the messenger channel that holds it"},
        ref_id=OPT_INTEGER,
        status={"type": "string", "enum": ["pending", "dead"]},
        attempts={"type": "integer", "minimum": 0},
        next_attempt_at=TIMESTAMP,
        created_at=TIMESTAMP,
        updated_at=TIMESTAMP,
        last_error=OPT_STRING,
        channel={**OPT_STRING, "description": "the messenger channel it belongs to"},
        livechat={**OPT_STRING, "description": "the live chat it belongs to"},
        payload={
            "type": "object",
            "description": "what the item carries besides its message or event; for"
            " operator.reply: livechat_id, customer_id, client_key, channel_id, message_id,"
            " text, files, operator_id, operator_name, received_at (Unix time)",
        },
    ),
    "DeadLetterReport": _closed(
        (
            "action",
            "at",
            "matched",
            "retried",
            "adopted",
            "dead",
            "purged",
            "skipped",
            "items",
        ),
        action={"type": "string", "enum": ["retry", "purge"]},
        at=TIMESTAMP,
        matched={**COUNT, "description": "dead items the action found (a pending one: skipped)"},
        retried={**COUNT, "description": "made pending again, at the end of their lane"},
        adopted={**COUNT, "description": "operator replies now queued for their linked chat"},
        dead={**COUNT, "description": "operator replies still with no chat: dead again"},
        purged={**COUNT, "description": "deleted"},
        skipped={**COUNT, "description": "the one item named is pending: left alone"},
        items={
            "type": "array",
            "maxItems": 100,
            "description": "the first 100 items, with what became of each",
            "items": _closed(
                ("id", "kind", "result", "new_id", "error"),
                id=INTEGER,
                kind=STRING,
                result={
                    "type": "string",
                    "enum": ["retried", "adopted", "dead", "purged", "skipped"],
                },
                new_id={**OPT_INTEGER, "description": "the retried item's id now"},
                error={**OPT_STRING, "description": "why it is still dead"},
            ),
        },
    ),
    "OutboxPage": _closed(
        ("depth", "items"),
        depth=_closed(
            ("pending", "dead", "oldest_created_at"),
            pending={"type": "integer", "minimum": 0},
            dead={"type": "integer", "minimum": 0},
            oldest_created_at={
                **OPT_TIMESTAMP,
                "description": "when the oldest pending item was queued",
            },
        ),
        items={"type": "array", "items": _ref("OutboxItem")},
    ),
    "Event": _obj(
        (
            "id",
            "livechat_id",
            "name",
            "session_id",
            "remote_chat_id",
            "unlinked_reason",
            "payload",
            "received_at",
        ),
        id=INTEGER,
        livechat_id=STRING,
        name=STRING,
        session_id=OPT_INTEGER,
        remote_chat_id={**OPT_STRING, "description": "the live chat's own chat id (JivoChat)"},
        unlinked_reason={
            **OPT_STRING,
            "description": "why the event linked to no session: what each way of linking found",
        },
        payload={"type": "object", "description": "the live chat's own JSON"},
        received_at=TIMESTAMP,
    ),
    "EventList": _closed(("events",), events={"type": "array", "items": _ref("Event")}),
    "EventLink": _closed(
        ("session_id",),
        session_id={"type": "integer", "minimum": 1, "description": "the session to link to"},
    ),
    "EventLinked": _closed(
        ("session_id", "events", "remote_chat_id"),
        session_id=INTEGER,
        events={
            "type": "array",
            "items": INTEGER,
            "description": "the event, and the other events of its chat id that were unlinked",
        },
        remote_chat_id={
            **OPT_STRING,
            "description": "the live-chat chat id now linked: its later events link too",
        },
    ),
}

# --- the operations -----------------------------------------------------------------------------

OUTBOX_CHANNEL = _query_param(
    "channel", "only items of this messenger channel (one removed from the config too)", STRING
)
OUTBOX_LIVECHAT = _query_param("livechat", "only items of this live chat", STRING)
DEAD_LETTER_ACTION = _path_param(
    "action",
    "retry: pending again with fresh attempts (an operator.reply is routed again); purge: deleted",
    {"type": "string", "enum": ["retry", "purge"]},
)

ADMIN_SECURITY: list[dict[str, list[str]]] = [{"adminToken": []}]
UNAUTHORIZED = _error("Missing or wrong admin token.", "unauthorized")


def _admin(summary: str, ok: dict[str, Any], **errors: dict[str, Any]) -> dict[str, Any]:
    """A GET or POST of the admin API: bearer token, its 401, and these answers."""
    return {
        "tags": ["admin"],
        "summary": summary,
        "security": ADMIN_SECURITY,
        "responses": {"200": ok, "401": UNAUTHORIZED, **errors},
    }


MESSENGER_WEBHOOK = {
    "post": {
        "tags": ["messenger"],
        "summary": "The messenger's requests: message, userInfo, disconnect, markAsRead",
        "operationId": "messengerWebhook",
        "parameters": [_path_param("channel_id", "the messenger channel's id in the config")],
        "requestBody": {"required": True, "content": _json(_ref("MessengerRequest"))},
        "responses": {
            "200": _answer(
                "Done (a message: committed to disk). `userInfo` answers the user's profile.",
                {"anyOf": [_ref("Ok"), _ref("UserProfile")]},
            ),
            "400": _error(
                "The body is not JSON, misses or has a wrong field, is of an unknown type, has"
                " more files than `server.max_files`, or is not what its Content-Encoding says.",
                "invalid_json",
                "missing_field",
                "invalid_field",
                "empty_message",
                "unknown_type",
                "too_many_files",
                *BODY_ERRCODES,
            ),
            "401": _error("The token is not the channel's confirmation code.", "bad_token"),
            "404": _error(
                "No such channel, or (userInfo) no such user.",
                "unknown_channel",
                "unknown_user",
                NOT_FOUND,
            ),
            "409": _error(
                "The channel is disconnected: keep the message and retry after reconnecting"
                " (`channel_disconnected`); or the `externalMessageId` is already stored for a"
                " message of another chat, text or files: not a retry, nothing was stored"
                " (`conflicting_duplicate`).",
                "channel_disconnected",
                "conflicting_duplicate",
            ),
            "408": READ_TIMEOUT,
            "413": TOO_LARGE,
            "415": UNSUPPORTED_ENCODING,
            "503": STORAGE_UNAVAILABLE,
        },
    }
}

LIVECHAT_WEBHOOK = {
    "post": {
        "tags": ["livechat"],
        "summary": "A live chat's hooks: Chatvisor events, JivoChat Webhooks and Chat API",
        "operationId": "livechatWebhook",
        "parameters": [
            _path_param("livechat_id", "the live chat's id in the config"),
            _path_param("hook_token", "the live chat's `hook_token` (a secret)"),
        ],
        "requestBody": {"required": True, "content": _json(_ref("LivechatHook"))},
        "responses": {
            "200": _answer(
                "Committed. JivoChat's chat_accepted and chat_updated get the CRM answer.",
                _ref("HookReply"),
            ),
            "400": _error(
                "The body is not JSON or cannot be read as an event or message.",
                "invalid_json",
                "missing_field",
                "invalid_field",
                "empty_message",
                "unknown_body",
                *BODY_ERRCODES,
            ),
            "401": _error("The hook token does not match.", "bad_token"),
            "404": _error("No such live chat.", "unknown_livechat", NOT_FOUND),
            "408": READ_TIMEOUT,
            "413": TOO_LARGE,
            "415": UNSUPPORTED_ENCODING,
            "503": STORAGE_UNAVAILABLE,
        },
    }
}

PATHS: dict[str, Any] = {
    "/messengers/{channel_id}/webhook": MESSENGER_WEBHOOK,
    "/livechats/{livechat_id}/webhook/{hook_token}": LIVECHAT_WEBHOOK,
    "/healthz": {
        "get": {
            "tags": ["probes"],
            "summary": "Liveness",
            "operationId": "healthz",
            "responses": {"200": _answer("The process is up.", _ref("Health"))},
        }
    },
    "/readyz": {
        "get": {
            "tags": ["probes"],
            "summary": "Readiness: the database is open, migrated and taking writes",
            "operationId": "readyz",
            "responses": {
                "200": _answer("Ready; per live chat, facts such as agents online.", _ref("Ready")),
                "503": _answer("Not ready.", _ref("NotReady")),
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["probes"],
            "summary": "Prometheus metrics",
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "The Prometheus text exposition format.",
                    "content": {"text/plain": {"schema": STRING}},
                }
            },
        }
    },
    "/openapi.json": {
        "get": {
            "tags": ["probes"],
            "summary": "This document",
            "operationId": "openapi",
            "responses": {"200": _answer("OpenAPI 3.1.", {"type": "object"})},
        }
    },
    "/admin/channels": {
        "get": {
            **_admin(
                "Every messenger channel with its state",
                _answer("The channels, by id.", _ref("ChannelList")),
            ),
            "operationId": "listChannels",
        }
    },
    "/admin/messengers/{channel_id}/{action}": {
        "post": {
            **_admin(
                "Connect, disconnect or reconnect a messenger channel",
                _answer("The channel after the action's first attempt.", _ref("Channel")),
                **{
                    "404": _error("No such channel.", "unknown_channel", NOT_FOUND),
                    "503": STORAGE_UNAVAILABLE,
                },
            ),
            "operationId": "channelAction",
            "parameters": [
                _path_param("channel_id", "the messenger channel's id"),
                _path_param(
                    "action",
                    "connect (if not active), disconnect, reconnect (even if active)",
                    {"type": "string", "enum": ["connect", "disconnect", "reconnect"]},
                ),
            ],
        }
    },
    "/admin/sessions": {
        "get": {
            **_admin(
                "Sessions, newest first, with their chat and message count",
                _answer("The sessions.", _ref("SessionList")),
                **{
                    "400": _error("A query parameter is invalid.", "invalid_query"),
                    "404": _error("No such messenger channel.", "unknown_channel"),
                },
            ),
            "operationId": "listSessions",
            "parameters": [
                _query_param("messenger", "only this messenger channel's", STRING),
                _query_param(
                    "status",
                    "only open or closed ones",
                    {"type": "string", "enum": ["open", "closed"]},
                ),
                LIMIT,
            ],
        }
    },
    "/admin/sessions/{session_id}": {
        "get": {
            **_admin(
                "One session: chat, contact, messages, transcript, CRM link",
                _answer("The session.", _ref("SessionDetail")),
                **{"404": _error("No such session.", "unknown_session", NOT_FOUND)},
            ),
            "operationId": "sessionDetail",
            "parameters": [
                _path_param("session_id", "the session's id", {"type": "integer", "minimum": 0})
            ],
        }
    },
    "/admin/outbox": {
        "get": {
            **_admin(
                "Outbox depth and its pending or dead items, oldest first",
                _answer("The depth and the items.", _ref("OutboxPage")),
                **{
                    "400": _error("A query parameter is invalid.", "invalid_query"),
                    "404": _error(
                        "No such messenger channel or live chat.",
                        "unknown_channel",
                        "unknown_livechat",
                    ),
                },
            ),
            "operationId": "listOutbox",
            "parameters": [
                _query_param(
                    "status",
                    "which items (default dead)",
                    {"type": "string", "enum": ["pending", "dead"], "default": "dead"},
                ),
                OUTBOX_CHANNEL,
                OUTBOX_LIVECHAT,
                LIMIT,
            ],
        }
    },
    "/admin/outbox/{item_id}/{action}": {
        "post": {
            **_admin(
                "Retry or purge one dead outbox item",
                _answer("What the action did.", _ref("DeadLetterReport")),
                **{
                    "404": _error(
                        "No outbox item with this id (delivered items are deleted).",
                        "unknown_item",
                        NOT_FOUND,
                    ),
                    "503": STORAGE_UNAVAILABLE,
                },
            ),
            "operationId": "deadLetterAction",
            "parameters": [
                _path_param("item_id", "the item's id", {"type": "integer", "minimum": 0}),
                DEAD_LETTER_ACTION,
            ],
        }
    },
    "/admin/outbox/{action}": {
        "post": {
            **_admin(
                "Retry or purge every dead item of a channel and/or a live chat, or all",
                _answer("What the action did.", _ref("DeadLetterReport")),
                **{
                    "400": _error(
                        "Neither a scope nor all=1, or both, or all not 1 or true.",
                        "invalid_query",
                    ),
                    "404": _error(
                        "No such messenger channel or live chat.",
                        "unknown_channel",
                        "unknown_livechat",
                        NOT_FOUND,
                    ),
                    "503": STORAGE_UNAVAILABLE,
                },
            ),
            "operationId": "deadLettersAction",
            "parameters": [
                DEAD_LETTER_ACTION,
                OUTBOX_CHANNEL,
                OUTBOX_LIVECHAT,
                _query_param(
                    "all",
                    "every dead item (instead of channel and/or livechat)",
                    {"type": "string", "enum": ["1", "true"]},
                ),
            ],
        }
    },
    "/admin/events": {
        "get": {
            **_admin(
                "The live-chat event log, newest first",
                _answer("The events.", _ref("EventList")),
                **{
                    "400": _error("A query parameter is invalid.", "invalid_query"),
                    "404": _error("No such live chat.", "unknown_livechat"),
                },
            ),
            "operationId": "listEvents",
            "parameters": [
                _query_param("livechat", "only this live chat's", STRING),
                _query_param("event", "only events of this name", STRING),
                _query_param(
                    "unlinked",
                    "1: only events that linked to no session, with the reason",
                    {"type": "string", "enum": ["0", "1"], "default": "0"},
                ),
                LIMIT,
            ],
        }
    },
    "/admin/events/{event_id}/link": {
        "post": {
            **_admin(
                "Link an event by hand to a session, and so its live-chat chat id",
                _answer(
                    "Linked: the event and the other unlinked events of its chat id (their"
                    " effects applied in order, subscribers not told again); later events"
                    " of that chat id link to the session too.",
                    _ref("EventLinked"),
                ),
                **{
                    "400": _error(
                        "The body is not JSON, or session_id is missing or invalid, or the"
                        " session belongs to another live chat, or the event is not a"
                        " JivoChat Webhooks-API event (`not_linkable`).",
                        "invalid_json",
                        "missing_field",
                        "invalid_field",
                        "not_linkable",
                    ),
                    "404": _error(
                        "No such event or session.", "unknown_event", "unknown_session", NOT_FOUND
                    ),
                    "409": _error("The event is linked to a session already.", "already_linked"),
                    "413": TOO_LARGE,
                    "503": STORAGE_UNAVAILABLE,
                },
            ),
            "operationId": "linkEvent",
            "parameters": [
                _path_param("event_id", "the event's id", {"type": "integer", "minimum": 0})
            ],
            "requestBody": {"required": True, "content": _json(_ref("EventLink"))},
        }
    },
    "/c/{key}": {
        "get": {
            "tags": ["livechat"],
            "summary": "A chat's URL, sent to JivoChat as the client's page (sender.url)",
            "description": "It names a chat for linking events only; there is no page.",
            "operationId": "chatLink",
            "parameters": [_path_param("key", "the chat's opaque key")],
            "responses": {
                "404": _error("Always: there is no page here.", NOT_FOUND),
            },
        }
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "messenger-bridge",
        "version": "0.1.0",
        "description": (
            "Bridges a company's own messenger to a live chat. Every error body is"
            ' `{"error": "<text>", "errcode": "<code>"}`.'
        ),
    },
    "paths": PATHS,
    "components": {
        "schemas": {**MESSENGER_SCHEMAS, **LIVECHAT_SCHEMAS, **BRIDGE_SCHEMAS},
        "securitySchemes": {
            "adminToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "the config's `[admin] token`",
            }
        },
    },
}


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(SPEC)
