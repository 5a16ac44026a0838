"""Channel life cycle: connect, reject, disconnect, reconnect, and what survives a restart."""

from __future__ import annotations

from typing import Any

from storage.migrations import LATEST
from tests.conftest import World, eventually


async def admin(world: World, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    assert world.bridge is not None
    headers = kw.pop("headers", world.bridge.admin_headers())
    async with world.http.request(method, world.bridge.url + path, headers=headers, **kw) as r:
        return r.status, await r.json()


async def test_disconnect_holds_then_reconnect_delivers(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "k1", "hi")
    customer = await running.customer_id("k1")

    status, body = await admin(running, "POST", "/admin/messengers/acme/disconnect")
    assert status == 200 and body["state"] == "disconnected" and body["enabled"] is False
    assert m.count("disconnect") == 1

    status, body = await m.send_message(http, "k1", "while disconnected")
    assert status == 409 and body["errcode"] == "channel_disconnected"

    for i in range(3):
        await cv.agent_reply(http, customer, f"held-{i}")
    _, listing = await admin(running, "GET", "/admin/channels")
    assert listing["channels"][0]["held_messages"] == 3
    assert m.chat_log["k1"] == []

    status, body = await admin(running, "POST", "/admin/messengers/acme/reconnect")
    assert status == 200 and body["state"] == "active"
    assert m.count("connect") == 2
    await eventually(
        lambda: m.chat_log["k1"] == ["held-0", "held-1", "held-2"], what="held replies"
    )
    assert (await m.send_message(http, "k1", "back"))[0] == 200


async def test_messenger_side_disconnect_is_honoured(running: World) -> None:
    m, http = running.messenger, running.http
    assert await m.send(http, "disconnect") == (200, {"result": "ok"})
    assert running.bridge.state() == "disconnected"
    assert (await m.send_message(http, "k2", "x"))[0] == 409
    assert m.count("disconnect") == 0  # the messenger asked; the bridge does not echo it back
    status, body = await admin(running, "POST", "/admin/messengers/acme/connect")
    assert (status, body["state"]) == (200, "active")


async def test_wrong_code_at_connect_rejects_the_channel(world: World) -> None:
    world.messenger.code = "the messenger has another code"
    bridge = await world.start_bridge(wait_active=False)
    await eventually(lambda: bridge.state() == "rejected", what="rejected")
    _, listing = await admin(world, "GET", "/admin/channels")
    assert "401" in listing["channels"][0]["last_error"]
    world.messenger.code = world.config()["messengers"]["acme"]["confirmation_code"]
    _, body = await admin(world, "POST", "/admin/messengers/acme/reconnect")
    assert body["state"] == "active"


async def test_unreachable_messenger_is_interrupted_and_retried(world: World) -> None:
    await world.messenger_server.stop()
    bridge = await world.start_bridge(wait_active=False)
    await eventually(lambda: bridge.state() == "interrupted", what="interrupted")
    await world.messenger_server.start()
    await eventually(lambda: bridge.state() == "active", what="reconnected by itself")


async def test_messenger_answering_401_to_a_message_rejects_the_channel(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await m.send_message(http, "k3", "x")
    customer = await running.customer_id("k3")
    await eventually(lambda: m.outcomes, what="outcome")
    m.code = "changed on the messenger side"
    await cv.agent_reply(http, customer, "kept")
    await eventually(lambda: running.bridge.state() == "rejected", what="rejected")
    m.code = running.config()["messengers"]["acme"]["confirmation_code"]
    await admin(running, "POST", "/admin/messengers/acme/reconnect")
    await eventually(lambda: m.chat_log["k3"] == ["kept"], what="delivered after reconnect")


async def test_config_disabled_channel_starts_disconnected(world: World) -> None:
    acme = {**world.config()["messengers"]["acme"], "enabled": False}
    bridge = await world.start_bridge(wait_active=False, messengers={"acme": acme})
    assert bridge.state() == "disconnected"
    assert world.messenger.count("connect") == 0


async def test_admin_change_survives_restart_until_config_changes(world: World) -> None:
    bridge = await world.start_bridge()
    await admin(world, "POST", "/admin/messengers/acme/disconnect")
    await bridge.stop()

    bridge = await world.start_bridge(wait_active=False)  # same config: enabled = true
    assert bridge.state() == "disconnected"
    await bridge.stop()

    acme = world.config()["messengers"]["acme"]
    bridge = await world.start_bridge(
        wait_active=False, messengers={"acme": {**acme, "enabled": False}}
    )
    assert bridge.state() == "disconnected"
    await bridge.stop()
    bridge = await world.start_bridge(messengers={"acme": {**acme, "enabled": True}})
    assert bridge.state() == "active"  # the config's value changed: it wins


async def test_admin_api_requires_the_token(running: World) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        status, body = await admin(running, "GET", "/admin/channels", headers=headers)
        assert status == 401 and body["errcode"] == "unauthorized"
    status, body = await admin(running, "POST", "/admin/messengers/nope/connect")
    assert status == 404 and body["errcode"] == "unknown_channel"


async def test_admin_lists_sessions(running: World) -> None:
    m, http = running.messenger, running.http
    await m.send_message(http, "k4", "x")
    await m.send_message(http, "k4", "y")
    status, body = await admin(running, "GET", "/admin/sessions?messenger=acme")
    assert status == 200
    (session,) = body["sessions"]
    assert (
        session["external_chat_id"] == "k4"
        and session["messages"] == 2
        and session["status"] == "open"
    )
    assert (await admin(running, "GET", "/admin/sessions?messenger=zzz"))[0] == 404
    assert (await admin(running, "GET", "/admin/sessions?limit=abc"))[0] == 400


async def test_health_and_readiness(running: World) -> None:
    async with running.http.get(f"{running.bridge.url}/healthz") as r:
        assert r.status == 200
    async with running.http.get(f"{running.bridge.url}/readyz") as r:
        body = await r.json()
    assert r.status == 200 and body["status"] == "ready" and body["schema_version"] == LATEST
