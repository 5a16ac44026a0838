"""Property-based tests (Hypothesis) for every parser of every wire contract.

Parsers: the messenger envelope and requests (connectors/messenger.py), the Chatvisor-style hooks
(connectors/chatvisor.py), both JivoChat APIs (connectors/jivochat.py), the configuration
(bridge/settings.py) and the Standard Webhooks signature (connectors/webhooks.py).

Properties, for each of them:

- robustness: arbitrary bytes, arbitrary JSON values and objects, and valid payloads with one
  random part deleted, replaced or extended, give either the bridge's own types or exactly
  `InvalidInput` (settings: `ConfigError`), never any other exception; every `InvalidInput` has an
  errcode from a small known set and a message naming a field path or the body, never a token;
- correctness: valid payloads generated from the contracts (ids as strings or integers, optional
  fields present, absent or null, unknown fields added, every documented alias and quirk) parse
  into exactly the values given, ids normalised to strings (null is generated only where the
  parser takes it: the fields that refuse it are pinned among the known defects below);
- equivalence: an id given as the integer n parses the same as the string str(n).

Defects found while writing these have regression tests at the end: each
one fails today and will turn red (XPASS) once fixed, so it can become an ordinary test.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import inspect
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic_settings import BaseSettings
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge.core import model
from bridge.core.errors import InvalidInput
from bridge.errors import answer_for
from bridge.settings import (
    AdminSettings,
    ChatvisorSettings,
    ConfigError,
    DeliverySettings,
    JivochatSettings,
    LoggingSettings,
    MessengerSettings,
    ServerSettings,
    Settings,
    StorageSettings,
    SubscriptionSettings,
    settings_from_dict,
)
from connectors import chatvisor, jivochat, messenger, webhooks

# Each test's budget: the whole file takes about 20 s; the configuration's tests cost the most
# per example (pydantic-settings reads the environment each time), so they take fewer.
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True, scope="module")
def _no_bridge_environment() -> Iterator[None]:
    """Settings read BRIDGE_* variables over the dict; the properties are about the dict."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("BRIDGE_"):
                mp.delenv(name)
        yield


# --- generic strategies ---------------------------------------------------------------------

ABSENT: Any = object()  # a key left out of the payload altogether

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
# Well-behaved JSON: what the valid payloads' unknown extra fields carry.
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
# Anything Python's json.loads can return, NaN and infinities included: the bridge refuses
# those (invalid_json: they are not JSON and could not be sent on), the rest it must read.
wild_scalars = json_scalars | st.floats() | st.integers(min_value=-(2**80), max_value=2**80)
wild_values = st.recursive(
    wild_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
wild_objects = st.dictionaries(st.text(max_size=12), wild_values, max_size=6)

# Unknown fields the other side may add at any time; never a name the contracts use.
extra_keys = st.from_regex(r"x_[a-z0-9_]{1,8}", fullmatch=True)
extras = st.dictionaries(extra_keys, json_scalars | st.lists(json_scalars, max_size=2), max_size=2)

short_text = st.text(max_size=30)
nonempty_text = st.text(min_size=1, max_size=30)
# File URLs: usually with a path whose last part names the file, sometimes any text at all.
file_urls = st.text(max_size=12).map(lambda t: "https://files.example/d/" + t) | nonempty_text


def as_id(value: Any) -> Any:
    """What the bridge keeps of an id: integers become their decimal string."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def ids(min_size: int = 1, max_size: int = 40) -> st.SearchStrategy[Any]:
    """An id as the other side may send it: a string or an integer."""
    return st.text(min_size=min_size, max_size=max_size) | st.integers()


def optional(strategy: st.SearchStrategy[Any], *, null: bool = True) -> st.SearchStrategy[Any]:
    """The field absent, null (when the contract allows it) or given."""
    return (st.just(ABSENT) | st.none() | strategy) if null else (st.just(ABSENT) | strategy)


def put(doc: dict[str, Any], **fields: Any) -> dict[str, Any]:
    for key, value in fields.items():
        if value is not ABSENT:
            doc[key] = value
    return doc


def present(value: Any) -> Any:
    """The parsed value of an optional field: absent and null both mean None."""
    return None if value is ABSENT else value


@st.composite
def any_case(draw: st.DrawFn, word: str) -> str:
    flags = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if up else c.lower() for c, up in zip(word, flags, strict=True))


@st.composite
def encoded(draw: st.DrawFn, doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated(draw: st.DrawFn, doc: dict[str, Any], values: st.SearchStrategy[Any]) -> Any:
    """`doc` with one random part deleted, replaced by an arbitrary value, or given a new key."""
    doc = copy.deepcopy(doc)
    paths = list(_paths(doc))
    if not paths:
        return draw(values)
    path = draw(st.sampled_from(paths))
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    op = draw(st.sampled_from(["delete", "replace", "extend"]))
    if op == "delete":
        del parent[path[-1]]
    elif op == "replace" or not isinstance(parent[path[-1]], dict):
        parent[path[-1]] = draw(values)
    else:
        parent[path[-1]][draw(st.text(max_size=10))] = draw(values)
    return doc


def _dotted(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


# --- what every parser promises when it refuses -----------------------------------------------

# "path.to.field: what is wrong"; list items are numbered, e.g. data.files.0.URL. Brackets and
# commas admit pydantic's union-member names in paths (a known defect, pinned below).
FIELD_MESSAGE = re.compile(r"^(?P<path>[\w\[\],\-]+(?:\.[\w\[\],\-]+)*): \S")

MESSENGER_ERRCODES = {
    "invalid_json",
    "missing_field",
    "invalid_field",
    "empty_message",
    "unknown_type",
}
CHATVISOR_ERRCODES = {"invalid_json", "missing_field", "invalid_field", "empty_message"}
JIVOCHAT_ERRCODES = {
    "invalid_json",
    "missing_field",
    "invalid_field",
    "empty_message",
    "unknown_body",
}

# The top-level fields each contract documents (shared/protocols/*.md).
MESSENGER_FIELDS = {"type", "data"}
# A bare Conversation object (Chatvisor's own WebHooks) is refused by its own top-level fields.
CHATVISOR_FIELDS = {
    "event",
    "customerId",
    "message",
    "messageId",
    "conversation",
    "status",
    "url",
}
JIVOCHAT_FIELDS = {
    *("event_name", "chat_id", "widget_id", "user_token", "visitor", "agent", "agents"),
    *("department", "session", "page", "analytics", "assign_to", "chat", "plain_messages"),
    *("html_messages", "call", "offline_message_id", "message", "sender", "recipient"),
}


def check_refusal(
    exc: InvalidInput, errcodes: set[str], fields: set[str], token: str | None = None
) -> None:
    assert type(exc) is InvalidInput, repr(exc)
    assert answer_for(exc).status == 400
    assert exc.errcode in errcodes, exc.errcode
    assert exc.message and exc.message == str(exc)
    assert answer_for(exc).body() == {"error": exc.message, "errcode": exc.errcode}
    if token is not None:
        assert token not in exc.message
        assert token not in repr(exc)
    if exc.errcode == "invalid_json":
        assert exc.message.startswith("the body"), exc.message
    elif exc.errcode == "unknown_body":
        # Names what it looked for: the Webhooks API's and the Chat API's own fields.
        assert "event_name" in exc.message and "recipient" in exc.message, exc.message
    else:
        match = FIELD_MESSAGE.match(exc.message)
        assert match, exc.message
        assert match["path"].split(".")[0] in fields, exc.message


def check_chat_ref(chat: model.ChatRef) -> None:
    for value in dataclasses.astuple(chat):
        assert value is None or type(value) is str, chat


def check_files(files: tuple[model.FileRef, ...]) -> None:
    assert type(files) is tuple
    for f in files:
        assert type(f) is model.FileRef
        assert type(f.name) is str and type(f.url) is str and f.url
        assert f.size is None or type(f.size) is int


def check_events(events: list[model.LiveChatEvent]) -> None:
    """What a live-chat parser returns is a list of the bridge's events with ids as strings."""
    assert type(events) is list
    for ev in events:
        assert isinstance(
            ev,
            model.AgentMessage
            | model.ConversationState
            | model.AgentRead
            | model.Lifecycle
            | model.OtherEvent,
        ), ev
        if isinstance(ev, model.AgentMessage):
            check_chat_ref(ev.chat)
            assert ev.message_id is None or type(ev.message_id) is str
            assert type(ev.text) is str
            check_files(ev.files)
            assert ev.text or ev.files
            if ev.operator is not None:
                assert ev.operator.id is None or type(ev.operator.id) is str
                assert ev.operator.name is None or type(ev.operator.name) is str
        elif isinstance(ev, model.ConversationState):
            check_chat_ref(ev.chat)
            assert type(ev.open) is bool and type(ev.name) is str and type(ev.raw) is dict
        elif isinstance(ev, model.AgentRead):
            check_chat_ref(ev.chat)
            assert type(ev.message_id) is str and ev.message_id
        elif isinstance(ev, model.Lifecycle):
            check_chat_ref(ev.chat)
            assert type(ev.name) is str and ev.name and type(ev.raw) is dict
            if ev.agent is not None:
                assert ev.agent.id is None or type(ev.agent.id) is str
            if ev.transcript is not None:
                for line in ev.transcript:
                    assert type(line.sender) is str and type(line.text) is str
                    assert line.agent_id is None or type(line.agent_id) is str
        else:
            assert type(ev.name) is str and ev.name and type(ev.raw) is dict
            if ev.chat is not None:
                check_chat_ref(ev.chat)


def run_messenger(body: bytes, token: str | None = None) -> model.MessengerRequest | None:
    try:
        envelope = messenger.parse_envelope(body)
        assert type(envelope.type) is str and envelope.type
        assert envelope.token is None or type(envelope.token) is str
        assert type(envelope.data) is dict
        request = messenger.parse_request(envelope)
    except InvalidInput as exc:
        check_refusal(exc, MESSENGER_ERRCODES, MESSENGER_FIELDS, token)
        return None
    assert isinstance(
        request,
        model.UserMessage | model.UserInfoQuery | model.MessengerDisconnect | model.UserRead,
    )
    if isinstance(request, model.UserMessage):
        for value in (
            request.external_message_id,
            request.external_chat_id,
            request.external_user_id,
        ):
            assert type(value) is str and 1 <= len(value) <= 256
        assert type(request.text) is str
        check_files(request.files)
        assert request.text or request.files
    elif isinstance(request, model.UserInfoQuery):
        assert type(request.user_id) is str and request.user_id
    elif isinstance(request, model.UserRead):
        assert type(request.message_id) is str and request.message_id
    return request


def run_chatvisor(body: bytes) -> list[model.LiveChatEvent] | None:
    try:
        events = chatvisor.parse_hook(body)
    except InvalidInput as exc:
        check_refusal(exc, CHATVISOR_ERRCODES, CHATVISOR_FIELDS)
        return None
    check_events(events)
    return events


def run_jivochat(body: bytes) -> list[model.LiveChatEvent] | None:
    try:
        events = jivochat.parse_hook(body)
    except InvalidInput as exc:
        check_refusal(exc, JIVOCHAT_ERRCODES, JIVOCHAT_FIELDS)
        return None
    check_events(events)
    assert len(events) == 1
    return events


def refusal(parse: Callable[[bytes], Any], body: bytes) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse(body)
    return info.value


def without_raw(events: list[model.LiveChatEvent]) -> list[Any]:
    return [dataclasses.replace(ev, raw={}) if hasattr(ev, "raw") else ev for ev in events]


def stringify_ids(doc: Any, patterns: list[tuple[str, ...]]) -> Any:
    """`doc` with every integer at one of the id paths (`*` = any list index) as a string."""
    doc = copy.deepcopy(doc)

    def walk(node: Any, pattern: tuple[str, ...]) -> None:
        head, rest = pattern[0], pattern[1:]
        if head == "*":
            keys: list[Any] = list(range(len(node))) if isinstance(node, list) else []
        else:
            keys = [head] if isinstance(node, dict) and head in node else []
        for key in keys:
            if rest:
                walk(node[key], rest)
            elif isinstance(node[key], int) and not isinstance(node[key], bool):
                node[key] = str(node[key])

    for pattern in patterns:
        walk(doc, pattern)
    return doc


# Bodies in every shape json.loads takes: random bytes, JSON text in the encodings it detects,
# JSON with a byte flipped.
any_bytes = st.binary(max_size=300)


@st.composite
def json_bytes(draw: st.DrawFn, values: st.SearchStrategy[Any] = wild_values) -> bytes:
    text = json.dumps(draw(values), ensure_ascii=draw(st.booleans()))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"])))


@st.composite
def damaged(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> bytes:
    body = bytearray(draw(bodies))
    if body:
        index = draw(st.integers(0, len(body) - 1))
        body[index] = draw(st.integers(0, 255))
    return bytes(body)


# ==============================================================================================
# 1. The messenger: parse_envelope + parse_request
# ==============================================================================================

MESSENGER_TYPES = ["message", "userInfo", "disconnect", "markAsRead", "MarkMessageAsRead"]
MESSENGER_CANONICAL = {
    "message": "message",
    "userinfo": "userInfo",
    "disconnect": "disconnect",
    "markasread": "markAsRead",
    "markmessageasread": "markAsRead",
}
MESSENGER_ID_PATHS = [
    ("data", "externalMessageId"),
    ("data", "externalChatId"),
    ("data", "externalUserId"),
    ("data", "userId"),
    ("data", "messageId"),
]
tokens = st.binary(min_size=16, max_size=16).map(lambda b: "tok-" + b.hex())


@st.composite
def messenger_files(draw: st.DrawFn) -> tuple[dict[str, Any], model.FileRef]:
    url = draw(file_urls)
    spelling = draw(st.sampled_from(["URL", "url", "both"]))
    if spelling == "both":  # URL wins; an empty URL falls back to url
        upper = draw(st.sampled_from([url, ""]))
        other = draw(file_urls)
        fields = {"URL": upper, "url": other}
        url = upper or other
    else:
        fields = {spelling: url}
    name = draw(st.just(ABSENT) | st.just("") | short_text)
    size = draw(optional(st.integers(min_value=0)))
    doc = put({**draw(extras), **fields}, name=name, size=size)
    expected_name = name if name not in (ABSENT, "") else url.rsplit("/", 1)[-1]
    return doc, model.FileRef(name=expected_name, url=url, size=present(size))


@st.composite
def messenger_messages(draw: st.DrawFn) -> tuple[dict[str, Any], model.UserMessage | None]:
    """A valid `message` request and what it must parse into (None: refused as empty)."""
    message_id, chat_id, user_id = draw(ids(max_size=256)), draw(ids()), draw(ids())
    chat_name = draw(optional(st.text(max_size=50)))
    text = draw(st.just(ABSENT) | st.just("") | st.text(min_size=1, max_size=50) | nonempty_text)
    files = draw(st.just(ABSENT) | st.lists(messenger_files(), max_size=3))
    data = put(
        {
            **draw(extras),
            "externalMessageId": message_id,
            "externalChatId": chat_id,
            "externalUserId": user_id,
        },
        externalChatName=chat_name,
        text=text,
        files=ABSENT if files is ABSENT else [doc for doc, _ in files],
    )
    refs = () if files is ABSENT else tuple(ref for _, ref in files)
    if not present(text) and not refs:
        return data, None
    return data, model.UserMessage(
        external_message_id=as_id(message_id),
        external_chat_id=as_id(chat_id),
        external_user_id=as_id(user_id),
        text=present(text) or "",
        files=refs,
        external_chat_name=present(chat_name),
    )


@st.composite
def messenger_requests(
    draw: st.DrawFn,
) -> tuple[dict[str, Any], str, model.MessengerRequest | None]:
    """A valid request of any type: (body, token, expected request or None when refused)."""
    kind = draw(st.sampled_from(["message", "message", *MESSENGER_TYPES]))
    token = draw(tokens)
    expected: model.MessengerRequest | None
    if kind == "message":
        data, expected = draw(messenger_messages())
    elif kind == "userInfo":
        user_id = draw(ids())
        data, expected = {**draw(extras), "userId": user_id}, model.UserInfoQuery(as_id(user_id))
    elif kind == "disconnect":
        data, expected = draw(st.just(ABSENT) | st.none() | extras), model.MessengerDisconnect()
    else:
        message_id = draw(ids())
        data = {**draw(extras), "messageId": message_id}
        expected = model.UserRead(as_id(message_id))
    doc = put(
        {**draw(extras), "type": draw(any_case(kind)), "token": token},
        channelId=draw(optional(short_text)),
        data=data,
    )
    return doc, token, expected


@FAST
@given(body=any_bytes | json_bytes() | damaged(json_bytes()))
def test_messenger_any_bytes_parse_or_bad_request(body: bytes) -> None:
    run_messenger(body)


@FAST
@given(doc=wild_objects, kind=st.sampled_from(MESSENGER_TYPES) | short_text, token=tokens)
def test_messenger_any_object_never_leaks_the_token(
    doc: dict[str, Any], kind: str, token: str
) -> None:
    doc = {**doc, "type": kind, "token": token}
    if "data" not in doc or doc["data"] is None or isinstance(doc["data"], dict):
        run_messenger(json.dumps(doc).encode(), token)
    else:
        exc = refusal(messenger.parse_envelope, json.dumps(doc).encode())
        assert (exc.errcode, exc.message) == ("invalid_field", "data: must be an object")
        check_refusal(exc, MESSENGER_ERRCODES, MESSENGER_FIELDS, token)


@FAST
@given(data=st.data())
def test_messenger_mutated_requests_parse_or_bad_request(data: st.DataObject) -> None:
    doc, token, _ = data.draw(messenger_requests())
    doc = data.draw(mutated(doc, wild_values))
    if isinstance(doc, dict) and doc.get("token") != token:
        token = None  # the mutation replaced the token itself
    run_messenger(json.dumps(doc).encode(), token)


@FAST
@given(value=json_values.filter(lambda v: not isinstance(v, dict)))
def test_messenger_non_object_body_is_invalid_json(value: Any) -> None:
    exc = refusal(messenger.parse_envelope, json.dumps(value).encode())
    assert (exc.errcode, exc.message) == ("invalid_json", "the body must be a JSON object")


@FAST
@given(case=messenger_requests(), data=st.data())
def test_messenger_valid_requests_parse_to_exactly_their_values(
    case: tuple[dict[str, Any], str, model.MessengerRequest | None], data: st.DataObject
) -> None:
    doc, token, expected = case
    body = data.draw(encoded(doc))
    envelope = messenger.parse_envelope(body)
    assert envelope.type == MESSENGER_CANONICAL[doc["type"].lower()]
    assert envelope.token == token
    assert envelope.data == (doc.get("data") or {})
    if expected is None:
        exc = refusal(lambda b: messenger.parse_request(messenger.parse_envelope(b)), body)
        assert exc.errcode == "empty_message"
        check_refusal(exc, MESSENGER_ERRCODES, MESSENGER_FIELDS, token)
    else:
        assert messenger.parse_request(envelope) == expected
        assert run_messenger(body, token) == expected


@FAST
@given(case=messenger_requests())
def test_messenger_integer_ids_parse_like_their_strings(
    case: tuple[dict[str, Any], str, model.MessengerRequest | None],
) -> None:
    doc, token, _ = case
    as_strings = stringify_ids(doc, MESSENGER_ID_PATHS)
    assert run_messenger(json.dumps(doc).encode(), token) == run_messenger(
        json.dumps(as_strings).encode(), token
    )


@FAST
@given(token=st.one_of(st.none(), st.integers(), st.booleans(), st.lists(st.integers())))
def test_messenger_non_string_token_is_no_token(token: Any) -> None:
    doc = {"type": "disconnect", "token": token}
    assert messenger.parse_envelope(json.dumps(doc).encode()).token is None


@FAST
@given(kind=short_text.filter(lambda k: k.lower() not in MESSENGER_CANONICAL), token=tokens)
def test_messenger_unknown_type_is_named_without_the_token(kind: str, token: str) -> None:
    body = json.dumps({"type": kind, "token": token, "data": {}}).encode()
    if not kind:
        exc = refusal(messenger.parse_envelope, body)
        assert (exc.errcode, exc.message) == ("missing_field", "type: required string is missing")
    else:
        exc = refusal(lambda b: messenger.parse_request(messenger.parse_envelope(b)), body)
        assert exc.errcode == "unknown_type" and exc.message.startswith("type: ")
    check_refusal(exc, MESSENGER_ERRCODES, MESSENGER_FIELDS, token)


@FAST
@given(
    field=st.sampled_from(["externalMessageId", "externalChatId", "externalUserId"]),
    value=st.sampled_from(["", " " * 257, "x" * 257]) | st.integers(min_value=10**256),
)
def test_messenger_ids_out_of_bounds_are_named(field: str, value: Any) -> None:
    data = {"externalMessageId": "m", "externalChatId": "c", "externalUserId": "u", "text": "hi"}
    body = json.dumps({"type": "message", "data": {**data, field: value}}).encode()
    exc = refusal(lambda b: messenger.parse_request(messenger.parse_envelope(b)), body)
    assert exc.errcode == "invalid_field" and exc.message.startswith(f"data.{field}: ")


@FAST
@given(
    file=st.dictionaries(st.sampled_from(["name", "size", "x"]), json_scalars),
    index=st.integers(0, 2),
)
def test_messenger_file_without_url_is_named(file: dict[str, Any], index: int) -> None:
    assume("name" not in file or isinstance(file["name"], str))
    assume(file.get("size") is None or (type(file.get("size")) is int and file["size"] >= 0))
    files = [{"URL": "http://x/a"}] * index + [file]
    body = json.dumps(
        {
            "type": "message",
            "data": {
                "externalMessageId": 1,
                "externalChatId": 2,
                "externalUserId": 3,
                "files": files,
            },
        }
    ).encode()
    exc = refusal(lambda b: messenger.parse_request(messenger.parse_envelope(b)), body)
    assert (exc.errcode, exc.message) == ("missing_field", f"data.files.{index}.URL: required")


# ==============================================================================================
# 2. The Chatvisor-style live chat: parse_hook
# ==============================================================================================

CHATVISOR_EVENTS = ["message.new", "conversation.new", "conversation.status", "message.read"]
CHATVISOR_ID_PATHS = [
    ("customerId",),
    ("messageId",),
    ("message", "id"),
    ("message", "sender", "id"),
    ("conversation", "customerId"),
]


@st.composite
def chatvisor_files(draw: st.DrawFn) -> tuple[dict[str, Any], model.FileRef]:
    url = draw(file_urls)
    name = draw(st.just(ABSENT) | st.just("") | short_text)
    size = draw(optional(st.integers(min_value=0)))
    doc = put({**draw(extras), "url": url}, name=name, size=size)
    expected_name = name if name not in (ABSENT, "") else url.rsplit("/", 1)[-1]
    return doc, model.FileRef(expected_name, url, present(size))


@st.composite
def chatvisor_hooks(draw: st.DrawFn) -> tuple[dict[str, Any], list[model.LiveChatEvent] | None]:
    """A valid hook and the events it must parse into (None: refused as empty)."""
    event = draw(
        st.sampled_from(["message.new", "message.new", *CHATVISOR_EVENTS, "bare", "unknown"])
    )
    customer_id = draw(ids())
    chat = model.ChatRef(customer_id=as_id(customer_id))
    if event == "message.new":
        sender_type = draw(
            st.just("agent")
            | st.just("agent")
            | st.sampled_from(["customer", "system"])
            | short_text
        )
        sender_id, sender_name = draw(optional(ids())), draw(optional(short_text))
        message_id, text = draw(optional(ids())), draw(st.just(ABSENT) | short_text)
        files = draw(st.just(ABSENT) | st.lists(chatvisor_files(), max_size=3))
        sender = put({**draw(extras), "type": sender_type}, id=sender_id, name=sender_name)
        message = put(
            {**draw(extras), "sender": sender},
            id=message_id,
            text=text,
            files=ABSENT if files is ABSENT else [doc for doc, _ in files],
            timestamp=draw(optional(st.just("2024-05-01T10:00:00Z"))),
        )
        doc = {**draw(extras), "event": event, "customerId": customer_id, "message": message}
        refs = () if files is ABSENT else tuple(ref for _, ref in files)
        if sender_type == "customer":
            return doc, []
        if sender_type != "agent":
            return doc, [model.OtherEvent(event, doc, chat)]
        if not present(text) and not refs:
            return doc, None
        operator = model.Operator(as_id(present(sender_id)), present(sender_name))
        agent = model.AgentMessage(
            chat, as_id(present(message_id)), present(text) or "", refs, operator
        )
        return doc, [agent]
    if event.startswith("conversation.") or event == "bare":
        status = draw(
            st.just(ABSENT)
            | st.sampled_from(["UNREAD", "DONE", "UNRESOLVED"]).flatmap(any_case)
            | short_text
        )
        url = draw(optional(short_text))
        # Chatvisor's docs spell lastMessage's text key `test`; both are read.
        text_key = draw(st.sampled_from(["text", "test"]))
        last = draw(optional(st.fixed_dictionaries({text_key: short_text})))
        conversation = put(
            {**draw(extras), "customerId": customer_id}, status=status, url=url, lastMessage=last
        )
        # Only DONE closes; anything else is new, reopened or a status change.
        is_open = status is ABSENT or status.upper() != "DONE"
        last_text = last[text_key] if isinstance(last, dict) else None
        if event == "bare":  # Chatvisor's own WebHooks: the Conversation object, no `event`
            doc = conversation
            new = status is ABSENT or status.upper() == "UNREAD"
            name = "conversation.new" if new else "conversation.status"
            state = model.ConversationState(
                chat,
                is_open,
                name,
                present(url),
                doc,
                inferred=True,
                last_text=last_text,
                # An unknown customer's bare conversation is recorded as a new one.
                name_if_unknown="conversation.new",
            )
            return doc, [state]
        doc = {**draw(extras), "event": event, "conversation": conversation}
        state = model.ConversationState(
            chat, is_open, event, present(url), doc, last_text=last_text
        )
        return doc, [state]
    if event == "message.read":
        message_id = draw(ids())
        doc = {**draw(extras), "event": event, "customerId": customer_id, "messageId": message_id}
        return doc, [model.AgentRead(chat, as_id(message_id))]
    name = draw(nonempty_text.filter(lambda n: n not in CHATVISOR_EVENTS))
    doc = {**draw(extras), "event": name}
    return doc, [model.OtherEvent(name, doc)]


@FAST
@given(body=any_bytes | json_bytes() | damaged(json_bytes()))
def test_chatvisor_any_bytes_parse_or_bad_request(body: bytes) -> None:
    run_chatvisor(body)


@FAST
@given(doc=wild_objects, event=st.sampled_from(CHATVISOR_EVENTS) | wild_values)
def test_chatvisor_any_object_parses_or_bad_request(doc: dict[str, Any], event: Any) -> None:
    run_chatvisor(json.dumps({**doc, "event": event}).encode())


@FAST
@given(data=st.data())
def test_chatvisor_mutated_hooks_parse_or_bad_request(data: st.DataObject) -> None:
    doc, _ = data.draw(chatvisor_hooks())
    run_chatvisor(json.dumps(data.draw(mutated(doc, wild_values))).encode())


@FAST
@given(case=chatvisor_hooks(), data=st.data())
def test_chatvisor_valid_hooks_parse_to_exactly_their_values(
    case: tuple[dict[str, Any], list[model.LiveChatEvent] | None], data: st.DataObject
) -> None:
    doc, expected = case
    body = data.draw(encoded(doc))
    if expected is None:
        exc = refusal(chatvisor.parse_hook, body)
        assert (exc.errcode, exc.message) == (
            "empty_message",
            "message.text: a message needs text or files",
        )
    else:
        assert chatvisor.parse_hook(body) == expected
        assert run_chatvisor(body) == expected


@FAST
@given(case=chatvisor_hooks())
def test_chatvisor_integer_ids_parse_like_their_strings(
    case: tuple[dict[str, Any], list[model.LiveChatEvent] | None],
) -> None:
    doc, _ = case
    as_strings = stringify_ids(doc, CHATVISOR_ID_PATHS)
    a = run_chatvisor(json.dumps(doc).encode())
    b = run_chatvisor(json.dumps(as_strings).encode())
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert without_raw(a) == without_raw(b)


# ==============================================================================================
# 3. JivoChat: parse_hook, Webhooks API events and Chat API agent messages
# ==============================================================================================

SEED_FILES = sorted((Path(__file__).parent / "fixtures" / "jivochat").glob("*.request.json"))
SEEDS = {p.name.removesuffix(".request.json"): json.loads(p.read_text()) for p in SEED_FILES}
JIVO_EVENTS = [
    "chat_accepted",
    "chat_updated",
    "client_updated",
    "client_attribute_updated",
    "chat_assigned",
    "chat_finished",
    "call_event",
    "offline_message",
]
AGENT_EVENTS = {"chat_accepted", "chat_updated", "client_updated", "client_attribute_updated"}
AGENT_EVENTS |= {"chat_assigned", "call_event"}
FILE_TYPES = ["photo", "video", "document", "audio", "file", "image"]
JIVO_ID_PATHS = [
    ("chat_id",),
    ("widget_id",),
    ("user_token",),
    ("offline_message_id",),
    ("visitor", "phone"),
    ("visitor", "number"),
    ("agent", "id"),
    ("agent", "phone"),
    ("agents", "*", "id"),
    ("agents", "*", "phone"),
    ("department", "id"),
    ("chat", "messages", "*", "agent_id"),
    ("call", "phone"),
    ("sender", "id"),
    ("recipient", "id"),
    ("message", "id"),
]


@st.composite
def jivo_visitors(draw: st.DrawFn) -> tuple[Any, model.Contact | None]:
    visitor = draw(st.just(ABSENT) | st.none() | extras)
    if visitor in (ABSENT, None):
        return visitor, None
    name, email, phone = (
        draw(optional(short_text)),
        draw(optional(short_text)),
        draw(optional(ids())),
    )
    description = draw(optional(short_text))
    put(
        visitor,
        name=name,
        email=email,
        phone=phone,
        description=description,
        number=draw(optional(ids())),
        social=draw(optional(st.dictionaries(extra_keys, json_values, max_size=2))),
        chats_count=draw(optional(st.integers(0, 10**6) | st.integers(0, 99).map(str))),
    )
    return visitor, model.Contact(
        present(name), present(email), as_id(present(phone)), present(description)
    )


@st.composite
def jivo_agents(draw: st.DrawFn) -> tuple[dict[str, Any], model.Operator]:
    agent_id, name = draw(optional(ids())), draw(optional(short_text))
    doc = put(
        draw(extras),
        id=agent_id,
        name=name,
        email=draw(optional(short_text)),
        phone=draw(optional(ids())),
    )
    return doc, model.Operator(as_id(present(agent_id)), present(name))


@st.composite
def jivo_log_lines(draw: st.DrawFn) -> tuple[dict[str, Any], model.TranscriptLine]:
    timestamp = draw(
        optional(st.integers(0, 2**40) | st.floats(0, 2**40, allow_nan=False, allow_infinity=False))
    )
    kind = draw(optional(st.sampled_from(["visitor", "agent"]) | short_text))
    agent_id, text = draw(optional(ids())), draw(optional(short_text))
    doc = put(
        draw(extras),
        timestamp=timestamp,
        type=kind,
        agent_id=agent_id,
        message=text,
        blacklisted=draw(optional(st.booleans())),
    )
    ts = present(timestamp)
    return doc, model.TranscriptLine(
        present(kind) or "unknown",
        present(text) or "",
        None if ts is None else float(ts),
        as_id(present(agent_id)),
    )


@st.composite
def jivo_events(
    draw: st.DrawFn, names: list[str] | None = None
) -> tuple[dict[str, Any], model.LiveChatEvent]:
    """A valid Webhooks-API event (one of `names` if given) and the event it must parse into."""
    raw_name = draw(
        st.sampled_from(names)
        if names
        else st.sampled_from([*JIVO_EVENTS, "chat_finished", "offline_messages"])
        | nonempty_text.filter(lambda n: n not in JIVO_EVENTS and n != "offline_messages")
    )
    name = "offline_message" if raw_name == "offline_messages" else raw_name
    doc: dict[str, Any] = {**draw(extras), "event_name": raw_name}
    if name not in JIVO_EVENTS:
        return doc, model.OtherEvent(name, doc)
    chat_id, user_token = (
        draw(optional(ids())),
        draw(optional(st.text(max_size=40) | st.integers())),
    )
    visitor, contact = draw(jivo_visitors())
    page = draw(optional(st.fixed_dictionaries({"url": short_text, "title": short_text})))
    put(
        doc,
        chat_id=chat_id,
        widget_id=draw(optional(ids())),
        user_token=user_token,
        visitor=visitor,
        department=draw(
            optional(st.fixed_dictionaries({}, optional={"id": ids(), "name": short_text}))
        ),
        session=draw(optional(st.dictionaries(extra_keys, json_values, max_size=2))),
        page=page,
        analytics=draw(optional(st.just({}) | st.just([]) | st.lists(json_scalars, max_size=2))),
    )
    agent: model.Operator | None = None
    assign_to: Any = ABSENT
    transcript: tuple[model.TranscriptLine, ...] | None = None
    if name in AGENT_EVENTS:
        given_agent = draw(st.just(ABSENT) | st.none() | jivo_agents())
        if given_agent not in (ABSENT, None):
            doc["agent"], agent = given_agent
        else:
            put(doc, agent=given_agent)
    if name == "chat_assigned":
        assign_to = draw(optional(short_text))
        put(doc, assign_to=assign_to)
    if name == "call_event":
        call = draw(
            optional(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "type": st.sampled_from(["callback", "incoming", "outgoing"]),
                        "phone": ids(),
                        "status": st.sampled_from(["start", "end", "error"]),
                        "reason": short_text | st.none(),
                        "record_url": short_text | st.none(),
                    },
                )
            )
        )
        put(doc, call=call)
    if name == "offline_message":
        put(doc, offline_message_id=draw(optional(ids())), message=draw(optional(short_text)))
    if name == "chat_finished":
        agents = draw(
            st.just(ABSENT) | st.lists(jivo_agents(), max_size=3, unique_by=lambda a: a[1])
        )
        if agents is not ABSENT:
            doc["agents"] = [a for a, _ in agents]
            agent = agents[-1][1] if agents else None
        chat_log = draw(st.just(ABSENT) | st.none() | extras | extras)
        if chat_log not in (ABSENT, None):
            lines = draw(st.just(ABSENT) | st.lists(jivo_log_lines(), max_size=3))
            put(
                chat_log,
                messages=ABSENT if lines is ABSENT else [line for line, _ in lines],
                rate=draw(optional(st.sampled_from(["positive", "negative"]))),
                blacklisted=draw(optional(st.booleans())),
            )
            transcript = () if lines is ABSENT else tuple(t for _, t in lines)
        put(
            doc,
            chat=chat_log,
            plain_messages=draw(optional(short_text)),
            html_messages=draw(optional(short_text)),
        )
    email = contact.email if contact else None
    phone = contact.phone if contact else None
    return doc, model.Lifecycle(
        name=name,
        chat=model.ChatRef(
            client_key=as_id(present(user_token)),
            conversation_id=as_id(present(chat_id)),
            email=email,
            phone=phone,
            page_url=page["url"] if isinstance(page, dict) else None,
        ),
        raw=doc,
        contact=contact,
        agent=agent,
        wants_answer=name in ("chat_accepted", "chat_updated"),
        accepts=name == "chat_accepted",
        closes=name == "chat_finished",
        assign_to=present(assign_to),
        transcript=transcript,
    )


@st.composite
def jivo_agent_messages(
    draw: st.DrawFn, kinds: list[str] | None = None
) -> tuple[dict[str, Any], model.LiveChatEvent | tuple[str, str]]:
    """A valid Chat-API agent message (of one of `kinds` if given) and its event, or (errcode,
    message) when it must be refused."""
    recipient = draw(ids())
    chat = model.ChatRef(client_key=as_id(recipient))
    sender = draw(st.just(ABSENT) | st.none() | jivo_agents())
    kind = draw(
        st.sampled_from(kinds)
        if kinds
        else st.just(ABSENT)
        | st.sampled_from(["text", "text", *FILE_TYPES, "typing", "seen"])
        | short_text.filter(lambda k: k not in FILE_TYPES)
    )
    message_id = draw(optional(ids()))
    text = draw(nonempty_text | st.just(ABSENT) | st.none() | st.just(""))
    file, file_name = draw(optional(st.just("") | file_urls)), draw(optional(short_text))
    message = put(draw(extras), type=kind, id=message_id, text=text, file=file, file_name=file_name)
    doc = put(
        {**draw(extras), "recipient": {**draw(extras), "id": recipient}, "message": message},
        sender=sender if sender in (ABSENT, None) else sender[0],
    )
    kind = "text" if kind is ABSENT else kind
    files: tuple[model.FileRef, ...] = ()
    if kind in FILE_TYPES:
        if not present(file):
            return doc, ("missing_field", f"message.file: required for a {kind} message")
        files = (model.FileRef(present(file_name) or file.rsplit("/", 1)[-1], file),)
    elif kind != "text":
        return doc, model.OtherEvent(f"chat_api.{kind}", doc, chat)
    if not present(text) and not files:
        return doc, ("empty_message", "message.text: a message needs text or a file")
    operator = None if sender in (ABSENT, None) else sender[1]
    return doc, model.AgentMessage(
        chat, as_id(present(message_id)), present(text) or "", files, operator
    )


@FAST
@given(body=any_bytes | json_bytes() | damaged(json_bytes()))
def test_jivochat_any_bytes_parse_or_bad_request(body: bytes) -> None:
    run_jivochat(body)


@FAST
@given(
    doc=wild_objects,
    marker=st.sampled_from(["event_name", "recipient", "message", None]),
    value=wild_values | st.sampled_from([*JIVO_EVENTS, "offline_messages"]),
)
def test_jivochat_any_object_parses_or_bad_request(
    doc: dict[str, Any], marker: str | None, value: Any
) -> None:
    if marker is not None:
        doc = {**doc, marker: value}
    run_jivochat(json.dumps(doc).encode())


@FAST
@given(data=st.data(), seed=st.sampled_from(sorted(SEEDS)))
def test_jivochat_mutated_seed_payloads_parse_or_bad_request(
    data: st.DataObject, seed: str
) -> None:
    run_jivochat(json.dumps(data.draw(mutated(SEEDS[seed], wild_values))).encode())


@FAST
@given(data=st.data())
def test_jivochat_mutated_generated_payloads_parse_or_bad_request(data: st.DataObject) -> None:
    doc, _ = data.draw(jivo_events() | jivo_agent_messages())
    run_jivochat(json.dumps(data.draw(mutated(doc, wild_values))).encode())


@pytest.mark.parametrize("seed", sorted(SEEDS))
def test_jivochat_seed_payloads_parse(seed: str) -> None:
    events = run_jivochat(json.dumps(SEEDS[seed]).encode())
    assert events is not None
    assert type(events[0]) is model.Lifecycle and events[0].name == seed


@FAST
@given(
    case=jivo_events()
    # and the events with the most structure, on their own: agents, transcript, calls
    | jivo_events(["chat_finished", "chat_finished", "call_event", "chat_assigned"]),
    data=st.data(),
)
def test_jivochat_valid_events_parse_to_exactly_their_values(
    case: tuple[dict[str, Any], model.LiveChatEvent], data: st.DataObject
) -> None:
    doc, expected = case
    body = data.draw(encoded(doc))
    assert jivochat.parse_hook(body) == [expected]
    assert run_jivochat(body) == [expected]


@FAST
@given(case=jivo_agent_messages() | jivo_agent_messages(FILE_TYPES), data=st.data())
def test_jivochat_valid_agent_messages_parse_to_exactly_their_values(
    case: tuple[dict[str, Any], model.LiveChatEvent | tuple[str, str]], data: st.DataObject
) -> None:
    doc, expected = case
    body = data.draw(encoded(doc))
    if isinstance(expected, tuple):
        exc = refusal(jivochat.parse_hook, body)
        assert (exc.errcode, exc.message) == expected
        check_refusal(exc, JIVOCHAT_ERRCODES, JIVOCHAT_FIELDS)
    else:
        assert jivochat.parse_hook(body) == [expected]


@FAST
@given(case=jivo_events() | jivo_agent_messages())
def test_jivochat_integer_ids_parse_like_their_strings(case: tuple[dict[str, Any], Any]) -> None:
    doc, _ = case
    a = run_jivochat(json.dumps(doc).encode())
    b = run_jivochat(json.dumps(stringify_ids(doc, JIVO_ID_PATHS)).encode())
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert without_raw(a) == without_raw(b)


@FAST
@given(seed=st.sampled_from(sorted(SEEDS)), data=st.data())
def test_jivochat_seed_ids_as_int_or_str_parse_alike(seed: str, data: st.DataObject) -> None:
    """The seed payloads with every numeric-looking id flipped between int and str."""
    doc = copy.deepcopy(SEEDS[seed])
    for path in (("chat_id",), ("widget_id",), ("visitor", "number"), ("department", "id")):
        node = doc
        for step in path[:-1]:
            node = node.get(step) or {}
        if path[-1] in node and str(node[path[-1]]).isdigit() and data.draw(st.booleans()):
            node[path[-1]] = int(node[path[-1]])
    a = run_jivochat(json.dumps(doc).encode())
    b = run_jivochat(json.dumps(stringify_ids(doc, JIVO_ID_PATHS)).encode())
    assert a is not None and b is not None
    assert without_raw(a) == without_raw(b)


@FAST
@given(doc=json_objects.filter(lambda d: not {"event_name", "recipient", "message"} & set(d)))
def test_jivochat_body_of_neither_api_is_refused_by_name(doc: dict[str, Any]) -> None:
    exc = refusal(jivochat.parse_hook, json.dumps(doc).encode())
    assert exc.errcode == "unknown_body"
    check_refusal(exc, JIVOCHAT_ERRCODES, JIVOCHAT_FIELDS)


# ==============================================================================================
# 4. The configuration: settings_from_dict
# ==============================================================================================

PROBLEM = re.compile(r"^[\w.\-\[\] ]+: .+")
channel_ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,10}", fullmatch=True)
secrets = st.binary(min_size=12, max_size=12).map(lambda b: "sec-" + b.hex())
hosts = st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[a-z][a-z0-9]{0,8}){0,2}", fullmatch=True)
whsec = st.binary(min_size=16, max_size=64).map(lambda b: "whsec_" + base64.b64encode(b).decode())
positive = st.floats(min_value=0.001, max_value=1e6) | st.integers(1, 10**6)
# pydantic-settings takes these as options of the settings object itself, not as config keys:
# see test_settings_underscore_options_are_unknown_keys for what that does to a config file.
SETTINGS_OPTIONS = {
    name for name in inspect.signature(BaseSettings.__init__).parameters if name.startswith("_")
}


@st.composite
def http_urls(draw: st.DrawFn) -> str:
    port = draw(st.none() | st.integers(1, 65535))
    path = draw(st.lists(st.from_regex(r"[a-z0-9_-]{1,8}", fullmatch=True), max_size=3))
    return (
        f"{draw(st.sampled_from(['http', 'https']))}://{draw(hosts)}"
        + (f":{port}" if port else "")
        + "".join(f"/{p}" for p in path)
        + draw(st.sampled_from(["", "/"]))
    )


@st.composite
def bad_urls(draw: st.DrawFn) -> str:
    host = draw(hosts)
    return draw(
        st.sampled_from(
            [
                "",
                "http://",
                "https:///path",
                f"{host}/hook",
                f"{host}:8080",
                f"ftp://{host}/hook",
                f"file:///{host}",
                f"ws://{host}/socket",
                f"mailto:{host}",
                f"http://{host}:99999/",
                f"http://{host}:port/",
                "//" + host,
            ]
        )
    )


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    lc_ids = draw(st.lists(channel_ids, min_size=1, max_size=3, unique=True))
    livechats: dict[str, Any] = {}
    for lc in lc_ids:
        if draw(st.booleans()):
            livechats[lc] = {
                "kind": "chatvisor",
                "api_url": draw(http_urls()),
                "api_token": draw(secrets),
                "hook_token": draw(secrets),
            }
        else:
            livechats[lc] = put(
                {
                    "kind": "jivochat",
                    "chat_api_url": draw(http_urls()),
                    "hook_token": draw(secrets),
                },
                status_timeout=draw(optional(positive, null=False)),
            )
    m_ids = draw(st.lists(channel_ids, max_size=3, unique=True))
    hooks = draw(
        st.lists(
            http_urls(), min_size=len(m_ids), max_size=len(m_ids), unique_by=lambda u: u.rstrip("/")
        )
    )
    messengers = {
        m: put(
            {
                "name": draw(nonempty_text),
                "livechat": draw(st.sampled_from(lc_ids)),
                "webhook": hook,
                "confirmation_code": draw(st.just("") | secrets),
            },
            operator_sessions=draw(optional(st.booleans(), null=False)),
            enabled=draw(optional(st.booleans(), null=False)),
        )
        for m, hook in zip(m_ids, hooks, strict=True)
    }
    sub_urls = draw(st.lists(http_urls(), max_size=2, unique_by=lambda u: u.rstrip("/")))
    subscriptions = [
        put(
            {
                "url": url,
                "secret": draw(whsec),
                "events": draw(
                    st.just("*")
                    | st.lists(st.sampled_from(JIVO_EVENTS) | nonempty_text, min_size=1, max_size=3)
                ),
            },
            livechat=draw(optional(st.sampled_from(lc_ids))),
            id=draw(optional(st.just(f"sub{index}"))),
        )
        for index, url in enumerate(sub_urls)
    ]
    config: dict[str, Any] = {
        "admin": {"token": draw(secrets)},
        "livechats": livechats,
        "messengers": messengers,
    }
    if subscriptions or draw(st.booleans()):
        config["subscriptions"] = subscriptions
    sections = {
        "server": st.fixed_dictionaries(
            {},
            optional={
                "host": st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "localhost"]),
                "port": st.integers(1, 65535),
                "public_url": http_urls(),
                "max_body_bytes": st.integers(1024, 64 * 1024 * 1024),
            },
        ),
        "storage": st.fixed_dictionaries(
            {},
            optional={
                "path": st.text(min_size=1, max_size=20),
                "synchronous": st.sampled_from(["normal", "full"]),
                "busy_timeout": st.floats(0, 600) | st.integers(0, 600),
            },
        ),
        "delivery": st.fixed_dictionaries(
            {},
            optional={
                "request_timeout": positive,
                "retry_base": positive,
                "retry_cap": positive,
                "give_up_after": positive,
                "min_attempts": st.integers(1, 100),
                "concurrency": st.integers(1, 1024),
                "profile_ttl": st.floats(0, 1e6) | st.integers(0, 10**6),
            },
        ),
        "logging": st.fixed_dictionaries(
            {},
            optional={
                "level": st.sampled_from(["debug", "info", "warning", "error"]),
                "format": st.sampled_from(["auto", "json", "console"]),
            },
        ),
    }
    for section, strategy in sections.items():
        if draw(st.booleans()):
            config[section] = draw(strategy)
    return config


def problems_of(config: dict[str, Any]) -> list[str]:
    try:
        settings_from_dict(config)
    except ConfigError as exc:
        assert exc.problems, "a ConfigError names at least one problem"
        assert str(exc) == "\n".join(exc.problems)
        return exc.problems
    raise AssertionError(f"accepted: {config!r}")


def check_problems(problems: list[str], config: dict[str, Any]) -> None:
    for problem in problems:
        assert PROBLEM.match(problem), problem
        assert "\n" not in problem and "Traceback" not in problem, problem
    # Every secret the generators make starts with `sec-` or `whsec_`: none may be echoed.
    secret_values = [
        value
        for path in _paths(config)
        if isinstance(value := _get(config, path), str) and value.startswith(("sec-", "whsec_"))
    ]
    for secret in secret_values:
        assert not any(secret in p for p in problems), (secret, problems)


def _section_paths(config: dict[str, Any]) -> list[tuple[tuple[Any, ...], type]]:
    """Every object of the config with the settings class that reads it."""
    out: list[tuple[tuple[Any, ...], type]] = [((), Settings)]
    for name, cls in (
        ("server", ServerSettings),
        ("storage", StorageSettings),
        ("delivery", DeliverySettings),
        ("logging", LoggingSettings),
    ):
        if name in config:
            out.append(((name,), cls))
    out.append((("admin",), AdminSettings))
    for lc_id, lc in config["livechats"].items():
        cls = ChatvisorSettings if lc["kind"] == "chatvisor" else JivochatSettings
        out.append((("livechats", lc_id), cls))
    for m_id in config["messengers"]:
        out.append((("messengers", m_id), MessengerSettings))
    for index, _ in enumerate(config.get("subscriptions", [])):
        out.append((("subscriptions", index), SubscriptionSettings))
    return out


def _get(config: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        config = config[step]
    return config


@SLOW
@given(config=valid_configs())
def test_settings_valid_configs_carry_exactly_their_values(config: dict[str, Any]) -> None:
    s = settings_from_dict(copy.deepcopy(config))
    assert s.admin.token.get_secret_value() == config["admin"]["token"]
    assert set(s.livechats) == set(config["livechats"])
    for lc_id, lc in config["livechats"].items():
        got = s.livechats[lc_id]
        assert got.kind == lc["kind"]
        assert got.hook_token.get_secret_value() == lc["hook_token"]
        if isinstance(got, ChatvisorSettings):
            assert got.api_url == lc["api_url"].rstrip("/")
            assert got.api_token.get_secret_value() == lc["api_token"]
        else:
            assert got.chat_api_url.get_secret_value() == lc["chat_api_url"].rstrip("/")
            assert got.status_timeout == lc.get("status_timeout", 2.0)
    assert set(s.messengers) == set(config["messengers"])
    for m_id, m in config["messengers"].items():
        got_m = s.messengers[m_id]
        assert (got_m.name, got_m.livechat, got_m.webhook) == (
            m["name"],
            m["livechat"],
            m["webhook"].rstrip("/"),
        )
        assert got_m.confirmation_code.get_secret_value() == m["confirmation_code"]
        assert got_m.operator_sessions == m.get("operator_sessions", True)
        assert got_m.enabled == m.get("enabled", True)
    subs = config.get("subscriptions", [])
    assert len(s.subscriptions) == len(subs)
    for got_s, sub in zip(s.subscriptions, subs, strict=True):
        assert got_s.url == sub["url"].rstrip("/")
        assert got_s.secret.get_secret_value() == sub["secret"]
        assert got_s.events == sub["events"]
        assert (got_s.livechat, got_s.id) == (sub.get("livechat"), sub.get("id"))
    for section in ("server", "storage", "delivery", "logging"):
        for key, value in config.get(section, {}).items():
            got_v = getattr(getattr(s, section), key)
            assert got_v == (value.rstrip("/") if key == "public_url" else value), (section, key)
    assert set(s.secrets()) >= {config["admin"]["token"]}


def _required_paths(config: dict[str, Any]) -> list[tuple[Any, ...]]:
    paths: list[tuple[Any, ...]] = [("admin",), ("admin", "token")]
    for lc_id, lc in config["livechats"].items():
        keys = ["kind", "hook_token"]
        keys += ["api_url", "api_token"] if lc["kind"] == "chatvisor" else ["chat_api_url"]
        paths += [("livechats", lc_id, key) for key in keys]
    for m_id in config["messengers"]:
        keys = ["name", "livechat", "webhook", "confirmation_code"]
        paths += [("messengers", m_id, key) for key in keys]
    for index, _ in enumerate(config.get("subscriptions", [])):
        paths += [("subscriptions", index, key) for key in ("url", "secret", "events")]
    return paths


@SLOW
@given(data=st.data())
def test_settings_missing_required_key_is_named(data: st.DataObject) -> None:
    config = data.draw(valid_configs())
    path = data.draw(st.sampled_from(_required_paths(config)))
    del _get(config, path[:-1])[path[-1]]
    problems = problems_of(config)
    check_problems(problems, config)
    assert f"{_dotted(path)}: required key is missing" in problems


@SLOW
@given(data=st.data())
def test_settings_wrong_type_is_named(data: st.DataObject) -> None:
    config = data.draw(valid_configs())
    candidates = [
        p
        for p in _paths(config)
        # `events` is a union: see test_settings_events_problem_names_the_key_only.
        if "events" not in p
    ]
    path = data.draw(st.sampled_from(candidates))
    old = _get(config, path)
    if isinstance(old, dict | list) and path[0] in ("livechats", "messengers", "subscriptions"):
        wrong = data.draw(st.integers() | st.just("x"))  # a container where an object belongs
    else:
        wrong = data.draw(
            st.lists(st.integers(), max_size=2)
            | st.dictionaries(extra_keys, st.integers(), max_size=2)
        )
    assume(type(wrong) is not type(old))
    _get(config, path[:-1])[path[-1]] = wrong
    problems = problems_of(config)
    check_problems(problems, config)
    assert any(p.startswith(_dotted(path)) for p in problems), (path, problems)


@SLOW
@given(data=st.data())
def test_settings_unknown_key_is_named(data: st.DataObject) -> None:
    config = data.draw(valid_configs())
    where, cls = data.draw(st.sampled_from(_section_paths(config)))
    key = data.draw(
        st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
            lambda k: k not in cls.model_fields
        )
    )
    _get(config, where)[key] = data.draw(json_scalars)
    problems = problems_of(config)
    check_problems(problems, config)
    assert f"{_dotted((*where, key))}: unknown key" in problems


@SLOW
@given(data=st.data())
def test_settings_bad_url_is_named(data: st.DataObject) -> None:
    config = data.draw(valid_configs())
    targets: list[tuple[Any, ...]] = [("server", "public_url")]
    for lc_id, lc in config["livechats"].items():
        targets.append(
            ("livechats", lc_id, "api_url" if lc["kind"] == "chatvisor" else "chat_api_url")
        )
    targets += [("messengers", m_id, "webhook") for m_id in config["messengers"]]
    targets += [("subscriptions", i, "url") for i, _ in enumerate(config.get("subscriptions", []))]
    path = data.draw(st.sampled_from(targets))
    config.setdefault("server", {})
    _get(config, path[:-1])[path[-1]] = data.draw(bad_urls())
    problems = problems_of(config)
    check_problems(problems, config)
    assert any(p.startswith(f"{_dotted(path)}: ") for p in problems), (path, problems)


@SLOW
@given(data=st.data())
def test_settings_unknown_live_chat_is_named(data: st.DataObject) -> None:
    config = data.draw(valid_configs())
    assume(config["messengers"])
    m_id = data.draw(st.sampled_from(sorted(config["messengers"])))
    gone = config["messengers"][m_id]["livechat"]
    del config["livechats"][gone]
    for sub in config.get("subscriptions", []):
        if sub.get("livechat") == gone:
            del sub["livechat"]
    problems = problems_of(config)
    check_problems(problems, config)
    assert any(p.startswith(f"messengers.{m_id}.livechat: unknown live chat ") for p in problems)


toml_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.datetimes()
    | st.dates()
    | st.times()
)
toml_values = st.recursive(
    toml_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=15,
)
config_keys = st.text(max_size=12).filter(lambda k: k not in SETTINGS_OPTIONS) | st.sampled_from(
    [
        "server",
        "storage",
        "admin",
        "delivery",
        "logging",
        "livechats",
        "messengers",
        "subscriptions",
    ]
)


def settings_outcome(config: dict[str, Any]) -> None:
    try:
        result = settings_from_dict(config)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and ": " in p for p in exc.problems)
        return
    assert isinstance(result, Settings)


@SLOW
@given(config=st.dictionaries(config_keys, toml_values, max_size=6))
def test_settings_any_dict_gives_settings_or_config_error(config: dict[str, Any]) -> None:
    settings_outcome(config)


@SLOW
@given(data=st.data())
def test_settings_mutated_configs_give_settings_or_config_error(data: st.DataObject) -> None:
    config = data.draw(mutated(data.draw(valid_configs()), toml_values))
    assume(isinstance(config, dict) and not SETTINGS_OPTIONS & set(config))
    settings_outcome(config)


# ==============================================================================================
# 5. Standard Webhooks signatures: sign, checked against the reference verifier
# ==============================================================================================

msg_ids = st.text(min_size=1, max_size=40)
payloads = st.text(max_size=200).map(str.encode) | json_values.map(
    lambda v: json.dumps(v, ensure_ascii=False).encode()
)


@FAST
@given(
    secret=whsec,
    msg_id=msg_ids,
    payload=payloads,
    skew=st.integers(-240, 240),
)
def test_webhooks_signature_verifies_with_the_reference(
    secret: str, msg_id: str, payload: bytes, skew: int
) -> None:
    timestamp = int(time.time()) + skew
    signature = webhooks.sign(secret, msg_id, timestamp, payload)
    assert re.fullmatch(r"v1,[A-Za-z0-9+/]{43}=", signature)
    assert webhooks.sign(secret, msg_id, timestamp, payload) == signature  # deterministic
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
    Webhook(secret).verify(payload, headers, json_parse=False)  # raises if it does not verify
    # ...and the raw key (without `whsec_`) is the same key.
    Webhook(secret.removeprefix("whsec_")).verify(payload, headers, json_parse=False)


@FAST
@given(
    secret=whsec,
    other=whsec,
    msg_id=msg_ids,
    payload=payloads,
    change=st.sampled_from(["payload", "id", "timestamp", "secret"]),
)
def test_webhooks_signature_fails_for_anything_changed(
    secret: str, other: str, msg_id: str, payload: bytes, change: str
) -> None:
    timestamp = int(time.time())
    signature = webhooks.sign(secret, msg_id, timestamp, payload)
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }
    if change == "payload":
        payload += b" "
    elif change == "id":
        headers["webhook-id"] = msg_id + "x"
    elif change == "timestamp":
        headers["webhook-timestamp"] = str(timestamp - 1)
    else:
        assume(base64.b64decode(other[6:]) != base64.b64decode(secret[6:]))
        secret = other
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(payload, headers, json_parse=False)


@FAST
@given(
    secret=whsec,
    uid=msg_ids,
    name=nonempty_text,
    payload=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    session_id=st.none() | st.integers(1, 10**9),
    chat_id=st.none() | short_text,
)
def test_webhooks_event_body_verifies_and_carries_the_payload(
    secret: str,
    uid: str,
    name: str,
    payload: dict[str, Any],
    session_id: int | None,
    chat_id: str | None,
) -> None:
    notice = webhooks.EventNotice(
        uid=uid,
        name=name,
        livechat_id="sales",
        livechat_kind="jivochat",
        received_at=time.time(),
        payload=payload,
        session_id=session_id,
        channel_id="acme",
        external_chat_id=chat_id,
    )
    body = webhooks.body(notice)
    timestamp = int(time.time())
    headers = {
        "webhook-id": uid,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhooks.sign(secret, uid, timestamp, body),
    }
    doc = Webhook(secret).verify(body, headers)
    assert doc["type"] == name
    assert doc["data"]["event_id"] == uid and doc["data"]["payload"] == payload
    assert (doc["data"]["session_id"], doc["data"]["chat_id"]) == (session_id, chat_id)


# ==============================================================================================
# Defects found by these properties, fixed since; each test keeps its case.
# ==============================================================================================

DEEP = 100_000  # well under the default 1 MiB body limit


@pytest.mark.parametrize(
    "parse",
    [messenger.parse_envelope, chatvisor.parse_hook, jivochat.parse_hook],
    ids=["messenger", "chatvisor", "jivochat"],
)
@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["array", "object"])
def test_deeply_nested_json_is_bad_request(parse: Callable[[bytes], Any], opener: bytes) -> None:
    exc = refusal(parse, opener * DEEP)
    assert exc.errcode == "invalid_json"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("_env_file", 5),
        ("_env_prefix", 5),
        ("_env_prefix", "OTHER_"),
        ("_secrets_dir", "/nonexistent"),
        ("_cli_parse_args", True),
        ("__pydantic_self__", 1),
    ],
)
def test_settings_underscore_options_are_unknown_keys(
    key: str, value: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["messenger-bridge", "serve"])
    config = {"admin": {"token": "admin-token"}, key: value}
    try:
        problems = problems_of(config)
    except BaseException as exc:  # SystemExit included: it must not escape a config check
        raise AssertionError(f"{type(exc).__name__}: {exc}") from None
    assert problems == [f"{key}: unknown key"]


@pytest.mark.parametrize("events", [5, [], {"a": 1}, "chat_finished", [""]])
def test_settings_events_problem_names_the_key_only(events: Any) -> None:
    config = {
        "admin": {"token": "admin-token"},
        "subscriptions": [
            {"url": "http://127.0.0.1:8093/events", "secret": "whsec_" + "A" * 24, "events": events}
        ],
    }
    problems = problems_of(config)
    check_problems(problems, config)
    assert [p.split(": ")[0] for p in problems] == ["subscriptions.0.events"]


@pytest.mark.parametrize("section", ["livechats", "messengers"])
def test_settings_channel_id_with_trailing_newline_is_refused(section: str) -> None:
    lc_id, m_id = ("support\n", "acme") if section == "livechats" else ("support", "acme\n")
    config = {
        "admin": {"token": "admin-token"},
        "livechats": {
            lc_id: {
                "kind": "chatvisor",
                "api_url": "http://127.0.0.1:8090",
                "api_token": "a",
                "hook_token": "h",
            }
        },
        "messengers": {
            m_id: {
                "name": "S",
                "livechat": lc_id,
                "webhook": "http://127.0.0.1:8091",
                "confirmation_code": "c",
            }
        },
    }
    assert any(p.startswith(f"{section}.") and "id must be" in p for p in problems_of(config))


@pytest.mark.parametrize("url", ["http://exa mple.com/hook", "http://a\nb/hook", "http://a\tb/"])
def test_settings_url_with_whitespace_in_host_is_refused(url: str) -> None:
    config = {
        "admin": {"token": "admin-token"},
        "livechats": {
            "support": {"kind": "chatvisor", "api_url": url, "api_token": "a", "hook_token": "h"}
        },
    }
    assert any(p.startswith("livechats.support.api_url: ") for p in problems_of(config))


@pytest.mark.parametrize(
    "doc",
    [
        {"event_name": "chat_finished", "chat_id": 1, "agents": None},
        {"event_name": "chat_finished", "chat_id": 1, "chat": {"messages": None}},
        {"recipient": {"id": "acme:1"}, "message": {"type": None, "text": "hello"}},
    ],
    ids=["agents", "chat.messages", "message.type"],
)
def test_jivochat_null_optional_fields_are_tolerated(doc: dict[str, Any]) -> None:
    assert run_jivochat(json.dumps(doc).encode()) is not None


@pytest.mark.parametrize(
    ("doc", "path"),
    [
        ({"event_name": "chat_accepted", "analytics": 5}, "analytics"),
        ({"event_name": "chat_accepted", "visitor": {"chats_count": [1]}}, "visitor.chats_count"),
    ],
)
def test_jivochat_union_field_errors_name_the_field_only(doc: dict[str, Any], path: str) -> None:
    exc = refusal(jivochat.parse_hook, json.dumps(doc).encode())
    assert exc.message.split(": ")[0] == path
