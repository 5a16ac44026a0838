"""Chatvisor as it really is: its own WebHooks' bare Conversation objects, and tagging bodies
without nulls (shared/protocols/chatvisor.md, "What Chatvisor itself sends")."""

from __future__ import annotations

import json

from bridge.core.model import ConversationState
from connectors.chatvisor import parse_hook
from tests import stored
from tests.conftest import World, eventually


async def sessions(world: World, chat: str) -> list[tuple[int, str]]:
    assert world.bridge is not None
    return [(s["id"], s["status"]) for s in await stored.sessions(world.bridge.store, chat)]


async def event_names(world: World) -> list[tuple[str, int | None]]:
    assert world.bridge is not None
    return [(e["name"], e["session_id"]) for e in await stored.event_list(world.bridge.store)]


def test_last_message_text_under_text_or_test() -> None:
    for key in ("text", "test"):
        body = {"customerId": 7, "status": "UNREAD", "lastMessage": {key: "hi"}, "url": "u"}
        (event,) = parse_hook(json.dumps(body).encode())
        assert isinstance(event, ConversationState)
        assert (event.name, event.open, event.inferred, event.last_text) == (
            "conversation.new",
            True,
            True,
            "hi",
        )
        assert event.chat.customer_id == "7" and event.raw == body


async def test_bare_conversation_objects_close_and_reopen(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "b1", "first")
    customer = await running.customer_id("b1")
    ((session_id, _),) = await sessions(running, "b1")

    assert await cv.conversation_webhook(http, customer, "DONE", "first") == (
        200,
        {"result": "ok"},
    )
    assert await sessions(running, "b1") == [(session_id, "closed")]
    # Back to UNREAD: Chatvisor's "new conversation" for a customer it had closed.
    assert (await cv.conversation_webhook(http, customer, "UNREAD", "again"))[0] == 200
    assert await sessions(running, "b1") == [(session_id, "open")]
    # Any other status is a status change; a session it finds open stays open.
    assert (await cv.conversation_webhook(http, customer, "UNRESOLVED", "x"))[0] == 200
    assert await sessions(running, "b1") == [(session_id, "open")]
    await cv.conversation_webhook(http, customer, "DONE")
    await cv.conversation_webhook(http, customer, "UNRESOLVED")
    assert await sessions(running, "b1") == [(session_id, "open")]
    assert await event_names(running) == [
        ("conversation.status", session_id),
        ("conversation.new", session_id),
        ("conversation.status", session_id),
        ("conversation.status", session_id),
        ("conversation.status", session_id),
    ]
    # A closed session stays the one the next message of the chat does not reuse.
    await cv.conversation_webhook(http, customer, "DONE")
    await m.send_message(http, "b1", "second")
    assert [s[1] for s in await sessions(running, "b1")] == ["closed", "open"]
    await eventually(lambda: cv.texts(customer) == ["first", "second"], what="same customer")


async def test_bare_object_for_an_unknown_customer_is_a_new_conversation(running: World) -> None:
    cv, http, bridge = running.chatvisor, running.http, running.bridge
    assert bridge is not None
    body = {
        "customerId": "cv-unknown-1",
        "status": "UNRESOLVED",
        "lastMessage": {"test": "hello from the website"},
        "url": "https://chat.example/c/cv-unknown-1",
    }
    assert await cv.hook(http, body) == (200, {"result": "ok"})
    async with http.get(
        f"{bridge.url}/admin/events?unlinked=1", headers=bridge.admin_headers()
    ) as r:
        (event,) = (await r.json())["events"]
    assert (event["name"], event["session_id"], event["payload"]) == (
        "conversation.new",
        None,
        body,
    )
    assert "cv-unknown-1" in event["unlinked_reason"]


async def test_bare_object_without_customer_is_refused(running: World) -> None:
    cv, http = running.chatvisor, running.http
    status, body = await cv.hook(http, {"status": "DONE", "lastMessage": {"test": "x"}})
    assert status == 400 and body["errcode"] == "missing_field"
    status, body = await cv.hook(http, {"customerId": "c", "status": 5})
    assert (status, body["errcode"]) == (400, "invalid_field")
    assert body["error"].startswith("status:")


async def test_tagging_body_has_no_nulls(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    # No profile at all (the messenger cannot answer userInfo for this user): no phone.
    await m.send_message(http, "t1", "no profile", user_id="ghost")
    m.profiles["u2"] = {"id": "u2", "username": "Bob", "phoneNumber": "+15550002", "avatar": None}
    await m.send_message(http, "t2", "with profile", user_id="u2")
    await eventually(lambda: len(cv.customer_by_key) == 2, what="two customers tagged")
    first, second = (
        next(b for b in cv.customer_bodies if b["id"] == key) for key in ("acme:t1", "acme:t2")
    )
    for body in (first, second):
        assert None not in body.values(), body
        assert isinstance(body["id"], str)
        assert "email" not in body and "lastname" not in body
    assert "phone" not in first and first["firstname"]
    assert second["phone"] == "+15550002" and second["firstname"] == "Bob"
    await eventually(
        lambda: cv.all_texts() in (["no profile", "with profile"], ["with profile", "no profile"]),
        what="both delivered",
    )
