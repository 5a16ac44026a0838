"""The layers and the connector registry (docs/decisions.md, "Layers").

- The relay acts on what a connector says an event means (`accepts`, `closes`,
  `name_if_unknown`), never on a live chat's event names: a kind whose events are named
  otherwise needs no change to the relay.
- Parse errors are the bridge's own `InvalidInput`, not HTTP errors; the web layer answers them.
- The `livechats` settings and the connectors come from one registry.

The import rules themselves are kept by `lint-imports` (pyproject.toml, run by `make lint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge.core.errors import InvalidInput
from bridge.core.model import (
    ChatRef,
    Contact,
    ConversationState,
    Lifecycle,
    Operator,
    UserMessage,
)
from bridge.relay import Relay
from bridge.settings import LIVECHAT_KINDS, Settings, settings_from_dict
from connectors import chatvisor, jivochat, messenger
from connectors import http as outside
from connectors.registry import KINDS, build_connectors
from storage import chats, events
from storage.open import build_store
from storage.port import Store
from tests.conftest import ADMIN_TOKEN, CODE, HOOK_TOKEN


def _settings(tmp_path: Path, storage: dict[str, Any] | None = None) -> Settings:
    return settings_from_dict(
        {
            "storage": storage or {"path": str(tmp_path / "bridge.sqlite3")},
            "admin": {"token": ADMIN_TOKEN},
            "livechats": {
                "support": {
                    "kind": "jivochat",
                    "chat_api_url": "http://127.0.0.1:9/api/secret-part",
                    "hook_token": HOOK_TOKEN,
                },
            },
            "messengers": {
                "acme": {
                    "name": "Support",
                    "livechat": "support",
                    "webhook": "http://127.0.0.1:9/hook",
                    "confirmation_code": CODE,
                },
            },
        }
    )


async def _relay_with_a_session(
    tmp_path: Path, storage: dict[str, Any]
) -> tuple[Store, Relay, str, int]:
    """A relay over a fresh database (of the test's backend), with one chat and its open
    session: (db, relay, the chat's client key, the session's id)."""
    settings = _settings(tmp_path, storage)
    db = build_store(settings.storage)
    await db.open()
    relay = Relay(db, settings, lambda: None)
    accepted = await relay.accept_user_message(
        "acme", UserMessage("m-1", "chat-1", "user-1", "hello")
    )
    assert accepted.session_id is not None
    return db, relay, chats.client_key("acme", "chat-1"), accepted.session_id


async def test_the_relay_acts_on_the_connectors_flags_whatever_the_event_is_named(
    tmp_path: Path, storage: dict[str, Any]
) -> None:
    db, relay, key, session_id = await _relay_with_a_session(tmp_path, storage)
    try:
        ref = ChatRef(client_key=key)
        took = Lifecycle(
            "agent_took_it", ref, {}, agent=Operator("a-7", "Ann"), accepts=True
        )  # not JivoChat's "chat_accepted"
        await relay.accept_livechat_events("support", [took])
        detail = await chats.session_detail(db, session_id)
        assert detail is not None
        assert (detail["agent_id"], detail["agent_name"]) == ("a-7", "Ann")

        # Not JivoChat's "chat_finished": the contact of a closing event is not taken.
        over = Lifecycle("it_is_over", ref, {}, contact=Contact(name="Someone"), closes=True)
        await relay.accept_livechat_events("support", [over])
        detail = await chats.session_detail(db, session_id)
        assert detail is not None
        assert detail["status"] == "closed" and detail["contact"] is None
    finally:
        await db.close()


async def test_an_unknown_customers_conversation_is_recorded_under_the_connectors_name(
    tmp_path: Path, storage: dict[str, Any]
) -> None:
    db, relay, _, _ = await _relay_with_a_session(tmp_path, storage)
    try:
        state = ConversationState(
            ChatRef(customer_id="nobody"), True, "thread.touched", name_if_unknown="thread.new"
        )
        await relay.accept_livechat_events("support", [state])
        (row,) = await events.list_events(db, "support", None, 10)
        assert row["name"] == "thread.new" and row["session_id"] is None
    finally:
        await db.close()


@pytest.mark.parametrize(
    "parse",
    [
        chatvisor.parse_hook,
        jivochat.parse_hook,
        lambda body: messenger.parse_request(messenger.parse_envelope(body)),
    ],
)
def test_parse_errors_are_the_bridges_own_not_http_errors(parse: Any) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(b"[]")
    assert type(info.value) is InvalidInput and info.value.errcode == "invalid_json"


async def test_livechat_settings_and_connectors_come_from_the_registry(tmp_path: Path) -> None:
    assert tuple(KINDS) == LIVECHAT_KINDS
    settings = _settings(tmp_path)
    (lc,) = settings.livechats.values()
    assert type(lc) is KINDS["jivochat"].settings
    async with outside.Client(5, 5, limit=4) as http:
        built = build_connectors(settings.livechats, settings.messengers, http)
    assert type(built.livechats["support"]) is KINDS["jivochat"].connector
    assert built.livechats["support"].kind == "jivochat"
    assert list(built.messengers) == ["acme"]
