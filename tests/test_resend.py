"""Repeats of a user's message (shared/protocols/messenger.md, `message`): a resend after a
failure for good is queued again, a true repeat changes nothing, a conflicting one is a 409."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import structlog

from bridge.logs import configure_logging
from bridge.settings import LoggingSettings
from tests import stored
from tests.conftest import ADMIN_TOKEN, API_TOKEN, CODE, HOOK_TOKEN, World, eventually
from tests.test_metrics import scrape, value


def outcomes(world: World, external_id: str) -> list[bool]:
    """Every `messageOutcome` the messenger took for this message, in order."""
    return [
        c["data"]["success"]
        for c in world.messenger.calls
        if c["type"] == "messageOutcome" and c["data"]["messageId"] == external_id
    ]


async def dead_items(world: World) -> list[dict[str, Any]]:
    assert world.bridge is not None
    async with world.http.get(
        f"{world.bridge.url}/admin/outbox?status=dead", headers=world.bridge.admin_headers()
    ) as r:
        items: list[dict[str, Any]] = (await r.json())["items"]
        return items


async def send(world: World, chat: str, text: str, mid: str, **kw: Any) -> int:
    status, _ = await world.messenger.send_message(world.http, chat, text, message_id=mid, **kw)
    return status


async def stored_uid(world: World, external_id: str) -> str:
    assert world.bridge is not None
    rows = [
        m for m in await stored.all_messages(world.bridge.store) if m["external_id"] == external_id
    ]
    assert len(rows) == 1, rows
    uid: str = rows[0]["uid"]
    return uid


async def test_resend_after_a_refusal_is_delivered_once_with_its_id(running: World) -> None:
    m, cv, bridge = running.messenger, running.chatvisor, running.bridge
    cv.refuse_messages = 1
    assert await send(running, "rs1", "first", "e1") == 200
    await eventually(lambda: outcomes(running, "e1") == [False], what="failure outcome")
    (dead,) = await dead_items(running)
    assert dead["kind"] == "livechat.message" and dead["last_error"].startswith("HTTP 422")
    uid = await stored_uid(running, "e1")
    assert cv.refused == [uid]

    # Another message of the chat goes first; the resend joins the lane's tail.
    assert await send(running, "rs1", "second", "e2") == 200
    customer = await running.customer_id("rs1")
    await eventually(lambda: cv.texts(customer) == ["second"], what="the lane moved on")

    cv.delay = 0.3  # the resend's attempt stays in flight while its item is looked at
    assert await send(running, "rs1", "first", "e1") == 200
    rows = [i for i in await stored.outbox_items(bridge.store) if i["kind"] == "livechat.message"]
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0)]
    assert rows[0]["id"] > dead["id"]
    assert await dead_items(running) == []  # superseded, not a second dead letter

    await eventually(lambda: cv.texts(customer) == ["second", "first"], what="resend delivered")
    assert cv.conversations[customer][1]["id"] == uid
    await eventually(lambda: outcomes(running, "e1") == [False, True], what="second outcome")
    assert await stored_uid(running, "e1") == uid

    async def settled() -> bool:  # the outcome goes with the delivery, a moment before its settle
        found = await stored.all_messages(bridge.store)
        return [m["status"] for m in found if m["uid"] == uid] == ["delivered"]

    await eventually(settled, what="the resend's settle")
    assert value(await scrape(running), "bridge_outbox_dead") == 0

    # Delivered now: a further repeat is a true repeat.
    cv.delay = 0
    assert await send(running, "rs1", "first", "e1") == 200
    await asyncio.sleep(0.2)
    assert cv.duplicates == 0 and cv.texts(customer) == ["second", "first"]
    assert outcomes(running, "e1") == [False, True]
    assert m.outcomes == {"e1": True, "e2": True}


async def test_resend_after_the_give_up_horizon_is_delivered(world: World) -> None:
    await world.start_bridge(
        delivery={**world.config()["delivery"], "give_up_after": 0.2, "min_attempts": 3}
    )
    cv = world.chatvisor
    await world.chatvisor_server.stop()
    assert await send(world, "rs2", "while down", "h1") == 200
    await eventually(lambda: outcomes(world, "h1") == [False], what="given up")
    (dead,) = await dead_items(world)
    assert dead["kind"] == "livechat.message" and dead["attempts"] >= 3
    uid = await stored_uid(world, "h1")

    await world.chatvisor_server.start()
    assert await send(world, "rs2", "while down", "h1") == 200
    customer = await world.customer_id("rs2")
    await eventually(lambda: cv.texts(customer) == ["while down"], what="delivered")
    assert cv.conversations[customer][0]["id"] == uid and cv.duplicates == 0
    await eventually(lambda: outcomes(world, "h1") == [False, True], what="second outcome")
    assert await dead_items(world) == []
    assert value(await scrape(world), "bridge_outbox_dead") == 0


async def test_resend_while_the_failure_outcome_is_still_queued(running: World) -> None:
    """The messenger resends before it got the failure (say its answer timed out): that
    failure is no longer true, so only the new attempt's outcome reaches it."""
    m, cv = running.messenger, running.chatvisor
    m.fail_types["messageOutcome"] = 503
    cv.refuse_messages = 1
    assert await send(running, "rs3", "hello", "q1") == 200

    async def failing() -> bool:
        items = await stored.outbox_items(running.bridge.store)
        return any(i["kind"] == "messenger.outcome" and i["attempts"] > 0 for i in items)

    await eventually(failing, what="the failure outcome queued and failing")
    assert await send(running, "rs3", "hello", "q1") == 200
    customer = await running.customer_id("rs3")
    await eventually(lambda: cv.texts(customer) == ["hello"], what="resend delivered")
    del m.fail_types["messageOutcome"]
    await eventually(lambda: outcomes(running, "q1") == [True], what="the one true outcome")
    await eventually(lambda: drained(running), what="outbox drained")
    assert outcomes(running, "q1") == [True] and cv.duplicates == 0


async def drained(world: World) -> bool:
    assert world.bridge is not None
    return await stored.outbox_items(world.bridge.store) == []


async def test_concurrent_resends_queue_once(running: World) -> None:
    cv = running.chatvisor
    cv.refuse_messages = 1
    assert await send(running, "rs4", "once", "c1") == 200
    await eventually(lambda: outcomes(running, "c1") == [False], what="failure outcome")
    statuses = await asyncio.gather(*(send(running, "rs4", "once", "c1") for _ in range(8)))
    assert statuses == [200] * 8
    customer = await running.customer_id("rs4")
    await eventually(lambda: cv.texts(customer) == ["once"], what="delivered")
    await eventually(lambda: outcomes(running, "c1") == [False, True], what="second outcome")
    await asyncio.sleep(0.3)
    assert cv.duplicates == 0 and outcomes(running, "c1") == [False, True]
    assert await stored.outbox_items(running.bridge.store) == []


async def test_true_repeats_in_flight_or_delivered_change_nothing(running: World) -> None:
    cv, bridge = running.chatvisor, running.bridge
    cv.fail_with, cv.fail_times = 503, 2  # retried: pending between attempts
    assert await send(running, "rs5", "hi", "t1") == 200
    assert await send(running, "rs5", "hi", "t1") == 200
    cv.delay = 0.3
    await eventually(lambda: cv.fail_with is None, what="retries used up")
    assert await send(running, "rs5", "hi", "t1") == 200  # in flight
    customer = await running.customer_id("rs5")
    await eventually(lambda: cv.texts(customer) == ["hi"], what="delivered")
    await eventually(lambda: outcomes(running, "t1") == [True], what="outcome")
    cv.delay = 0
    assert await send(running, "rs5", "hi", "t1") == 200  # delivered
    await asyncio.sleep(0.2)
    assert cv.duplicates == 0 and cv.texts(customer) == ["hi"]
    assert outcomes(running, "t1") == [True]
    assert await stored.count_messages(bridge.store) == 1
    assert await stored.outbox_items(bridge.store) == []


async def test_a_conflicting_repeat_is_409_warned_and_counted(world: World) -> None:
    buf = io.StringIO()
    configure_logging(
        LoggingSettings(level="info", format="json"),
        (ADMIN_TOKEN, API_TOKEN, HOOK_TOKEN, CODE),
        stream=buf,
    )
    try:
        await world.start_bridge()
        files = [{"name": "a.png", "size": 3, "URL": "https://files.example/a.png"}]
        assert await send(world, "rs6", "secret words", "x1", files=files) == 200
        # The same message again, with `url` for `URL`: what the connector parsed is equal.
        same = [{"name": "a.png", "size": 3, "url": "https://files.example/a.png"}]
        assert await send(world, "rs6", "secret words", "x1", files=same) == 200
        clashes = [
            ("other-chat", "secret words", files, "chat"),
            ("rs6", "other words", files, "text"),
            ("rs6", "secret words", [{**files[0], "size": 4}], "files"),
            ("rs6", "secret words", None, "files"),
        ]
        for chat, text, f, differs in clashes:
            status, body = await world.messenger.send_message(
                world.http, chat, text, message_id="x1", files=f
            )
            assert status == 409 and body["errcode"] == "conflicting_duplicate", body
            assert differs in body["error"] and "words" not in body["error"]
        customer = await world.customer_id("rs6")
        await eventually(lambda: world.chatvisor.texts(customer), what="the first delivered")
        await asyncio.sleep(0.2)
        assert world.chatvisor.all_texts() == ["secret words"]
        assert await stored.count_messages(world.bridge.store) == 1
        assert await stored.chat(world.bridge.store, "other-chat") is None
        metrics = await scrape(world)
        assert value(metrics, 'bridge_inbound_conflicts_total{channel="acme"}') == 4
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    warned = [line for line in lines if line["event"] == "messenger.conflicting_duplicate"]
    assert len(warned) == 4 and {line["level"] for line in warned} == {"warning"}
    assert warned[0]["stored_chat"] == "rs6" and warned[0]["chat"] == "other-chat"
    assert warned[0]["channel"] == "acme" and warned[0]["external_message"] == "x1"
    assert [line["differs"] for line in warned] == [["chat"], ["text"], ["files"], ["files"]]
    assert "secret words" not in buf.getvalue() and "other words" not in buf.getvalue()
