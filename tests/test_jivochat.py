"""JivoChat: seed 001's payloads, every quirk, the Chat API round trip, CRM answers, sessions."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest

from bridge.core.model import AgentMessage, Lifecycle, OtherEvent
from connectors.jivochat import parse_hook
from storage import chats
from tests import stored
from tests.conftest import EVENTS, FIXTURES, HOOK, Jivo, World, eventually, seed

# --- parsing: seed payloads verbatim, and every quirk the contract lists ----------------------


@pytest.mark.parametrize("name", EVENTS)
def test_every_seed_example_parses(name: str) -> None:
    (event,) = parse_hook((FIXTURES / f"{name}.request.json").read_bytes())
    assert isinstance(event, Lifecycle) and event.name == name
    assert event.raw == seed(name)


def test_seed_details_reach_the_bridge_types() -> None:
    (accepted,) = parse_hook(json.dumps(seed("chat_accepted")).encode())
    assert isinstance(accepted, Lifecycle)
    assert accepted.agent is not None and accepted.agent.id == "2224"
    assert accepted.chat.conversation_id == "3537" and accepted.chat.phone == "+14084987855"
    assert accepted.contact is not None and accepted.contact.name == "John Smith"
    assert accepted.wants_answer and not accepted.closes
    (finished,) = parse_hook(json.dumps(seed("chat_finished")).encode())
    assert isinstance(finished, Lifecycle) and finished.closes
    assert finished.transcript is not None and finished.transcript[0].agent_id == "6149"


def variant(name: str, **changes: Any) -> bytes:
    doc = copy.deepcopy(seed(name))
    for key, value in changes.items():
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (variant("chat_accepted", agent={"id": 2224, "name": "T"}), "chat_accepted"),
        (variant("chat_accepted", chat_id="3537"), "chat_accepted"),
        (
            variant("offline_message", event_name="offline_messages", offline_message_id=3999),
            "offline_message",
        ),
        (
            variant("chat_finished", plain_messages="visitor: hi", html_messages="<p>hi</p>"),
            "chat_finished",
        ),
        (variant("chat_finished", chat={"messages": [], "rate": "positive"}), "chat_finished"),
        (
            variant(
                "chat_finished", chat={"messages": [], "rate": "negative", "blacklisted": False}
            ),
            "chat_finished",
        ),
        (variant("chat_finished", chat={"messages": [], "rate": None}), "chat_finished"),
        (variant("chat_updated", user_token=None), "chat_updated"),
        (variant("chat_updated", user_token="acme:c1"), "chat_updated"),
        (
            variant("chat_updated", visitor=None, agent=None, session=None, page=None),
            "chat_updated",
        ),
        (variant("chat_accepted", brand_new_field={"x": [1]}, analytics=[]), "chat_accepted"),
        (variant("chat_updated", event_name="client_updated"), "client_updated"),
        (
            variant("chat_updated", event_name="client_attribute_updated"),
            "client_attribute_updated",
        ),
        (variant("chat_assigned", assign_to="https://crm/x"), "chat_assigned"),
    ],
)
def test_quirks_parse(body: bytes, name: str) -> None:
    (event,) = parse_hook(body)
    assert isinstance(event, Lifecycle) and event.name == name


def test_unknown_event_is_kept_not_refused() -> None:
    (event,) = parse_hook(b'{"event_name": "chat_rated", "chat_id": 1}')
    assert isinstance(event, OtherEvent) and event.name == "chat_rated"


def test_chat_api_agent_messages_parse() -> None:
    (msg,) = parse_hook(
        b'{"sender": {"id": 7, "name": "Thomas"}, "recipient": {"id": "acme:c1"},'
        b' "message": {"type": "photo", "id": 12, "file": "https://f/x.png", "file_name": "x.png"}}'
    )
    assert isinstance(msg, AgentMessage)
    assert msg.chat.client_key == "acme:c1" and msg.message_id == "12"
    assert (
        msg.files[0].url == "https://f/x.png"
        and msg.operator is not None
        and msg.operator.id == "7"
    )
    (typing,) = parse_hook(b'{"recipient": {"id": "acme:c1"}, "message": {"type": "typein"}}')
    assert isinstance(typing, OtherEvent) and typing.name == "chat_api.typein"


# --- over HTTP ---------------------------------------------------------------------------


async def test_seed_payloads_get_the_documented_answer(running: World, jivo: Jivo) -> None:
    await running.bridge.stop()
    await jivo.start()
    for name in EVENTS:
        status, body = await jivo.sim.event(jivo.http, seed(name))
        assert (status, body) == (200, {"result": "ok"}), name  # unlinked: nothing to show
    for name in ("client_updated", "client_attribute_updated", "something_new"):
        assert (await jivo.sim.event(jivo.http, {**seed("chat_updated"), "event_name": name}))[
            0
        ] == 200
    names = await stored.event_names(running.bridge.store)
    assert names == [*EVENTS, "client_updated", "client_attribute_updated", "something_new"]
    async with jivo.http.get(
        f"{running.bridge.url}/admin/events?livechat=sales&event=offline_message",
        headers=running.bridge.admin_headers(),
    ) as r:
        (event,) = (await r.json())["events"]
    assert event["payload"] == seed("offline_message")


async def test_round_trip_with_jivochat(world: World, jivo: Jivo) -> None:
    m = world.messenger
    m.profiles["u1"] = {
        "id": "u1",
        "username": "Alice",
        "phoneNumber": "+15550001",
        "avatar": "https://a/u1.png",
    }
    await jivo.start()
    await jivo.user_says("c1", "Hello from the messenger", user_id="u1", message_id="e1")
    await eventually(
        lambda: jivo.sim.texts("acme:c1") == ["Hello from the messenger"], what="at JivoChat"
    )
    (sent,) = jivo.sim.client_messages
    url = sent["sender"].pop("url")  # the chat's own URL at the bridge, opaque
    assert url.startswith(f"{world.bridge.url}/c/") and "c1" not in url.rsplit("/", 1)[1]
    assert sent["sender"] == {
        "id": "acme:c1",
        "name": "Alice",
        "phone": "+15550001",
        "photo": "https://a/u1.png",
    }
    assert sent["message"]["type"] == "text" and sent["message"]["id"]
    await eventually(lambda: m.outcomes.get("e1") is True, what="outcome")

    status, body = await jivo.sim.agent_message(jivo.http, "acme:c1", "Hi Alice, Thomas here")
    assert (status, body) == (200, {"result": "ok"})
    await jivo.sim.agent_message(
        jivo.http, "acme:c1", kind="document", file="https://f/terms.pdf", file_name="terms.pdf"
    )
    await eventually(lambda: len(m.messages) == 2, what="replies at the messenger")
    first, second = m.messages.values()
    assert first["text"] == "Hi Alice, Thomas here" and first["operator"] == {
        "id": "2224",
        "name": "Thomas Anderson",
    }
    assert second["files"] == [{"name": "terms.pdf", "URL": "https://f/terms.pdf"}]


async def test_files_become_photo_video_document_messages(world: World, jivo: Jivo) -> None:
    await jivo.start()
    files = [
        {"name": "cat.jpg", "URL": "https://f/cat.jpg", "size": 10},
        {"name": "clip.mp4", "URL": "https://f/clip.mp4"},
        {"name": "report.pdf", "URL": "https://f/report.pdf"},
    ]
    await jivo.user_says("c2", "three files", files=files)
    await eventually(lambda: len(jivo.sim.client_messages) == 4, what="four parts")
    parts = [b["message"] for b in jivo.sim.client_messages]
    # The caption goes last, as a text message of its own, as public Chat-API clients send it.
    assert [p["type"] for p in parts] == ["photo", "video", "document", "text"]
    assert not any("text" in p for p in parts[:3]) and parts[3]["text"] == "three files"
    assert [p.get("file_name") for p in parts] == ["cat.jpg", "clip.mp4", "report.pdf", None]
    uid = parts[0]["id"]
    assert [p["id"] for p in parts] == [uid, f"{uid}-1", f"{uid}-2", f"{uid}-3"]


async def test_4xx_fails_and_5xx_retries(world: World, jivo: Jivo) -> None:
    m = world.messenger
    await jivo.start()
    jivo.sim.fail_with, jivo.sim.fail_times = 503, 3
    await jivo.user_says("c3", "after 503s", message_id="e3a")
    await eventually(lambda: m.outcomes.get("e3a") is True, what="delivered after retries")
    jivo.sim.fail_with, jivo.sim.fail_times = 400, 0
    await jivo.user_says("c3", "refused", message_id="e3b")
    await eventually(lambda: m.outcomes.get("e3b") is False, what="failure outcome")
    assert jivo.sim.texts("acme:c3") == ["after 503s"]


async def test_chat_accepted_is_answered_like_a_crm(world: World, jivo: Jivo) -> None:
    m = world.messenger
    m.profiles["u4"] = {"id": "u4", "username": "Dora", "phoneNumber": "+15550004", "avatar": None}
    await jivo.start()
    await jivo.user_says("c4", "need help", user_id="u4")
    await eventually(lambda: jivo.sim.texts("acme:c4"), what="at JivoChat")

    accepted = {**seed("chat_accepted"), "user_token": "acme:c4", "chat_id": 555}
    status, body = await jivo.sim.event(jivo.http, accepted)
    assert status == 200
    ((session_id, *_),) = await jivo.sessions("c4")
    assert body["result"] == "ok"
    assert body["contact_info"] == {
        "name": "Dora",
        "phone": "+15550004",
        "description": "Support service user u4",
    }
    titles = [f["title"] for f in body["custom_data"]]
    assert titles == ["Messenger", "User ID", "Session started"]
    assert body["custom_data"][0]["content"] == "Support service"
    assert body["custom_data"][1]["content"] == "u4"
    assert body["crm_link"] == f"{world.bridge.url}/admin/ui/sessions/{session_id}"
    assert body["enable_assign"] is True
    ((_, status_, remote, agent, _, _),) = await jivo.sessions("c4")
    assert (status_, remote, agent) == ("open", "555", "Thomas Anderson")

    # The link is the console's page: without a console session it leads to the sign-in.
    async with jivo.http.get(body["crm_link"], allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"].startswith("/admin/login")

    updated = {**seed("chat_updated"), "chat_id": 555}  # linked now by JivoChat's chat id
    status, body = await jivo.sim.event(jivo.http, updated)
    assert body["contact_info"]["name"] == "Dora"
    ((contact_email),) = {s["contact"]["email"] for s in await stored.sessions(world.bridge.store)}
    assert contact_email == "email@example.com"


async def test_events_link_by_phone_and_assign_stores_the_crm_link(
    world: World, jivo: Jivo
) -> None:
    m = world.messenger
    m.profiles["u5"] = {
        "id": "u5",
        "username": "Eve",
        "phoneNumber": "+14084987855",
        "avatar": None,
    }
    await jivo.start()
    await jivo.user_says("c5", "hi", user_id="u5")

    async def profile() -> bool:
        cached = await chats.read_user(world.bridge.store, "acme", "u5")
        return cached is not None and cached[0].phone is not None

    await eventually(profile, what="profile")
    _, body = await jivo.sim.event(jivo.http, seed("chat_accepted"))  # the seed's visitor phone
    assert body["contact_info"]["name"] == "Eve"
    assigned = {**seed("chat_assigned"), "chat_id": 3537, "assign_to": "https://crm.example/lead/9"}
    assert (await jivo.sim.event(jivo.http, assigned)) == (200, {"result": "ok"})
    ((_, _, remote, _, crm_link, _),) = await jivo.sessions("c5")
    assert (remote, crm_link) == ("3537", "https://crm.example/lead/9")


async def test_chat_finished_closes_keeps_transcript_and_next_message_reopens(
    world: World, jivo: Jivo
) -> None:
    await jivo.start()
    await jivo.user_says("c6", "first")
    await jivo.sim.event(
        jivo.http, {**seed("chat_accepted"), "user_token": "acme:c6", "chat_id": 77}
    )
    finished = {
        **seed("chat_finished"),
        "chat_id": 77,
        "chat": {
            "messages": [
                {"timestamp": 1700000000, "type": "visitor", "message": "first"},
                {"timestamp": 1700000005, "type": "agent", "agent_id": 2224, "message": "hello"},
            ],
            "rate": "positive",
        },
        "plain_messages": "visitor: first\nagent: hello",
    }
    assert await jivo.sim.event(jivo.http, finished) == (200, {"result": "ok"})
    ((_, status, _, _, _, transcript),) = await jivo.sessions("c6")
    assert status == "closed"
    assert transcript == [
        {"sender": "visitor", "text": "first", "timestamp": 1700000000, "agent_id": None},
        {"sender": "agent", "text": "hello", "timestamp": 1700000005, "agent_id": "2224"},
    ]
    await jivo.user_says("c6", "second")
    assert [s[1] for s in await jivo.sessions("c6")] == ["closed", "open"]
    await eventually(
        lambda: jivo.sim.texts("acme:c6") == ["first", "second"], what="both at JivoChat"
    )


async def test_readiness_reports_agents_online(world: World, jivo: Jivo) -> None:
    config = jivo.config()
    config["livechats"]["sales"]["status_cache"] = 0  # asked on every /readyz
    await world.start_bridge(config=config)
    url = f"{world.bridge.url}/readyz"
    async with jivo.http.get(url) as r:
        sales = (await r.json())["livechats"]["sales"]
    assert sales == {"kind": "jivochat", "agents_online": True, "status_age": 0.0}
    jivo.sim.agents_online = False
    async with jivo.http.get(url) as r:
        assert (await r.json())["livechats"]["sales"]["agents_online"] is False
    await jivo.server.stop()
    async with jivo.http.get(url) as r:
        body = await r.json()
    assert r.status == 200 and body["livechats"]["sales"]["agents_online"] is None  # not a failure
    assert "x7Kq2mPz9" not in json.dumps(body)  # the Chat API URL's secret part


async def test_bad_token_and_malformed_bodies(world: World, jivo: Jivo) -> None:
    await jivo.start()
    base = f"{world.bridge.url}/livechats/sales/webhook"
    async with jivo.http.post(f"{base}/wrong", json=seed("chat_accepted")) as r:
        assert r.status == 401 and (await r.json())["errcode"] == "bad_token"
    cases = [
        (b"{", "invalid_json"),
        (b'{"hello": 1}', "unknown_body"),
        (b'{"event_name": 5}', "invalid_field"),
        (b'{"recipient": {"id": "x"}}', "missing_field"),
        (b'{"event_name": "chat_finished", "chat": {"messages": "nope"}}', "invalid_field"),
    ]
    for raw, errcode in cases:
        async with jivo.http.post(f"{base}/{HOOK}", data=raw) as r:
            assert (r.status, (await r.json())["errcode"]) == (400, errcode), raw


async def test_agent_message_for_unknown_client_is_recorded(world: World, jivo: Jivo) -> None:
    # A key that is not the bridge's (an `acme:...` key would be recovered: tests/test_replies.py).
    await jivo.start()
    assert (await jivo.sim.agent_message(jivo.http, "nobody", "hello?"))[0] == 200
    assert await stored.event_names(world.bridge.store) == ["unlinked"]
    items = await stored.outbox_items(world.bridge.store)
    assert [(i["kind"], i["status"]) for i in items] == [("operator.reply", "dead")]
    await asyncio.sleep(0)
