"""Sessions: one open per chat, closed by the live chat, reopened, started by an operator."""

from __future__ import annotations

from tests import stored
from tests.conftest import World, eventually


async def sessions(world: World, chat: str) -> list[tuple[int, str, str]]:
    """(id, status, opened by) of the chat's sessions, oldest first."""
    assert world.bridge is not None
    found = await stored.sessions(world.bridge.store, chat)
    return [(s["id"], s["status"], s["opened_by"]) for s in found]


async def test_done_closes_and_next_message_opens_a_new_session(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "s1", "first")
    customer = await running.customer_id("s1")
    assert [s[1] for s in await sessions(running, "s1")] == ["open"]

    assert (await cv.set_status(http, customer, "DONE"))[0] == 200
    assert [s[1] for s in await sessions(running, "s1")] == ["closed"]

    await m.send_message(http, "s1", "second")
    assert [s[1] for s in await sessions(running, "s1")] == ["closed", "open"]
    await eventually(lambda: cv.texts(customer) == ["first", "second"], what="same customer")


async def test_unresolved_reopens_the_last_session(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "s2", "x")
    customer = await running.customer_id("s2")
    await cv.set_status(http, customer, "DONE")
    await cv.set_status(http, customer, "UNRESOLVED")
    rows = await sessions(running, "s2")
    assert [s[1] for s in rows] == ["open"] and len(rows) == 1
    events = await stored.event_names(running.bridge.store)
    assert events == ["conversation.status", "conversation.status"]


async def test_operator_may_start_a_session_when_allowed(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "s3", "x")
    customer = await running.customer_id("s3")
    await cv.set_status(http, customer, "DONE")
    await cv.agent_reply(http, customer, "following up")
    await eventually(lambda: m.chat_log["s3"] == ["following up"], what="operator message")
    assert [(s[1], s[2]) for s in await sessions(running, "s3")] == [
        ("closed", "user"),
        ("open", "operator"),
    ]


async def test_operator_sessions_disabled_refuses_and_records(world: World) -> None:
    acme = {**world.config()["messengers"]["acme"], "operator_sessions": False}
    await world.start_bridge(messengers={"acme": acme})
    m, cv, http = world.messenger, world.chatvisor, world.http
    await m.send_message(http, "s4", "x")
    customer = await world.customer_id("s4")
    await cv.set_status(http, customer, "DONE")
    assert (await cv.agent_reply(http, customer, "unsolicited"))[0] == 200
    refused = await stored.event_list(world.bridge.store, "message.refused")
    assert [e["name"] for e in refused] == ["message.refused"]
    assert m.chat_log["s4"] == []


async def test_unknown_customer_and_unknown_event_are_recorded_not_errors(running: World) -> None:
    cv, http = running.chatvisor, running.http
    assert (await cv.agent_reply(http, "nobody", "hello?"))[0] == 200
    assert (await cv.hook(http, {"event": "agent.typing", "customerId": "x"}))[0] == 200
    names = await stored.event_names(running.bridge.store)
    assert names == ["unlinked", "agent.typing"]


async def test_duplicate_agent_message_is_relayed_once(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "s5", "x")
    customer = await running.customer_id("s5")
    for _ in range(3):
        await cv.agent_reply(http, customer, "once", message_id="agent-fixed")
    await eventually(lambda: m.chat_log["s5"] == ["once"], what="reply")
    assert await stored.count_messages(running.bridge.store, "out") == 1


async def test_livechat_hook_errors(running: World) -> None:
    http, bridge = running.http, running.bridge
    async with http.post(bridge.hook_url(token="wrong"), json={"event": "x"}) as r:
        assert r.status == 401 and (await r.json())["errcode"] == "bad_token"
    async with http.post(bridge.hook_url(livechat_id="other"), json={"event": "x"}) as r:
        assert r.status == 404 and (await r.json())["errcode"] == "unknown_livechat"
    async with http.post(bridge.hook_url(), data=b"nope") as r:
        assert r.status == 400 and (await r.json())["errcode"] == "invalid_json"
    async with http.post(bridge.hook_url(), json={"event": "message.new", "customerId": "c"}) as r:
        assert (r.status, await r.json()) == (
            400,
            {"error": "message: required", "errcode": "missing_field"},
        )
