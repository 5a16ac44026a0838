"""The component schemas of `/openapi.json` say what the models read and write, no more, no
less: every body the schema allows is one the parsers take (or refuse only for a rule the
document names), every tolerant body the parsers take is one the schema allows, and each
admin answer model's dump fits its schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from jsonschema import Draft202012Validator
from pydantic import BaseModel, field_validator

from bridge.core.errors import InvalidInput
from bridge.web import schemas
from bridge.web.openapi import SPEC, model_schemas
from connectors import chatvisor, jivochat, messenger

FIXTURES = Path(__file__).parent / "fixtures" / "jivochat"
MESSENGER_HOOK = ("POST", "/messengers/{channel_id}/webhook")
LIVECHAT_HOOK = ("POST", "/livechats/{livechat_id}/webhook/{hook_token}")


def _validator(component: str) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator of one component, its $refs resolved in the document."""
    components = json.loads(json.dumps(SPEC["components"]))
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{component}", "components": components}
    )


def _parse_hook(body: dict[str, Any]) -> None:
    """Which live chat a hook comes from is in its URL: a body is taken if one of the two
    kinds takes it; else the refusal that names a rule the document leaves to a 400 wins."""
    raw = json.dumps(body).encode()
    refusals = []
    for parse in (chatvisor.parse_hook, jivochat.parse_hook):
        try:
            parse(raw)
            return
        except InvalidInput as exc:
            refusals.append(exc)
    raise min(refusals, key=lambda exc: exc.errcode != "empty_message")


def _parse_messenger(body: dict[str, Any]) -> None:
    messenger.parse_request(messenger.parse_envelope(json.dumps(body).encode()))


# --- not stricter than the code: tolerant bodies the parsers take, the schema allows ----------

MESSENGER_BODIES = [
    {  # ids as numbers, no chat name, null text beside a file spelt `url`
        "type": "message",
        "token": "x",
        "data": {
            "externalMessageId": 17,
            "externalChatId": 4,
            "externalUserId": 9,
            "text": None,
            "files": [{"url": "https://files.example/a.png", "size": None}],
        },
    },
    {"type": "message", "data": {"externalMessageId": "m", "externalChatId": "c",
                                 "externalUserId": "u", "text": "hi", "files": None}},
    {"type": "userInfo", "data": {"userId": 12}},
    {"type": "markAsRead", "data": {"messageId": 3}},
    {"type": "disconnect", "data": None},
]  # fmt: skip

LIVECHAT_BODIES = [
    # Chatvisor's own WebHooks: a bare Conversation, lastMessage spelt as its docs do, or text
    {"customerId": 42, "status": None, "lastMessage": {"test": "hello"}, "url": None},
    {"customerId": "c-1", "status": "DONE", "lastMessage": "bye"},
    {"event": "message.new", "customerId": 5, "message": {
        "id": 7, "text": None, "files": [{"url": "https://f.example/x.pdf", "size": 3}],
        "sender": {"type": "agent", "id": 2, "name": None}}},
    {"event": "conversation.status", "conversation": {"customerId": 5, "status": "UNRESOLVED"}},
    {"event": "message.read", "customerId": 5, "messageId": 8},
    {"event": "something.else", "anything": [1, 2]},
    # JivoChat: PHP-style [] for empty objects, numeric ids, null lists, an alias, unknown events
    {"event_name": "chat_finished", "chat_id": 123, "visitor": [], "page": [], "agents": None,
     "chat": {"messages": None, "rate": None}},
    {"event_name": "offline_messages", "offline_message_id": 9, "message": "hi",
     "visitor": {"phone": 79991234567, "number": 5, "chats_count": "3", "social": []}},
    {"event_name": "chat_accepted", "user_token": 77, "agent": {"id": 1, "phone": 5}},
    {"event_name": "agent_status_changed", "whatever": {}},
    {"sender": None, "recipient": {"id": 55}, "message": {"type": None, "id": 1, "text": "ok"}},
]  # fmt: skip


@pytest.mark.parametrize("body", MESSENGER_BODIES)
def test_the_schema_allows_tolerant_messenger_bodies(body: dict[str, Any]) -> None:
    _parse_messenger(body)  # the code takes it...
    errors = [e.message for e in _validator("MessengerRequest").iter_errors(body)]
    assert not errors  # ...and so must the document


@pytest.mark.parametrize(
    "body",
    LIVECHAT_BODIES + [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.request.json"))],
)
def test_the_schema_allows_tolerant_livechat_bodies(body: dict[str, Any]) -> None:
    _parse_hook(body)
    errors = [e.message for e in _validator("LivechatHook").iter_errors(body)]
    assert not errors


# --- not looser than the code: bodies the schema allows, the parsers take ----------------------


def _operations() -> dict[tuple[str, str], Any]:
    schema = schemathesis.openapi.from_dict(json.loads(json.dumps(SPEC)))
    return {
        (op.method.upper(), op.path): op
        for op in (result.ok() for result in schema.get_all_operations())
    }


# A JivoChat Chat-API message needs text or a file by its type: a rule the document leaves to
# the 400 `empty_message` it lists.
@pytest.mark.parametrize(
    ("key", "parse", "allowed"),
    [(MESSENGER_HOOK, _parse_messenger, set()), (LIVECHAT_HOOK, _parse_hook, {"empty_message"})],
)
def test_every_body_the_schema_allows_is_parsed(
    key: tuple[str, str], parse: Any, allowed: set[str]
) -> None:
    refused: list[str] = []

    @settings(
        max_examples=150,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(_operations()[key].as_strategy(schemathesis.GenerationMode.POSITIVE))
    def one(case: Any) -> None:
        try:
            parse(case.body)
        except InvalidInput as exc:
            if exc.errcode not in allowed:
                refused.append(f"{exc.errcode} {exc.message}: {json.dumps(case.body)[:300]}")

    one()
    assert not refused, "\n".join(refused[:5])


# --- the admin answers: what a model dumps fits the schema generated from it -------------------

ANSWERS: list[schemas.Answer] = [
    schemas.SessionDetail.model_validate(
        {
            "id": 1, "chat_id": 2, "livechat_id": "support", "status": "closed",
            "opened_by": "user", "opened_at": 1.7e9, "closed_at": 1.7e9 + 60,
            "conversation_url": None, "agent_id": "7", "agent_name": "Ann",
            "remote_chat_id": "99", "crm_link": None, "channel_id": "acme",
            "external_chat_id": "c", "chat_name": None, "user_id": "u", "client_key": "acme:c",
            "customer_id": None, "contact": {"name": "Bo", "email": None, "phone": None,
                                             "description": None},
            "transcript": [{"sender": "visitor", "text": "hi", "timestamp": 1e300,
                            "agent_id": None}],
            "messages": [{"uid": "x", "direction": "in", "external_id": "m", "remote_id": None,
                          "user_id": "u", "operator_id": None, "operator_name": None,
                          "text": "hi", "files": [{"name": "a", "url": "u", "size": None}],
                          "status": "delivered", "created_at": 1.7e9}],
            "a_column_added_later": "left out",
        }
    ),
    schemas.OutboxPage.model_validate(
        {"depth": {"pending": 0, "dead": 1, "oldest_created_at": None},
         "items": [{"id": 1, "kind": "livechat.message", "lane": "l", "channel_id": None,
                    "ref_id": 3, "status": "dead", "attempts": 5, "next_attempt_at": 1.0,
                    "created_at": 1.0, "updated_at": 2.0, "last_error": "HTTP 500",
                    "payload": {}, "channel": "acme", "livechat": "support"}]}
    ),
    schemas.DeadLetterReport.model_validate(
        {"action": "retry", "at": 1.7e9, "matched": 1, "retried": 1, "adopted": 0, "dead": 0,
         "purged": 0, "skipped": 0,
         "items": [{"id": 1, "kind": "k", "result": "retried", "new_id": 2, "error": None}]}
    ),
    schemas.EventLinked(session_id=1, events=[3, 4], remote_chat_id=None),
    schemas.Error(error="no such session", errcode="unknown_session"),
]  # fmt: skip


@pytest.mark.parametrize("model", ANSWERS, ids=lambda m: type(m).__name__)
def test_each_admin_answer_fits_its_schema(model: schemas.Answer) -> None:
    body = model.model_dump(mode="json")
    assert "a_column_added_later" not in body
    errors = [e.message for e in _validator(type(model).__name__).iter_errors(body)]
    assert not errors


def test_times_are_written_as_iso_8601_utc_milliseconds() -> None:
    body = ANSWERS[0].model_dump(mode="json")
    assert body["opened_at"] == "2023-11-14T22:13:20.000+00:00"
    assert body["transcript"][0]["timestamp"] is None  # no calendar holds it


def test_a_tolerant_reader_must_say_what_it_accepts() -> None:
    def upper(value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    class Loose(BaseModel):
        name: str

        _upper = field_validator("name", mode="before")(upper)

    with pytest.raises(TypeError, match="upper: add what it accepts"):
        model_schemas([Loose], "validation")
