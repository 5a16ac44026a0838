"""The delivery process (`delivery.worker = "process"`): killed, it is started again, and what
it had in flight is delivered by the next one; nothing lost, nothing out of order. Falling
behind, it shares the calls with the serving process; gone, the serving process stands in."""

from __future__ import annotations

import asyncio
import os
import signal

from bridge.keys import DELIVERY_PROCESS
from tests.conftest import World, eventually
from tests.test_metrics import scrape, value


async def test_a_killed_delivery_process_is_replaced_and_nothing_is_lost(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    process = running.bridge.app[DELIVERY_PROCESS]
    assert process.starts == 1 and process.pid is not None
    chats = ["k1", "k2", "k3"]
    cv.delay = 0.5  # so that the kill finds calls in flight
    for i in range(5):
        for chat in chats:
            status, _ = await m.send_message(http, chat, f"{chat}-{i}")
            assert status == 200
    await asyncio.sleep(0.2)
    first = process.pid
    os.kill(first, signal.SIGKILL)
    cv.delay = 0.0
    await eventually(lambda: process.starts == 2 and process.pid != first, what="a new process")
    for chat in chats:
        customer = await running.customer_id(chat)
        expected = [f"{chat}-{i}" for i in range(5)]
        await eventually(lambda c=customer, e=expected: cv.texts(c) == e, what=f"{chat} in order")
    await eventually(lambda: len(m.outcomes) == 15 and all(m.outcomes.values()), what="outcomes")
    assert value(await scrape(running), "bridge_delivery_process_starts_total") == 2


async def test_inline_delivery_needs_no_process(world: World) -> None:
    await world.start_bridge(delivery={"worker": "inline"})
    assert DELIVERY_PROCESS not in world.bridge.app
    await world.messenger.send_message(world.http, "i1", "inline", message_id="i1-1")
    await eventually(lambda: world.chatvisor.all_texts() == ["inline"], what="delivered")
    await eventually(lambda: world.messenger.outcomes == {"i1-1": True}, what="outcome")


async def test_the_serving_process_shares_deliveries_once_the_process_falls_behind(
    world: World,
) -> None:
    await world.start_bridge(delivery={"share_after": 2})
    m, cv, http = world.messenger, world.chatvisor, world.http
    cv.delay = 0.3  # calls pile up in the delivery process: the serving process takes some
    chats = [f"s{n}" for n in range(8)]
    for i in range(3):
        for chat in chats:
            status, _ = await m.send_message(http, chat, f"{chat}-{i}")
            assert status == 200
    for chat in chats:
        customer = await world.customer_id(chat)
        expected = [f"{chat}-{i}" for i in range(3)]
        await eventually(lambda c=customer, e=expected: cv.texts(c) == e, what=f"{chat} in order")
    await eventually(lambda: len(m.outcomes) == 24 and all(m.outcomes.values()), what="outcomes")
    text = await scrape(world)
    by_process = value(text, 'bridge_delivery_performed_total{process="delivery"}')
    by_serving = value(text, 'bridge_delivery_performed_total{process="serving"}')
    assert by_process > 0 and by_serving > 0


async def test_share_after_zero_keeps_every_call_in_the_delivery_process(world: World) -> None:
    await world.start_bridge(delivery={"share_after": 0})
    m, cv, http = world.messenger, world.chatvisor, world.http
    cv.delay = 0.2
    for n in range(6):
        await m.send_message(http, f"z{n}", f"z{n}", message_id=f"z{n}-1")
    await eventually(lambda: len(m.outcomes) == 6, what="outcomes")
    text = await scrape(world)
    assert value(text, 'bridge_delivery_performed_total{process="serving"}') == 0


async def test_while_the_delivery_process_is_down_the_serving_process_delivers(
    running: World,
) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await running.bridge.app[DELIVERY_PROCESS].stop()  # gone, and not started again
    for i in range(3):
        await m.send_message(http, "d1", f"down-{i}", message_id=f"d1-{i}")
    customer = await running.customer_id("d1")
    expected = [f"down-{i}" for i in range(3)]
    await eventually(lambda: cv.texts(customer) == expected, what="delivered in order")
    await eventually(lambda: len(m.outcomes) == 3 and all(m.outcomes.values()), what="outcomes")
    text = await scrape(running)
    assert value(text, 'bridge_delivery_performed_total{process="serving"}') >= 3
