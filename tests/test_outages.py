"""Outages on either side and restarts of the bridge: nothing lost, nothing doubled, order kept."""

from __future__ import annotations

import asyncio

import pytest

from bridge.delivery import calls
from tests import stored
from tests.conftest import World, database_locked, eventually


async def test_livechat_down_then_up(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await running.chatvisor_server.stop()
    chats = ["o1", "o2", "o3"]
    for i in range(10):
        for chat in chats:
            status, _ = await m.send_message(http, chat, f"{chat}-{i}")
            assert status == 200
    await asyncio.sleep(0.3)  # several failed attempts go by
    assert not cv.all_texts()
    await running.chatvisor_server.start()
    for chat in chats:
        customer = await running.customer_id(chat)
        expected = [f"{chat}-{i}" for i in range(10)]
        await eventually(lambda c=customer, e=expected: cv.texts(c) == e, what=f"{chat} in order")
    assert cv.duplicates == 0
    await eventually(lambda: len(m.outcomes) == 30 and all(m.outcomes.values()), what="outcomes")


async def test_livechat_errors_are_retried_honouring_retry_after(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    cv.fail_with, cv.fail_times, cv.retry_after = 429, 2, "0"
    await m.send_message(http, "r1", "after 429s", message_id="r1-1")
    await eventually(lambda: cv.all_texts() == ["after 429s"], what="delivered after 429")
    cv.fail_with, cv.fail_times = 503, 3
    await m.send_message(http, "r1", "after 503s", message_id="r1-2")
    await eventually(lambda: cv.all_texts() == ["after 429s", "after 503s"], what="after 503")
    await eventually(lambda: m.outcomes == {"r1-1": True, "r1-2": True}, what="outcomes")


async def test_permanent_rejection_reports_failure(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    cv.fail_with = 422
    await m.send_message(http, "p1", "refused", message_id="p1-1")
    await eventually(lambda: m.outcomes.get("p1-1") is False, what="failure outcome")
    cv.fail_with = None
    await m.send_message(http, "p1", "next one passes", message_id="p1-2")
    await eventually(lambda: m.outcomes.get("p1-2") is True, what="the lane moves on")
    async with http.get(
        f"{running.bridge.url}/admin/outbox?status=dead", headers=running.bridge.admin_headers()
    ) as r:
        body = await r.json()
    assert [i["kind"] for i in body["items"]] == ["livechat.message"]
    assert body["items"][0]["last_error"].startswith("HTTP 422")
    assert await stored.message_statuses(running.bridge.store) == ["failed", "delivered"]


async def test_give_up_horizon_marks_dead(world: World) -> None:
    await world.start_bridge(
        delivery={**world.config()["delivery"], "give_up_after": 0.2, "min_attempts": 3}
    )
    m, cv, http = world.messenger, world.chatvisor, world.http
    cv.fail_with = 500
    await m.send_message(http, "h1", "never", message_id="h1-1")
    await eventually(lambda: m.outcomes.get("h1-1") is False, what="given up")
    rows = await stored.outbox_items(world.bridge.store)
    assert rows[0]["status"] == "dead" and rows[0]["attempts"] >= 3


async def test_messenger_down_interrupts_then_flushes_in_order(running: World) -> None:
    m, cv, http, bridge = running.messenger, running.chatvisor, running.http, running.bridge
    await m.send_message(http, "d1", "hello")
    customer = await running.customer_id("d1")
    await eventually(lambda: m.outcomes, what="outcome before outage")

    await running.messenger_server.stop()
    for i in range(5):
        assert (await cv.agent_reply(http, customer, f"reply-{i}"))[0] == 200
    await eventually(lambda: bridge.state() == "interrupted", what="interrupted")
    for i in range(5, 10):
        await cv.agent_reply(http, customer, f"reply-{i}")
    async with http.get(f"{bridge.url}/admin/channels", headers=bridge.admin_headers()) as r:
        (channel,) = (await r.json())["channels"]
    assert channel["state"] == "interrupted" and channel["held_messages"] == 10
    assert channel["last_error"]

    await running.messenger_server.start()
    await eventually(lambda: bridge.state() == "active", what="reconnected")
    await eventually(
        lambda: m.chat_log["d1"] == [f"reply-{i}" for i in range(10)], what="flushed in order"
    )
    assert m.duplicates == 0


async def test_one_slow_chat_does_not_hold_up_others(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "slow", "a")
    await m.send_message(http, "fast", "b")
    slow, fast = await running.customer_id("slow"), await running.customer_id("fast")
    m.delay = 0.5
    await cv.agent_reply(http, slow, "slow-1")
    await asyncio.sleep(0.05)
    m.delay = 0.0
    await cv.agent_reply(http, fast, "fast-1")
    await eventually(lambda: m.chat_log["fast"] == ["fast-1"], timeout=0.4, what="fast chat first")
    assert m.chat_log["slow"] == []
    await eventually(lambda: m.chat_log["slow"] == ["slow-1"], what="slow chat later")


async def test_a_messenger_slow_to_take_outcomes_holds_a_chat_only_briefly(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome sent with a delivery is bounded: a messenger that answers it late holds the
    chat's next message for that bound, not for the messenger's whole delay."""
    monkeypatch.setattr(calls, "INLINE_OUTCOME_SECONDS", 0.2)
    # Inline, so that the bound patched here is the one deliveries use.
    await world.start_bridge(
        delivery={"worker": "inline", "request_timeout": 10, "retry_base": 0.1, "retry_cap": 0.5}
    )
    m, cv, http = world.messenger, world.chatvisor, world.http
    m.delay_types["messageOutcome"] = 5.0
    for i in range(3):
        status, _ = await m.send_message(http, "late", f"late-{i}", message_id=f"late-{i}")
        assert status == 200
    customer = await world.customer_id("late")
    expected = [f"late-{i}" for i in range(3)]
    await eventually(lambda: cv.texts(customer) == expected, timeout=4, what="not held 5 s")
    m.delay_types.clear()
    await eventually(
        lambda: m.outcomes == {f"late-{i}": True for i in range(3)}, timeout=30, what="outcomes"
    )


async def test_restart_with_work_pending(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "rs", "before")
    customer = await running.customer_id("rs")
    await eventually(lambda: m.outcomes, what="first delivered")
    await running.chatvisor_server.stop()
    for i in range(20):
        await m.send_message(http, "rs", f"pending-{i}")
    await running.messenger_server.stop()
    for i in range(5):  # operator replies the bridge cannot deliver yet
        assert (await cv.agent_reply(http, customer, f"held-{i}"))[0] == 200
    assert running.bridge is not None
    await running.bridge.stop()

    await running.chatvisor_server.start()
    await running.messenger_server.start()
    bridge = await running.start_bridge()
    await eventually(
        lambda: cv.texts(customer) == ["before", *(f"pending-{i}" for i in range(20))],
        what="pending messages after restart",
    )
    assert cv.duplicates == 0
    await eventually(lambda: len(m.outcomes) == 21, what="all outcomes")
    await cv.agent_reply(http, customer, "after restart")
    expected = [*(f"held-{i}" for i in range(5)), "after restart"]
    await eventually(lambda: m.chat_log["rs"] == expected, what="replies after restart, in order")
    assert m.duplicates == 0
    assert len(await stored.sessions(bridge.store)) == 1


async def test_storage_locked_answers_503_then_recovers(world: World) -> None:
    bridge = await world.start_bridge(storage={"busy_timeout": 0.1})
    m, http = world.messenger, world.http
    async with database_locked(world.storage):  # another process holds the database
        status, body = await m.send_message(http, "db", "not stored", message_id="db-1")
        assert status == 503 and body["errcode"] == "storage_unavailable"
    assert await stored.count_messages(bridge.store) == 0
    assert (await m.send_message(http, "db", "stored", message_id="db-1"))[0] == 200
    await eventually(
        lambda: world.chatvisor.all_texts() == ["stored"], what="delivered once cleared"
    )


async def test_channel_removed_from_config_is_disconnected_and_a_reply_kept_dead(
    running: World,
) -> None:
    # A reply that comes after the removal is a dead letter with its text (tests/test_replies.py).
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "gone", "x")
    customer = await running.customer_id("gone")
    await eventually(lambda: m.outcomes, what="outcome")
    await running.bridge.stop()
    config = running.config()
    config["messengers"] = {
        "other": {**config["messengers"]["acme"], "webhook": "http://127.0.0.1:9/x"}
    }
    bridge = await running.start_bridge(wait_active=False, config=config)
    assert (await cv.agent_reply(http, customer, "for a removed channel"))[0] == 200
    await asyncio.sleep(0.2)
    acme = await stored.channel_row(bridge.store)
    assert (acme.state, acme.last_error) == ("disconnected", "no longer in the configuration")
    items = await stored.outbox_items(bridge.store)
    assert [(i["kind"], i["status"]) for i in items] == [("operator.reply", "dead")]
