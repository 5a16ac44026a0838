"""A user writes in the messenger, an operator answers in the live chat, and back."""

from __future__ import annotations

import pytest

from storage import chats
from tests import conftest
from tests.conftest import World, eventually


@pytest.fixture(autouse=True, params=["inline", "process"])
def _either_worker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole round trip once with deliveries in the serving process and once through the
    delivery process (the production default), whose socket hop the other files leave out."""
    monkeypatch.setattr(conftest, "IN_PROCESS_WORKER", request.param)


async def test_connect_announces_the_webhook(running: World) -> None:
    connect = [c for c in running.messenger.calls if c["type"] == "connect"]
    assert connect[0]["channelId"] == "acme"
    assert connect[0]["data"]["webhook"] == f"{running.bridge.url}/messengers/acme/webhook"


async def test_full_round_trip(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    m.profiles["u1"] = {"id": "u1", "username": "Alice", "phoneNumber": "+100", "avatar": None}

    status, body = await m.send_message(
        http, "chat-1", "Hello, I need help", user_id="u1", message_id="e1"
    )
    assert (status, body) == (200, {"result": "ok"})

    customer = await running.customer_id("chat-1")
    await eventually(
        lambda: cv.texts(customer) == ["Hello, I need help"], what="message at live chat"
    )
    assert cv.customers[customer]["firstname"] == "Alice"
    assert cv.customers[customer]["phone"] == "+100"
    assert cv.customers[customer]["labels"] == ["messenger:acme"]
    await eventually(lambda: m.outcomes.get("e1") is True, what="messageOutcome success")

    status, body = await cv.agent_reply(
        http, customer, "Sure, what is wrong?", agent=("a7", "Olga")
    )
    assert (status, body) == (200, {"result": "ok"})
    await eventually(
        lambda: m.chat_log["chat-1"] == ["Sure, what is wrong?"], what="reply at messenger"
    )
    (reply,) = m.messages.values()
    assert reply["operator"] == {"id": "a7", "name": "Olga"}
    assert reply["files"] == []
    assert reply["messageId"]

    lc_message_id = cv.conversations[customer][0]
    live_id = cv.message_ids[lc_message_id["id"]]
    await cv.mark_read(http, customer, live_id)
    await eventually(lambda: m.reads == ["e1"], what="markAsRead")


async def test_files_travel_both_ways(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    status, _ = await m.send_message(
        http, "c2", "", files=[{"name": "a.png", "size": 10, "URL": "https://files.example/a.png"}]
    )
    assert status == 200
    customer = await running.customer_id("c2")
    await eventually(lambda: cv.conversations[customer], what="file message")
    assert cv.conversations[customer][0]["files"] == [
        {"name": "a.png", "size": 10, "url": "https://files.example/a.png"}
    ]
    await cv.agent_reply(
        http, customer, "got it", files=[{"name": "b.pdf", "url": "https://x/b.pdf", "size": 3}]
    )
    await eventually(lambda: m.messages, what="reply")
    (reply,) = m.messages.values()
    assert reply["files"] == [{"name": "b.pdf", "URL": "https://x/b.pdf", "size": 3}]


async def test_customer_echoes_are_ignored(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "c3", "hi")
    customer = await running.customer_id("c3")
    status, _ = await cv.hook(
        http,
        {
            "event": "message.new",
            "customerId": customer,
            "message": {"id": "x", "text": "hi", "sender": {"type": "customer", "id": customer}},
        },
    )
    assert status == 200
    await cv.agent_reply(http, customer, "marker")
    await eventually(lambda: m.chat_log["c3"] == ["marker"], what="only the agent's message")


async def test_profile_failure_does_not_block(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    m.fail_types["userInfo"] = 500
    await m.send_message(http, "c4", "no profile", user_id="ghost")
    customer = await running.customer_id("c4")
    await eventually(lambda: cv.texts(customer) == ["no profile"], what="delivered without profile")
    assert cv.customers[customer]["firstname"] == "ghost"


async def test_profile_is_cached(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    m.profiles["u5"] = {"id": "u5", "username": "Bob", "phoneNumber": None, "avatar": None}
    for i in range(3):
        await m.send_message(http, "c5", f"n{i}", user_id="u5")
    customer = await running.customer_id("c5")
    await eventually(lambda: len(cv.texts(customer)) == 3, what="three messages")
    assert m.count("userInfo") == 1
    assert cv.customer_calls == 1  # the profile did not change: tagged once


async def test_messenger_can_ask_for_a_known_profile(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    m.profiles["u6"] = {"id": "u6", "username": "Cleo", "phoneNumber": "+2", "avatar": "data:x"}
    await m.send_message(http, "c6", "hi", user_id="u6")
    await eventually(lambda: m.count("userInfo") == 1 and cv.all_texts(), what="profile fetched")

    async def fetched() -> bool:
        cached = await chats.read_user(running.bridge.store, "acme", "u6")
        return cached is not None and cached[1] is not None

    await eventually(fetched, what="the profile cached")
    status, body = await m.send(http, "userInfo", {"userId": "u6"})
    assert status == 200
    assert body == {"id": "u6", "username": "Cleo", "phoneNumber": "+2", "avatar": "data:x"}
    status, body = await m.send(http, "userInfo", {"userId": "nobody"})
    assert status == 404 and body["errcode"] == "unknown_user"
