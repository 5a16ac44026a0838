"""JivoChat events linked without `user_token`, as real ones come for a Chat-API client
(shared/protocols/jivochat.md, "Linking Webhooks-API events"): by the chat's own URL echoed as
`page.url`, by phone as a number, by email trimmed and case-folded, by a chat_id linked before,
and by hand."""

from __future__ import annotations

import asyncio
import copy
import sys
from pathlib import Path
from typing import Any

import pytest

from bridge.core.contacts import email_key, phone_key
from bridge.settings import ConfigError, settings_from_dict
from storage import chats
from storage.port import Connection
from tests.conftest import HOOK, Jivo, World, eventually, seed
from tests.procs import ROOT, toml

PROFILE_PHONE = "+7 (999) 123-45-67"


def real(
    name: str,
    chat_id: int,
    *,
    phone: str | None = None,
    email: str | None = None,
    page_url: str = "https://example.com/",
    **changes: Any,
) -> dict[str, Any]:
    """A Webhooks-API event as JivoChat sends it for a Chat-API client: no `user_token`, the
    visitor's contact details as someone typed them, the page the visitor is on."""
    doc = copy.deepcopy(seed(name))
    doc.pop("user_token", None)
    doc["chat_id"] = chat_id
    visitor = doc.setdefault("visitor", {})
    visitor.pop("phone", None)
    visitor.pop("email", None)
    if phone is not None:
        visitor["phone"] = phone
    if email is not None:
        visitor["email"] = email
    doc["page"] = {"url": page_url, "title": "Chat"}
    doc.update(changes)
    return doc


def config(jivo: Jivo, region: str | None = "RU") -> dict[str, Any]:
    cfg = jivo.config()
    if region is not None:
        cfg["livechats"]["sales"]["default_region"] = region
    return cfg


async def start(jivo: Jivo, region: str | None = "RU") -> None:
    bridge = await jivo.world.start_bridge(config=config(jivo, region))
    jivo.sim.hook_url = f"{bridge.url}/livechats/sales/webhook/{HOOK}"


async def user_with_phone(jivo: Jivo, chat: str, user: str, phone: str = PROFILE_PHONE) -> None:
    """A messenger user whose profile has this phone has written; the profile is stored."""
    world = jivo.world
    world.messenger.profiles[user] = {
        "id": user,
        "username": f"User {user}",
        "phoneNumber": phone,
        "avatar": None,
    }
    await jivo.user_says(chat, f"hello from {chat}", user_id=user)
    assert world.bridge is not None
    bridge = world.bridge

    async def keyed() -> bool:
        keys = await chats.read_keys(bridge.store, "acme", chat)
        return keys is not None and keys.user_phone is not None

    await eventually(keyed, what="profile stored")


async def admin_get(world: World, path: str) -> Any:
    assert world.bridge is not None
    async with world.http.get(
        f"{world.bridge.url}{path}", headers=world.bridge.admin_headers()
    ) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def admin_post(world: World, path: str, body: Any) -> tuple[int, Any]:
    assert world.bridge is not None
    async with world.http.post(
        f"{world.bridge.url}{path}", headers=world.bridge.admin_headers(), json=body
    ) as r:
        return r.status, await r.json()


# --- the keys themselves ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "region"),
    [
        ("+7 (999) 123-45-67", None),
        ("+79991234567", None),
        ("79991234567", None),
        ("79991234567", "US"),
        ("8 (999) 123-45-67", "RU"),
        ("+7 999 123 45 67", "RU"),
        ("79991234567", "RU"),
    ],
)
def test_phone_formats_are_one_number(raw: str, region: str | None) -> None:
    assert phone_key(raw, region) == "+79991234567"


def test_not_a_phone_and_emails() -> None:
    assert phone_key("call me", "RU") is None and phone_key("", None) is None
    assert phone_key("8 (999) 123-45-67", None) is None  # national format needs a region
    assert email_key("  Dora@Example.COM ") == "dora@example.com"
    assert email_key("   ") is None


def test_default_region_is_validated(tmp_path: Path) -> None:
    cfg: dict[str, Any] = {
        "storage": {"path": str(tmp_path / "x.sqlite3")},
        "admin": {"token": "t" * 20},
        "livechats": {
            "sales": {
                "kind": "jivochat",
                "chat_api_url": "https://wh.example/x/y",
                "hook_token": "h" * 20,
                "default_region": "XX",
            }
        },
    }
    with pytest.raises(ConfigError) as err:
        settings_from_dict(cfg)
    (problem,) = err.value.problems
    assert problem.startswith("livechats.sales.default_region: unknown region 'XX'")
    cfg["livechats"]["sales"]["default_region"] = "ru"
    assert settings_from_dict(cfg).livechats["sales"].default_region == "RU"  # type: ignore[union-attr]


# --- over HTTP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("event_phone", ["+79991234567", "79991234567", "8 999 123-45-67"])
async def test_accepted_links_by_phone_as_a_number_and_gets_the_crm_answer(
    world: World, jivo: Jivo, event_phone: str
) -> None:
    await start(jivo)
    await user_with_phone(jivo, "p1", "u1")
    status, body = await jivo.sim.event(jivo.http, real("chat_accepted", 9001, phone=event_phone))
    assert status == 200 and body["result"] == "ok"
    assert body["contact_info"]["name"] == "User u1"
    assert body["contact_info"]["phone"] == PROFILE_PHONE  # the original, for display
    ((session_id, state, remote, agent, _, _),) = await jivo.sessions("p1")
    assert (state, remote, agent) == ("open", "9001", "Thomas Anderson")
    assert body["crm_link"] == f"{world.bridge.url}/admin/ui/sessions/{session_id}"  # type: ignore[union-attr]


async def test_email_in_another_case_and_with_spaces_links(world: World, jivo: Jivo) -> None:
    await start(jivo)
    await user_with_phone(jivo, "e1", "u2")
    # The first JivoChat chat links by phone and stores the visitor's contact, email included.
    first = real("chat_updated", 100, phone="+79991234567", email="Dora@Example.com")
    assert (await jivo.sim.event(jivo.http, first))[1]["contact_info"]["name"] == "User u2"
    # A later JivoChat chat of the same visitor: no phone, the email spelt otherwise.
    later = real("chat_accepted", 200, email="  dora@EXAMPLE.COM ")
    _, body = await jivo.sim.event(jivo.http, later)
    assert body["contact_info"]["name"] == "User u2"
    keys = await chats.read_keys(world.bridge.store, "acme", "e1")  # type: ignore[union-attr]
    assert keys is not None and keys.contact_email == "dora@example.com"
    assert [s[2] for s in await jivo.sessions("e1")] == ["200"]


async def test_page_url_equal_to_the_sent_sender_url_links(world: World, jivo: Jivo) -> None:
    await start(jivo)
    await jivo.user_says("w1", "no phone in my profile", user_id="nobody")
    await jivo.user_says("w2", "another chat", user_id="nobody2")
    await eventually(lambda: len(jivo.sim.client_messages) == 2, what="both at JivoChat")
    urls = {b["sender"]["id"]: b["sender"]["url"] for b in jivo.sim.client_messages}
    assert len(set(urls.values())) == 2
    # The visitor's phone is someone else's; the page is what links.
    event = real("chat_accepted", 31, phone="+14084987855", page_url=urls["acme:w1"])
    _, body = await jivo.sim.event(jivo.http, event)
    assert body["contact_info"]["description"] == "Support service user nobody"
    assert [s[2] for s in await jivo.sessions("w1")] == ["31"]
    assert [s[2] for s in await jivo.sessions("w2")] == [None]

    # The URL opens nothing and tells nothing, whether or not it is a chat's.
    for url in (urls["acme:w1"], f"{world.bridge.url}/c/AAAAAAAAAAAAAAAAAAAAAAAA"):  # type: ignore[union-attr]
        async with world.http.get(url) as r:
            assert r.status == 404
            assert await r.json() == {
                "error": "this URL names a chat to the live chat; there is no page here",
                "errcode": "not_found",
            }


async def test_later_events_of_a_linked_chat_id_link_and_finished_closes(
    world: World, jivo: Jivo
) -> None:
    await start(jivo)
    await user_with_phone(jivo, "f1", "u3")
    await jivo.sim.event(jivo.http, real("chat_accepted", 4242, phone="+79991234567"))
    # Later events carry nothing of the first's keys but the chat_id (another phone even).
    _, body = await jivo.sim.event(
        jivo.http, real("chat_updated", 4242, phone="+14084987855", page_url="https://x/")
    )
    assert body["contact_info"]["name"] == "User u3"
    finished = real(
        "chat_finished",
        4242,
        chat={
            "messages": [
                {"timestamp": 1700000000, "type": "visitor", "message": "hello from f1"},
                {"timestamp": 1700000009, "type": "agent", "agent_id": 2224, "message": "hi!"},
            ],
            "rate": None,
        },
        plain_messages="visitor: hello from f1\nagent: hi!",
    )
    assert await jivo.sim.event(jivo.http, finished) == (200, {"result": "ok"})
    ((session_id, state, _, _, _, transcript),) = await jivo.sessions("f1")
    assert state == "closed"
    assert [line["text"] for line in transcript] == ["hello from f1", "hi!"]
    events = (await admin_get(world, "/admin/events?livechat=sales"))["events"]
    assert [(e["name"], e["session_id"]) for e in events] == [
        ("chat_finished", session_id),
        ("chat_updated", session_id),
        ("chat_accepted", session_id),
    ]
    assert (await admin_get(world, "/admin/events?unlinked=1"))["events"] == []


async def test_unlinked_event_is_listed_with_why_and_linked_by_hand(
    world: World, jivo: Jivo, tmp_path: Path
) -> None:
    await start(jivo)
    await jivo.user_says("h1", "I have no phone here", user_id="anon")
    await eventually(lambda: jivo.sim.client_messages, what="at JivoChat")
    ((session_id, *_),) = await jivo.sessions("h1")

    accepted = real("chat_accepted", 777, phone="+7 912 000-00-00")
    assert await jivo.sim.event(jivo.http, accepted) == (200, {"result": "ok"})
    (event,) = (await admin_get(world, "/admin/events?unlinked=1"))["events"]
    assert (event["name"], event["session_id"], event["remote_chat_id"]) == (
        "chat_accepted",
        None,
        "777",
    )
    reason = event["unlinked_reason"]
    for part in (
        "user_token: absent",
        "page.url: no chat of the bridge has this URL",
        "chat_id 777: not linked to a session before",
        "phone +79120000000: no profile or contact has it",
        "email: absent",
    ):
        assert part in reason, reason
    # A second event of the same JivoChat chat, unlinked too.
    await jivo.sim.event(jivo.http, real("chat_updated", 777))

    # By hand, through the CLI, which calls the running bridge's admin API.
    path = tmp_path / "bridge.toml"
    path.write_text(toml(config(jivo)))

    async def link_event(*ids: int) -> tuple[int | None, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bridge", "--config", str(path), "link-event"),
            *(str(i) for i in ids),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        return proc.returncode, out.decode(), err.decode()

    code, _, err = await link_event(event["id"] + 1000, session_id)
    assert code == 1 and "error (404): no event with this id" in err
    code, out, err = await link_event(event["id"], session_id)
    assert code == 0, err
    assert f"to session {session_id}" in out and "777" in out
    assert (await admin_get(world, "/admin/events?unlinked=1"))["events"] == []
    ((_, state, remote, agent, _, _),) = await jivo.sessions("h1")
    assert (state, remote, agent) == ("open", "777", "Thomas Anderson")  # its effects applied

    # The next event of that chat_id links, and is answered.
    _, body = await jivo.sim.event(jivo.http, real("chat_updated", 777))
    assert body["contact_info"]["description"] == "Support service user anon"
    finished = real("chat_finished", 777)
    await jivo.sim.event(jivo.http, finished)
    assert [s[1] for s in await jivo.sessions("h1")] == ["closed"]


async def test_link_by_hand_through_the_admin_api_and_its_errors(world: World, jivo: Jivo) -> None:
    await start(jivo)
    await jivo.user_says("h2", "hi", user_id="anon2")
    ((session_id, *_),) = await jivo.sessions("h2")
    await jivo.sim.event(jivo.http, real("chat_accepted", 55))
    (event,) = (await admin_get(world, "/admin/events?unlinked=1"))["events"]

    link = f"/admin/events/{event['id']}/link"
    cases = [
        (
            f"/admin/events/{event['id'] + 100}/link",
            {"session_id": session_id},
            404,
            "unknown_event",
        ),
        (link, {"session_id": session_id + 100}, 404, "unknown_session"),
        (link, {}, 400, "missing_field"),
        (link, {"session_id": "1"}, 400, "invalid_field"),
        (link, {"session_id": True}, 400, "invalid_field"),
        (link, [session_id], 400, "invalid_json"),
    ]
    for path, body, status, errcode in cases:
        got_status, got = await admin_post(world, path, body)
        assert (got_status, got["errcode"]) == (status, errcode), path
    async with world.http.post(f"{world.bridge.url}{link}", json={"session_id": 1}) as r:  # type: ignore[union-attr]
        assert r.status == 401
    async with world.http.get(
        f"{world.bridge.url}/admin/events?unlinked=yes",  # type: ignore[union-attr]
        headers=world.bridge.admin_headers(),  # type: ignore[union-attr]
    ) as r:
        assert (r.status, (await r.json())["errcode"]) == (400, "invalid_query")

    assert await admin_post(world, link, {"session_id": session_id}) == (
        200,
        {"session_id": session_id, "events": [event["id"]], "remote_chat_id": "55"},
    )
    _, body = await jivo.sim.event(jivo.http, real("chat_updated", 55, phone="+14084987855"))
    assert body["contact_info"]["description"] == "Support service user anon2"


async def test_contacts_stored_before_keys_are_keyed_at_start(world: World, jivo: Jivo) -> None:
    await start(jivo)
    await user_with_phone(jivo, "k1", "u9")
    await jivo.sim.event(jivo.http, real("chat_updated", 9, phone="+79991234567", email="K@X.io"))
    assert world.bridge is not None

    def unkeyed(conn: Connection) -> None:  # as an upgraded database has them: no keys
        conn.execute("UPDATE users SET phone_key = NULL")
        conn.execute("UPDATE chats SET contact_phone_key = NULL, contact_email_key = NULL")

    await world.bridge.store.write(unkeyed)  # keys are made at start only
    await world.bridge.stop()
    await start(jivo)
    keys = await chats.read_keys(world.bridge.store, "acme", "k1")
    assert keys == chats.ContactKeys("+79991234567", "+79991234567", "k@x.io")


async def test_a_linked_event_is_not_moved_and_a_reply_record_is_not_linkable(
    world: World, jivo: Jivo
) -> None:
    await start(jivo)
    await jivo.user_says("h3", "hi", user_id="anon3")
    await jivo.user_says("h4", "hi", user_id="anon4")
    ((first, *_),) = await jivo.sessions("h3")
    ((second, *_),) = await jivo.sessions("h4")
    await jivo.sim.event(jivo.http, real("chat_accepted", 66))
    (event,) = (await admin_get(world, "/admin/events?unlinked=1"))["events"]
    link = f"/admin/events/{event['id']}/link"
    linked = await admin_post(world, link, {"session_id": first})
    assert linked[0] == 200, linked
    status, body = await admin_post(world, link, {"session_id": second})
    assert (status, body["errcode"]) == (409, "already_linked")
    assert f"session {first}" in body["error"]

    # An operator's reply to a chat the bridge never had: a dead letter, recorded as an event
    # that linking by hand would not deliver.
    reply = {
        "recipient": {"id": "nosuch:xx"},
        "sender": {"name": "Thomas Anderson"},
        "message": {"type": "text", "id": "jv-1", "text": "hello?"},
    }
    assert (await jivo.sim.post(jivo.http, reply))[0] == 200
    (record,) = (await admin_get(world, "/admin/events?unlinked=1"))["events"]
    status, body = await admin_post(
        world, f"/admin/events/{record['id']}/link", {"session_id": first}
    )
    assert (status, body["errcode"]) == (400, "not_linkable")
    assert "retry it from the outbox" in body["error"]
