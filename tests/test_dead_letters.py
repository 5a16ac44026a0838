"""Dead letters: an admin retries or purges them over the admin API, one or a scope at a time;
operator replies that no chat was ever linked to end as dead letters with their text."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bridge.keys import PRUNER
from tests import stored
from tests.conftest import API_TOKEN, CODE, SUBSCRIPTION_SECRETS, World, eventually
from tests.procs import BridgeProcess
from tests.sim.chatvisor import ChatvisorSim
from tests.sim.messenger import MessengerSim
from tests.sim.server import SimServer
from tests.sim.subscriber import SubscriberSim
from tests.test_process import cli


async def admin(world: World, method: str, path: str) -> tuple[int, Any]:
    assert world.bridge is not None
    async with world.http.request(
        method, world.bridge.url + path, headers=world.bridge.admin_headers()
    ) as resp:
        return resp.status, await resp.json()


async def dead(world: World, query: str = "") -> list[dict[str, Any]]:
    status, body = await admin(world, "GET", f"/admin/outbox?status=dead{query}")
    assert status == 200, body
    items: list[dict[str, Any]] = body["items"]
    return items


async def dead_gauge(world: World) -> float:
    assert world.bridge is not None
    async with world.http.get(world.bridge.url + "/metrics") as resp:
        text = await resp.text()
    line = next(ln for ln in text.splitlines() if ln.startswith("bridge_outbox_dead "))
    return float(line.split()[1])


async def refused(world: World, chat: str, message_id: str, text: str) -> None:
    """A user's message the live chat refuses for good (422): dead, the messenger told."""
    status, _ = await world.messenger.send_message(world.http, chat, text, message_id=message_id)
    assert status == 200
    await eventually(lambda: world.messenger.outcomes.get(message_id) is False, what="failure")


async def test_retry_delivers_a_dead_message_with_its_id_and_tells_the_messenger(
    running: World,
) -> None:
    cv, m = running.chatvisor, running.messenger
    cv.fail_with = 422
    await refused(running, "r1", "r1-1", "refused at first")
    (item,) = await dead(running)
    assert (item["kind"], item["channel"], item["livechat"]) == (
        "livechat.message",
        "acme",
        "support",
    )
    assert item["last_error"].startswith("HTTP 422")
    assert await dead_gauge(running) == 1

    cv.fail_with = None
    status, body = await admin(running, "POST", f"/admin/outbox/{item['id']}/retry")
    assert status == 200, body
    assert (body["action"], body["matched"], body["retried"]) == ("retry", 1, 1)
    assert body["items"][0]["id"] == item["id"] and body["items"][0]["new_id"] > item["id"]
    assert body["at"].endswith("+00:00")
    await eventually(lambda: cv.all_texts() == ["refused at first"], what="delivered")
    await eventually(lambda: m.outcomes.get("r1-1") is True, what="the messenger told")

    # The live chat got the message under the bridge's own id for it, the one it had before.
    _, sessions = await admin(running, "GET", "/admin/sessions")
    session_path = f"/admin/sessions/{sessions['sessions'][0]['id']}"

    async def settled() -> bool:  # the outcome goes with the delivery, a moment before its settle
        _, detail = await admin(running, "GET", session_path)
        return bool(detail["messages"][0]["status"] == "delivered")

    await eventually(settled, what="the retried message's settle")
    _, detail = await admin(running, "GET", session_path)
    ((_, conversation),) = cv.conversations.items()
    assert [msg["id"] for msg in conversation] == [detail["messages"][0]["uid"]]
    assert await dead(running) == []
    assert await dead_gauge(running) == 0

    # Again: nothing left to do; an id that names nothing is a 404.
    status, body = await admin(running, "POST", f"/admin/outbox/{item['id']}/retry")
    assert (status, body["errcode"]) == (404, "unknown_item")
    status, body = await admin(running, "POST", "/admin/outbox/retry?all=1")
    assert status == 200 and body["matched"] == 0
    assert cv.duplicates == 0 and len(cv.all_texts()) == 1


async def test_a_retried_reply_stays_held_while_its_channel_is_not_active(world: World) -> None:
    delivery = {**world.config()["delivery"], "give_up_after": 0.1, "min_attempts": 1}
    delivery["failures_before_interrupted"] = 1000
    bridge = await world.start_bridge(delivery=delivery)
    m, cv, http = world.messenger, world.chatvisor, world.http
    await m.send_message(http, "h1", "hello")
    customer = await world.customer_id("h1")
    m.fail_types = {"message": 500}
    await cv.agent_reply(http, customer, "the reply")
    await eventually(lambda: dead(world), what="the reply dead")
    (item,) = await dead(world)
    assert (item["kind"], item["channel"]) == ("messenger.message", "acme")

    status, _ = await admin(world, "POST", "/admin/messengers/acme/disconnect")
    assert status == 200 and bridge.state() == "disconnected"
    m.fail_types = {}
    status, body = await admin(world, "POST", "/admin/outbox/retry?channel=acme")
    assert (status, body["retried"]) == (200, 1)
    await asyncio.sleep(0.5)
    assert m.chat_log["h1"] == [], "delivered while the channel was disconnected"
    status, page = await admin(world, "GET", "/admin/outbox?status=pending")
    assert [i["kind"] for i in page["items"]] == ["messenger.message"]

    status, _ = await admin(world, "POST", "/admin/messengers/acme/connect")
    await eventually(lambda: m.chat_log["h1"] == ["the reply"], what="released on connect")
    assert m.duplicates == 0


async def test_retry_and_purge_by_channel_by_live_chat_and_all(world: World) -> None:
    # A second messenger on a second live chat.
    m2, cv2 = MessengerSim(CODE), ChatvisorSim(API_TOKEN)
    m2_server, cv2_server = SimServer(m2.app), SimServer(cv2.app)
    await m2_server.start()
    await cv2_server.start()
    try:
        base = world.config()
        livechats = {
            **base["livechats"],
            "other": {**base["livechats"]["support"], "api_url": f"{cv2_server.url}/rest/v1"},
        }
        messengers = {
            **base["messengers"],
            "beta": {
                **base["messengers"]["acme"],
                "livechat": "other",
                "webhook": m2_server.url + "/hook",
            },
        }
        bridge = await world.start_bridge(livechats=livechats, messengers=messengers)
        await eventually(lambda: bridge.state("beta") == "active", what="beta active")
        cv, m = world.chatvisor, world.messenger
        cv.fail_with = cv2.fail_with = 422
        await refused(world, "a1", "a1-1", "acme one")
        await refused(world, "a2", "a2-1", "acme two")
        await m2.send_message(world.http, "b1", "beta one", message_id="b1-1")
        await m2.send_message(world.http, "b2", "beta two", message_id="b2-1")
        await eventually(lambda: len(m2.outcomes) == 2, what="beta's failures")
        assert len(await dead(world)) == 4
        assert {i["channel"] for i in await dead(world, "&channel=beta")} == {"beta"}
        assert {i["livechat"] for i in await dead(world, "&livechat=support")} == {"support"}

        cv.fail_with = cv2.fail_with = None
        status, body = await admin(world, "POST", "/admin/outbox/retry?channel=beta")
        assert (status, body["matched"], body["retried"]) == (200, 2, 2)
        await eventually(lambda: sorted(cv2.all_texts()) == ["beta one", "beta two"], what="beta")
        await eventually(lambda: m2.outcomes == {"b1-1": True, "b2-1": True}, what="beta told")
        assert cv.all_texts() == []

        status, body = await admin(world, "POST", "/admin/outbox/retry?livechat=support")
        assert (status, body["retried"]) == (200, 2)
        await eventually(lambda: sorted(cv.all_texts()) == ["acme one", "acme two"], what="acme")
        await eventually(lambda: m.outcomes == {"a1-1": True, "a2-1": True}, what="acme told")
        assert await dead(world) == []

        # Purge: one, then a channel's; each action again does nothing more.
        cv.fail_with = cv2.fail_with = 422
        await refused(world, "a3", "a3-1", "acme three")
        await m2.send_message(world.http, "b3", "beta three", message_id="b3-1")
        await m2.send_message(world.http, "b4", "beta four", message_id="b4-1")
        await eventually(lambda: len(m2.outcomes) == 4, what="beta's failures")
        acme_item = (await dead(world, "&channel=acme"))[0]
        status, body = await admin(world, "POST", f"/admin/outbox/{acme_item['id']}/purge")
        assert (status, body["purged"]) == (200, 1)
        status, body = await admin(world, "POST", f"/admin/outbox/{acme_item['id']}/purge")
        assert (status, body["errcode"]) == (404, "unknown_item")
        status, body = await admin(world, "POST", "/admin/outbox/purge?livechat=other")
        assert (status, body["matched"], body["purged"]) == (200, 2, 2)
        status, body = await admin(world, "POST", "/admin/outbox/purge?livechat=other")
        assert (status, body["purged"]) == (200, 0)
        assert await dead(world) == [] and await dead_gauge(world) == 0

        # Bad scopes.
        for query, code, errcode in [
            ("", 400, "invalid_query"),
            ("?all=1&channel=acme", 400, "invalid_query"),
            ("?all=yes", 400, "invalid_query"),
            ("?channel=nope", 404, "unknown_channel"),
            ("?livechat=nope", 404, "unknown_livechat"),
        ]:
            status, body = await admin(world, "POST", f"/admin/outbox/retry{query}")
            assert (status, body["errcode"]) == (code, errcode), query
    finally:
        if world.bridge is not None:
            await world.bridge.stop()
            world.bridge = None
        await m2_server.stop()
        await cv2_server.stop()


async def test_an_orphan_reply_ends_as_a_dead_letter_with_its_text_then_is_retried(
    running: World,
) -> None:
    """Chatvisor answers before the bridge stored the customer id: the reply waits as an
    orphan; never adopted within `orphan_after`, it becomes a dead letter naming the customer;
    a retry once the chat is linked delivers it."""
    assert running.bridge is not None and running.bridge.app is not None
    cv, m, http = running.chatvisor, running.messenger, running.http
    cv.delay = 3.0  # over request_timeout: the customer exists there, the message never lands
    await m.send_message(http, "o1", "are you there?")
    customer = await eventually(lambda: cv.customer_by_key.get("acme:o1"), what="customer")
    status, _ = await cv.agent_reply(http, customer, "yes, here", message_id="op-1")
    assert status == 200
    await eventually(
        lambda: stored.orphans(running.bridge.store), what="the reply kept as an orphan"
    )
    # The event log keeps what the operator wrote, not only who for.
    _, body = await admin(running, "GET", "/admin/events?event=unlinked")
    (event,) = body["events"]
    assert (event["payload"]["text"], event["payload"]["message_id"]) == ("yes, here", "op-1")
    assert event["payload"]["customer_id"] == customer

    pruner = running.bridge.app[PRUNER]
    assert (await pruner.prune_once(now=time.time() + 3600))["orphans"] == 0  # not yet
    assert await dead(running, "&livechat=support") == []
    counts = await pruner.prune_once(now=time.time() + 25 * 3600)
    assert counts["orphans"] == 1
    (item,) = await dead(running)
    assert item["kind"] == "operator.reply" and item["livechat"] == "support"
    assert customer in item["last_error"] and "24 h" in item["last_error"]
    assert (item["payload"]["text"], item["payload"]["operator_name"]) == (
        "yes, here",
        "Olga Operator",
    )

    # Still no link: dead again, with the reason.
    status, body = await admin(running, "POST", f"/admin/outbox/{item['id']}/retry")
    assert (status, body["dead"], body["retried"]) == (200, 1, 0)
    (again,) = await dead(running)
    assert again["id"] == item["id"] and customer in again["last_error"]
    assert "(retried)" in again["last_error"]

    cv.delay = 0.0
    await running.customer_id("o1")  # the message lands; the bridge stores the link
    status, body = await admin(running, "POST", f"/admin/outbox/{item['id']}/retry")
    assert (status, body["adopted"]) == (200, 1), body
    await eventually(lambda: m.chat_log["o1"] == ["yes, here"], what="the reply delivered")
    assert await dead(running) == []
    # The live chat sends the same reply again: a repeat, not a second message.
    await cv.agent_reply(http, customer, "yes, here", message_id="op-1")
    await asyncio.sleep(0.2)
    assert m.chat_log["o1"] == ["yes, here"] and m.duplicates == 0


async def test_the_cli_lists_retries_and_purges_dead_letters_of_a_running_bridge(
    world: World, tmp_path: Path
) -> None:
    bridge = BridgeProcess(world.config(), tmp_path)
    config = bridge.config_path
    try:
        await bridge.start(world.http)
        await eventually(lambda: world.messenger.bridge_webhook, what="connect")
        world.chatvisor.hook_url = bridge.hook_url()
        cv, m = world.chatvisor, world.messenger
        cv.fail_with = 422
        for n in (1, 2, 3):
            await m.send_message(world.http, f"c{n}", f"refused {n}", message_id=f"c{n}-1")
        await eventually(lambda: len(m.outcomes) == 3, what="three failures")

        code, out, err = await cli(config, "dead-letters", "--channel", "acme")
        assert code == 0, err
        header, *rows, total = out.splitlines()
        assert header.split()[:4] == ["ID", "KIND", "CHANNEL", "LIVECHAT"]
        assert len(rows) == 3 and all("livechat.message" in r and "HTTP 422" in r for r in rows)
        assert total == "3 dead, 0 pending"
        first = int(rows[0].split()[0])

        cv.fail_with = None
        code, out, err = await cli(config, "retry", str(first))
        assert code == 0, err
        assert out.splitlines()[0].startswith("matched 1, retried 1, adopted 0, dead 0")
        await eventually(lambda: m.outcomes.get("c1-1") is True, what="retried and told")
        assert cv.all_texts() == ["refused 1"]
        code, _, err = await cli(config, "retry", str(first))  # gone: delivered
        assert code == 1 and "404" in err

        code, out, err = await cli(config, "purge", "--all")
        assert code == 0, err
        assert out.splitlines()[0].startswith("matched 2, retried 0, adopted 0, dead 0, purged 2")
        code, out, _ = await cli(config, "purge", "--livechat", "support")
        assert code == 0 and "purged 0" in out
        code, out, _ = await cli(config, "dead-letters")
        assert out.splitlines()[-1] == "0 dead, 0 pending"

        code, _, err = await cli(config, "retry")  # nothing named
        assert code == 2 and "give an item id" in err
        code, _, err = await cli(config, "retry", "--channel", "nope")
        assert code == 1 and "404" in err
        lines = bridge.log_lines()
        assert any(ln["event"] == "outbox.purge" and ln["purged"] == 2 for ln in lines)
        assert any(ln["event"] == "outbox.retry" and ln["retried"] == 1 for ln in lines)
    finally:
        await bridge.stop_quietly()
    bridge.assert_clean_logs()


async def test_a_retried_event_keeps_its_webhook_id(world: World) -> None:
    sub = SubscriberSim()
    sub_server = SimServer(sub.app)
    await sub_server.start()
    subscription = {"url": f"{sub_server.url}/events", "secret": SUBSCRIPTION_SECRETS[0]}
    try:
        await world.start_bridge(subscriptions=[{**subscription, "events": "*"}])
        m, cv, http = world.messenger, world.chatvisor, world.http
        await m.send_message(http, "e1", "hello")
        customer = await world.customer_id("e1")
        sub.fail_with = 410  # the subscriber says: stop
        await cv.set_status(http, customer, "DONE")
        await eventually(lambda: dead(world, "&livechat=support"), what="the event dead")
        (item,) = await dead(world)
        assert (item["kind"], item["channel"]) == ("subscriber.event", "acme")
        refused_id = sub.refused_ids[0]

        sub.fail_with = None
        status, body = await admin(world, "POST", "/admin/outbox/retry?livechat=support")
        assert (status, body["retried"]) == (200, 1)
        await eventually(lambda: sub.deliveries, what="delivered on retry")
        assert [h["webhook-id"] for h, _ in sub.deliveries] == [refused_id]
        assert sub.events[0]["type"] == "conversation.status"
    finally:
        if world.bridge is not None:
            await world.bridge.stop()
            world.bridge = None
        await sub_server.stop()


async def test_a_secret_a_live_chat_echoes_is_not_kept_in_last_error(world: World) -> None:
    """The live chat's refusal quotes the API token and the confirmation code: the error kept
    for the admin API, the CLI and the console has them redacted."""
    cv = world.chatvisor
    cv.fail_with = 400
    cv.failure_text = f"bad auth header Bearer {API_TOKEN.upper()} for {CODE}"
    await world.start_bridge()
    await refused(world, "s1", "s1-1", "echo")
    (item,) = await dead(world)
    assert item["last_error"].startswith("HTTP 400: ")
    assert "[redacted]" in item["last_error"]
    assert API_TOKEN.lower() not in item["last_error"].lower()
    assert CODE not in item["last_error"]
