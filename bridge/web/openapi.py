"""`GET /openapi.json`: the OpenAPI 3.1 description of every endpoint the bridge serves.

The component schemas come from the pydantic models that read and write each body: the
connectors' wire models (what the messenger and the live chats send) and the admin API's answer
models (bridge/web/schemas.py), through `models_json_schema` (JSON Schema 2020-12, which
OpenAPI 3.1 takes as is). Written by hand here are only what no model holds: the envelopes and
unions that pick a model (the messenger's `type`, Chatvisor's `event`, JivoChat's `event_name`),
the few answers built outside the admin API, and the paths. An error response is `_error(...)`
with the errcodes it may carry. tests/test_openapi.py keeps the document true: it checks it,
compares its operations with the app's routes, and fuzzes a real bridge with it. The admin
console's HTML pages (bridge/console, routes named `console.*`) are for browsers and are not
described here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema
from pydantic_core import core_schema

from bridge.web import schemas
from connectors import chatvisor, jivochat, messenger, wire
from connectors.registry import KINDS

routes = web.RouteTableDef()

Schema = dict[str, Any]

REF = "#/components/schemas/{model}"

# --- schemas from the models ----------------------------------------------------------------

STRING: Schema = {"type": "string"}

# What each tolerant reader (a `mode="before"` validator) accepts besides its field's own type,
# so that the schema describes what the code takes, no less. A validator not listed here stops
# the document from being built: say what it accepts.
ALSO_ACCEPTED: dict[Callable[..., Any], list[Schema]] = {
    wire.id_str: [{"type": "integer"}],
    wire.null_as_empty: [{"type": "null"}],
    wire.null_as_blank: [{"type": "null"}],
    wire.null_as_default: [{"type": "null"}],
    wire.empty_list_as_null: [{"type": "array", "maxItems": 0}],
    chatvisor._last_text: [  # reads `text`, or `test` as Chatvisor spells it
        {
            "type": "object",
            "properties": {"text": STRING, "test": STRING},
            "description": "its text under `text`, or `test` as Chatvisor's docs spell it",
        }
    ],
}


class ModelSchema(GenerateJsonSchema):
    """A model's JSON Schema as this document wants it: components named `prefix` + the class
    name (without a leading underscore), no generated field titles, and every tolerant reader's
    extra input (`ALSO_ACCEPTED`) added beside the field's type."""

    prefix = ""

    def normalize_name(self, name: str) -> str:
        return self.prefix + super().normalize_name(name).lstrip("_")

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> Schema:
        inner = super().function_before_schema(schema)
        function = schema["function"]["function"]
        function = getattr(function, "__func__", function)  # a validator taking `cls`
        if function not in ALSO_ACCEPTED:
            raise TypeError(f"{function.__qualname__}: add what it accepts to ALSO_ACCEPTED")
        kinds = inner["anyOf"] if set(inner) == {"anyOf"} else [inner]
        return {"anyOf": [*kinds, *ALSO_ACCEPTED[function]]}


def model_schemas(
    models: Iterable[type[BaseModel]], mode: JsonSchemaMode, prefix: str = ""
) -> dict[str, Schema]:
    """The component schemas of `models` and of every model they hold, by name."""
    generator = type(f"{prefix}ModelSchema", (ModelSchema,), {"prefix": prefix})
    _, doc = models_json_schema(
        [(model, mode) for model in models], ref_template=REF, schema_generator=generator
    )
    # A model's title is its class name, often a private one: the component's name says it.
    return {
        name: {k: v for k, v in schema.items() if k != "title"}
        for name, schema in doc["$defs"].items()
    }


def _ref(name: str) -> Schema:
    return {"$ref": REF.format(model=name)}


def _nullable(kind: str, **extra: Any) -> Schema:
    return {"type": [kind, "null"], **extra}


def _closed(required: tuple[str, ...] = (), **properties: Schema) -> Schema:
    """An object with exactly these properties: what the bridge itself writes."""
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def _named(field: str, names: Iterable[str], model: str | None = None) -> Schema:
    """A body whose `field` is one of `names`, read as `model`'s fields besides."""
    named: Schema = {
        "type": "object",
        "required": [field],
        "properties": {field: {"type": "string", "enum": list(names)}},
    }
    return named if model is None else {"allOf": [_ref(model), named]}


def _other(field: str, known: Iterable[str], description: str) -> Schema:
    """A body whose `field` names nothing the bridge knows: recorded, answered 200."""
    name: Schema = {"type": "string", "minLength": 1, "not": {"enum": sorted(known)}}
    return {
        "type": "object",
        "required": [field],
        "properties": {field: name},
        "description": description,
    }


# --- the messenger's requests (shared/protocols/messenger.md) --------------------------------

MESSENGER_SCHEMAS = model_schemas(
    [messenger._MessageData, messenger._UserInfoData, messenger._ReadData],
    "validation",
    prefix="Messenger",
)
# What parse_request checks beyond the models: a message needs text or files, a file its URL
# under one spelling or the other.
_TEXT: Schema = {"type": "string", "minLength": 1}
MESSENGER_SCHEMAS["MessengerMessageData"]["anyOf"] = [
    {"required": ["text"], "properties": {"text": _TEXT}},
    {"required": ["files"], "properties": {"files": {"type": "array", "minItems": 1}}},
]
MESSENGER_SCHEMAS["MessengerFile"]["anyOf"] = [
    {"required": [key], "properties": {key: _TEXT}} for key in ("URL", "url")
]


def _envelope(types: list[str], data: Schema | None) -> Schema:
    """`{type, token, channelId, data}`: what every messenger request carries."""
    body = _named("type", types)
    body["properties"] |= {"token": STRING, "channelId": STRING}
    if data is None:
        body["properties"]["data"] = _nullable("object")
    else:
        body["properties"]["data"] = data
        body["required"].append("data")
    return body


MESSENGER_SCHEMAS |= {
    "MessengerRequest": {
        "description": (
            "Every request carries `type` (matched case-insensitively) and `token`, the"
            " channel's confirmation code (any token is accepted when the code is empty)."
            " A message needs text or files, at most `server.max_files` of them."
        ),
        "anyOf": [
            _envelope(["message"], _ref("MessengerMessageData")),
            _envelope(["userInfo"], _ref("MessengerUserInfoData")),
            _envelope(["disconnect"], None),
            _envelope(["markAsRead", "MarkMessageAsRead"], _ref("MessengerReadData")),
        ],
    },
    # messenger.profile_body: the answer to `userInfo`.
    "UserProfile": _closed(
        ("id", "username", "phoneNumber", "avatar"),
        id=STRING,
        username=_nullable("string"),
        phoneNumber=_nullable("string"),
        avatar=_nullable("string", description="a URL, possibly a data URL"),
    ),
}

# --- what a live chat sends (shared/protocols/chatvisor.md, jivochat.md) ---------------------

CHATVISOR_EVENTS: dict[str, type[BaseModel]] = {
    "message.new": chatvisor._MessageNew,
    "conversation.new": chatvisor._ConversationEvent,
    "conversation.status": chatvisor._ConversationEvent,
    "message.read": chatvisor._MessageRead,
}
# JivoChat's Webhooks-API events by model, each with its names and their aliases.
JIVOCHAT_EVENTS: dict[type[BaseModel], list[str]] = {}
for _name, _model in jivochat.EVENT_MODELS.items():
    JIVOCHAT_EVENTS.setdefault(_model, []).append(_name)
for _alias, _name in jivochat.EVENT_ALIASES.items():
    JIVOCHAT_EVENTS[jivochat.EVENT_MODELS[_name]].append(_alias)


def _by_name(field: str, events: dict[str, type[BaseModel]], prefix: str) -> list[Schema]:
    by_model: dict[type[BaseModel], list[str]] = {}
    for name, model in events.items():
        by_model.setdefault(model, []).append(name)
    return [
        _named(field, names, prefix + model.__name__.lstrip("_"))
        for model, names in by_model.items()
    ]


LIVECHAT_SCHEMAS = {
    **model_schemas(
        [*CHATVISOR_EVENTS.values(), chatvisor._Conversation],
        "validation",
        prefix="Chatvisor",
    ),
    **model_schemas([*JIVOCHAT_EVENTS, jivochat.ApiAgentMessage], "validation", prefix="Jivochat"),
}
LIVECHAT_SCHEMAS["ChatvisorConversation"] |= {
    "description": "What Chatvisor's own WebHooks POST: a bare Conversation object, no `event`.",
    "not": {"required": ["event"]},
}
LIVECHAT_SCHEMAS |= {
    "LivechatHook": {
        "description": (
            "Chatvisor: one event per request, by `event`, or a bare Conversation object"
            " (Chatvisor's own WebHooks). JivoChat: a Webhooks API event"
            " (`event_name`) or a Chat API agent message (`recipient`, `message`)."
        ),
        "anyOf": [
            *_by_name("event", CHATVISOR_EVENTS, "Chatvisor"),
            _ref("ChatvisorConversation"),
            _other("event", CHATVISOR_EVENTS, "a Chatvisor event the bridge does not know"),
            *_by_name(
                "event_name",
                {name: model for model, names in JIVOCHAT_EVENTS.items() for name in names},
                "Jivochat",
            ),
            _other(
                "event_name",
                (name for names in JIVOCHAT_EVENTS.values() for name in names),
                "a JivoChat event the bridge does not know",
            ),
            _ref("JivochatApiAgentMessage"),
        ],
    },
    # The connectors' hook_reply: JivoChat's chat_accepted and chat_updated get the CRM answer.
    "HookReply": _closed(
        ("result",),
        result={"type": "string", "enum": ["ok"]},
        contact_info=_closed(name=STRING, phone=STRING, email=STRING, description=STRING),
        custom_data={
            "type": "array",
            "items": _closed(("title", "content"), title=STRING, content=STRING, link=STRING),
        },
        enable_assign={"type": "boolean"},
        crm_link={**STRING, "description": "the session's page in the admin API"},
    ),
}

# --- what the bridge answers with -------------------------------------------------------------

BRIDGE_SCHEMAS: dict[str, Schema] = {
    **model_schemas(schemas.RESPONSES, "serialization"),
    **model_schemas(schemas.REQUESTS, "validation"),
    "Ok": _closed(("result",), result={"type": "string", "enum": ["ok"]}),
    "Health": _closed(("status",), status={"type": "string", "enum": ["ok"]}),
    # The connectors' readiness(): what /readyz says of each live chat.
    "LivechatReadiness": _closed(
        ("kind",),
        kind={"type": "string", "enum": list(KINDS)},
        agents_online=_nullable(
            "boolean",
            description="JivoChat: its Chat API /status; null when it could not be asked",
        ),
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
        schema_version={"type": "integer"},
        livechats={"type": "object", "additionalProperties": _ref("LivechatReadiness")},
    ),
    "NotReady": _closed(
        ("status", "database"),
        status={"type": "string", "enum": ["unavailable"]},
        database=STRING,
    ),
}


def _components(*groups: dict[str, Schema]) -> dict[str, Schema]:
    merged: dict[str, Schema] = {}
    for group in groups:
        clash = merged.keys() & group.keys()
        assert not clash, f"two component schemas named {sorted(clash)}"
        merged |= group
    return merged


COMPONENT_SCHEMAS = _components(MESSENGER_SCHEMAS, LIVECHAT_SCHEMAS, BRIDGE_SCHEMAS)

# --- the operations' shared pieces ---------------------------------------------------------


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
        "schemas": COMPONENT_SCHEMAS,
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
