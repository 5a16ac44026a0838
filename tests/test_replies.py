"""No operator reply dropped: each reply the bridge cannot deliver at once is delivered later,
kept as a dead letter with its text, or (a true repeat) dropped on purpose. Over HTTP, with the
bodies the live chats really send (jivochat.md, "Facts from public client code": an agent's
Chat-API message has a `sender` with a name and an email and no id)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import structlog

from bridge.keys import PRUNER
from bridge.relay import SESSION_REFUSED
from storage import messages
from tests import stored
from tests.conftest import CODE, HOOK, Jivo, World, eventually
from tests.sim.messenger import MessengerSim
from tests.sim.server import SimServer
from tests.test_dead_letters import admin, dead


def agent_body(client_key: str, text: str, message_id: str) -> dict[str, Any]:
    """A JivoChat agent's message as public client code receives it."""
    return {
        "recipient": {"id": client_key},
        "sender": {"name": "Thomas Anderson", "email": "thomas@example.com"},
        "message": {"type": "text", "id": message_id, "text": text},
    }


def lines_naming(logs: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    return [line for line in logs if text in json.dumps(line, default=str)]


async def events(world: World, name: str) -> list[dict[str, Any]]:
    status, body = await admin(world, "GET", f"/admin/events?event={name}")
    assert status == 200, body
    found: list[dict[str, Any]] = body["events"]
    return found


def fresh_database(storage: dict[str, Any]) -> None:
    """What a lost database restored from nothing looks like: no SQLite file at all; a
    PostgreSQL database without a table."""
    if storage.get("backend") == "postgres":
        import psycopg

        with psycopg.connect(storage["dsn"], autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        return
    path = Path(storage["path"])
    for found in path.parent.glob(f"{path.name}*"):
        found.unlink()


async def test_a_reply_to_a_chat_whose_row_was_lost_is_delivered(
    world: World, jivo: Jivo, tmp_path: Path
) -> None:
    m = world.messenger
    await jivo.start()
    await jivo.user_says("c1", "hello", user_id="u1", message_id="e1")
    await eventually(lambda: jivo.sim.texts("acme:c1") == ["hello"], what="at JivoChat")
    await eventually(lambda: m.outcomes.get("e1") is True, what="outcome")
    assert world.bridge is not None
    await world.bridge.stop()
    fresh_database(world.storage)

    with structlog.testing.capture_logs() as logs:
        await jivo.start()  # the same config, an empty database
        status, body = await jivo.sim.post(
            jivo.http, agent_body("acme:c1", "Welcome back, Alice", "jv-100")
        )
        assert (status, body) == (200, {"result": "ok"})
        await eventually(lambda: m.chat_log["c1"] == ["Welcome back, Alice"], what="delivered")
    (reply,) = m.messages.values()
    assert reply["operator"] == {"name": "Thomas Anderson"}  # an agent without an id: no null
    (line,) = [ln for ln in logs if ln["event"] == "relay.chat_recovered"]
    assert line["client_key"] == "acme:c1" and line["log_level"] == "warning"
    assert lines_naming(logs, "Welcome back") == []
    assert await dead(world) == []
    rows = await stored.sessions(world.bridge.store)
    keys = ("client_key", "livechat_id", "opened_by", "status")
    assert [tuple(s[k] for k in keys) for s in rows] == [("acme:c1", "sales", "operator", "open")]

    # The user answers: the same chat, the same JivoChat client, its user id stored now.
    await jivo.user_says("c1", "thanks", user_id="u1", message_id="e2")
    await eventually(lambda: jivo.sim.texts("acme:c1") == ["hello", "thanks"], what="answer")
    assert [s["user_id"] for s in await stored.sessions(world.bridge.store)] == ["u1"]
    # JivoChat sends the reply again: a repeat, delivered once.
    await jivo.sim.post(jivo.http, agent_body("acme:c1", "Welcome back, Alice", "jv-100"))
    await asyncio.sleep(0.2)
    assert m.chat_log["c1"] == ["Welcome back, Alice"] and m.duplicates == 0


async def test_a_recovered_chat_without_operator_sessions_keeps_the_reply_until_retried(
    world: World, jivo: Jivo
) -> None:
    config = jivo.config()
    config["messengers"]["acme"]["operator_sessions"] = False
    await world.start_bridge(config=config)
    assert world.bridge is not None
    jivo.sim.hook_url = world.bridge.hook_url("sales", HOOK)
    status, _ = await jivo.sim.post(jivo.http, agent_body("acme:c9", "Are you still there?", "j9"))
    assert status == 200
    (item,) = await dead(world)
    assert item["last_error"] == SESSION_REFUSED and item["channel"] == "acme"
    assert item["payload"]["text"] == "Are you still there?"
    assert item["payload"]["client_key"] == "acme:c9"
    # The chat itself was recovered; only the session is missing.
    recovered = await stored.chat(world.bridge.store, "c9")
    assert recovered is not None and recovered.client_key == "acme:c9"

    await jivo.user_says("c9", "yes, here")  # the user opens a session
    status, body = await admin(world, "POST", f"/admin/outbox/{item['id']}/retry")
    assert (status, body["adopted"]) == (200, 1), body
    await eventually(
        lambda: world.messenger.chat_log["c9"] == ["Are you still there?"], what="delivered"
    )


async def test_a_reply_for_an_unknown_messenger_is_a_dead_letter_until_it_is_added(
    world: World, jivo: Jivo
) -> None:
    http = jivo.http
    await jivo.start()
    with structlog.testing.capture_logs() as logs:
        status, body = await jivo.sim.post(http, agent_body("beta:b1", "Your order shipped", "j1"))
        assert (status, body) == (200, {"result": "ok"})
        # JivoChat sends it again: still one dead letter.
        await jivo.sim.post(http, agent_body("beta:b1", "Your order shipped", "j1"))
    (item,) = await dead(world)
    assert (item["kind"], item["livechat"], item["channel"]) == ("operator.reply", "sales", "beta")
    assert "'beta' is not configured" in item["last_error"] and "beta:b1" in item["last_error"]
    payload = item["payload"]
    assert (payload["text"], payload["message_id"], payload["client_key"]) == (
        "Your order shipped",
        "j1",
        "beta:b1",
    )
    assert payload["operator_name"] == "Thomas Anderson" and payload["operator_id"] is None
    assert any(ln["event"] == "relay.reply_dead" and ln["client_key"] == "beta:b1" for ln in logs)
    assert lines_naming(logs, "Your order shipped") == []
    (event,) = await events(world, "unlinked")
    assert event["payload"]["text"] == "Your order shipped"
    assert event["payload"]["dead_letter"] == item["id"]

    # A key the bridge never made: a dead letter too, saying so.
    await jivo.sim.post(http, agent_body("visitor-42", "Hello?", "j2"))
    other = next(i for i in await dead(world) if i["id"] != item["id"])
    assert "names no messenger chat" in other["last_error"]
    assert other["payload"]["text"] == "Hello?"

    # Still missing: a retry leaves it dead, with the reason.
    status, body = await admin(world, "POST", f"/admin/outbox/{item['id']}/retry")
    assert (status, body["dead"]) == (200, 1)

    # The admin adds messenger "beta" for this live chat: a retry delivers the reply there.
    beta = MessengerSim(CODE)
    beta_server = SimServer(beta.app)
    await beta_server.start()
    try:
        config = jivo.config()
        config["messengers"]["beta"] = {
            **config["messengers"]["acme"],
            "webhook": f"{beta_server.url}/hook",
        }
        assert world.bridge is not None
        await world.bridge.stop()
        bridge = await world.start_bridge(config=config)
        await eventually(lambda: bridge.state("beta") == "active", what="beta active")
        status, body = await admin(world, "POST", f"/admin/outbox/{item['id']}/retry")
        assert (status, body["adopted"]) == (200, 1), body
        await eventually(lambda: beta.chat_log["b1"] == ["Your order shipped"], what="delivered")
        assert "b1" not in world.messenger.chat_log
        assert [i["id"] for i in await dead(world)] == [other["id"]]
    finally:
        if world.bridge is not None:
            await world.bridge.stop()
            world.bridge = None
        await beta_server.stop()


async def test_a_reply_for_a_removed_messenger_is_a_dead_letter(world: World) -> None:
    m, cv, http = world.messenger, world.chatvisor, world.http
    await world.start_bridge()
    await m.send_message(http, "r1", "hi")
    customer = await world.customer_id("r1")
    assert world.bridge is not None
    await world.bridge.stop()

    config = world.config()
    config["messengers"] = {}  # the admin removed messenger "acme"
    await world.start_bridge(config=config, wait_active=False)
    status, _ = await cv.agent_reply(http, customer, "still there?", message_id="op-9")
    assert status == 200
    (item,) = await dead(world)
    assert (item["kind"], item["channel"], item["livechat"]) == (
        "operator.reply",
        "acme",
        "support",
    )
    assert item["last_error"] == "messenger 'acme' is not configured (removed from the config?)"
    assert item["payload"]["text"] == "still there?"
    (refused,) = await events(world, "message.refused")
    assert refused["payload"]["dead_letter"] == item["id"]
    assert await stored.outbox_items(world.bridge.store, "pending") == []

    # The messenger is configured again: a retry delivers the reply in the chat's session.
    await world.bridge.stop()
    await world.start_bridge()
    status, body = await admin(world, "POST", f"/admin/outbox/{item['id']}/retry")
    assert (status, body["adopted"]) == (200, 1), body
    await eventually(lambda: m.chat_log["r1"] == ["still there?"], what="delivered")


async def test_a_chatvisor_reply_for_an_unknown_customer_ends_as_a_dead_letter_with_its_text(
    running: World,
) -> None:
    assert running.bridge is not None and running.bridge.app is not None
    cv, http = running.chatvisor, running.http
    files = [{"name": "invoice.pdf", "url": "https://files.example/invoice.pdf", "size": 1200}]
    with structlog.testing.capture_logs() as logs:
        status, _ = await cv.agent_reply(
            http, "cv-777", "Here is your invoice", message_id="op-7", files=files
        )
    assert status == 200
    # Kept as an orphan with its text and files, until the customer is linked.
    rows = await stored.orphans(running.bridge.store)
    assert [(r.customer_id, r.message_id, r.text, messages.files_list(r.files)) for r in rows] == [
        ("cv-777", "op-7", "Here is your invoice", files)
    ]
    (event,) = await events(running, "unlinked")
    assert event["payload"]["customer_id"] == "cv-777"
    assert (event["payload"]["text"], event["payload"]["files"]) == ("Here is your invoice", files)
    (line,) = [ln for ln in logs if ln["event"] == "relay.unlinked_event"]
    assert (line["customer_id"], line["log_level"]) == ("cv-777", "warning")
    assert lines_naming(logs, "Here is your invoice") == []
    assert await dead(running) == []

    counts = await running.bridge.app[PRUNER].prune_once(now=time.time() + 25 * 3600)
    assert counts["orphans"] == 1
    (item,) = await dead(running)
    assert item["kind"] == "operator.reply" and "cv-777" in item["last_error"]
    assert (item["payload"]["text"], item["payload"]["files"]) == ("Here is your invoice", files)
    assert await stored.orphans(running.bridge.store) == []


async def test_a_reply_refused_for_want_of_a_session_is_a_dead_letter_an_admin_retries(
    world: World,
) -> None:
    """docs/decisions.md, "Operator replies that cannot be delivered": the messenger allows no
    operator-started session and the chat has none open."""
    acme = {**world.config()["messengers"]["acme"], "operator_sessions": False}
    await world.start_bridge(messengers={"acme": acme})
    m, cv, http = world.messenger, world.chatvisor, world.http
    await m.send_message(http, "s1", "my order?")
    customer = await world.customer_id("s1")
    await cv.set_status(http, customer, "DONE")
    status, _ = await cv.agent_reply(http, customer, "Following up on your order", message_id="f1")
    assert status == 200
    (item,) = await dead(world)
    assert (item["kind"], item["channel"], item["last_error"]) == (
        "operator.reply",
        "acme",
        SESSION_REFUSED,
    )
    assert item["payload"]["text"] == "Following up on your order"
    (refused,) = await events(world, "message.refused")
    assert refused["payload"]["dead_letter"] == item["id"]
    assert m.chat_log["s1"] == []

    status, body = await admin(world, "POST", f"/admin/outbox/{item['id']}/retry")
    assert (status, body["dead"]) == (200, 1)  # still no session
    await m.send_message(http, "s1", "hello again")  # the user opens one
    status, body = await admin(world, "POST", f"/admin/outbox/{item['id']}/retry")
    assert (status, body["adopted"]) == (200, 1), body
    await eventually(lambda: m.chat_log["s1"] == ["Following up on your order"], what="delivered")
    # The live chat sends it again: a true repeat, dropped.
    await cv.agent_reply(http, customer, "Following up on your order", message_id="f1")
    await asyncio.sleep(0.2)
    assert m.chat_log["s1"] == ["Following up on your order"] and await dead(world) == []


async def test_a_customer_tagged_before_its_message_was_refused_is_kept(world: World) -> None:
    """The live chat gave the customer an id, then refused the message for good: the id is
    stored all the same, so the operator's reply to that customer reaches the user at once."""
    await world.start_bridge()
    m, cv = world.messenger, world.chatvisor
    cv.refuse_messages = 1
    status, _ = await m.send_message(world.http, "t1", "refused", message_id="t1-1")
    assert status == 200
    await eventually(lambda: m.outcomes.get("t1-1") is False, what="failure outcome")
    customer = await world.customer_id("t1")  # stored by the bridge although the message died
    await cv.agent_reply(world.http, customer, "we saw your message")
    await eventually(lambda: m.chat_log["t1"] == ["we saw your message"], what="the reply")
    assert [d["kind"] for d in await dead(world)] == ["livechat.message"]  # the refused one only
