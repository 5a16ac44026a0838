"""The admin console over plain HTTP (no browser needed): sign-in, the session cookie, CSRF,
escaping of stored text, no secret on any page, and each page's content."""

from __future__ import annotations

import copy
import time
from collections.abc import AsyncIterator

import pytest
import structlog
from markupsafe import escape

from bridge.console.auth import FAILED_SIGN_IN_DELAY, SESSION_SECONDS, Sessions
from tests import stored
from tests.conftest import (
    ADMIN_TOKEN,
    API_TOKEN,
    CODE,
    HOOK,
    HOOK_TOKEN,
    Jivo,
    World,
    eventually,
    seed,
)
from tests.console_client import ConsoleUser

PAGES = [
    "/admin/",
    "/admin/ui/channels",
    "/admin/ui/sessions",
    "/admin/ui/outbox",
    "/admin/ui/events",
]
XSS = '<script>window.pwned = 1; alert("x")</script><img src=x onerror="alert(2)">'


@pytest.fixture
async def user(running: World) -> AsyncIterator[ConsoleUser]:
    assert running.bridge is not None
    u = ConsoleUser(running.bridge.url)
    yield u
    await u.close()


async def signed_in(user: ConsoleUser) -> ConsoleUser:
    r = await user.sign_in()
    assert r.status == 303, r.status
    assert user.csrf
    return user


async def session_id_of(world: World, chat: str) -> int:
    assert world.bridge is not None
    found = await eventually(
        lambda: stored.sessions(world.bridge.store, chat),  # type: ignore[union-attr]
        what="session stored",
    )
    return int(found[0]["id"])


# --- signing in ----------------------------------------------------------------------------


async def test_every_page_needs_a_session(user: ConsoleUser) -> None:
    for path in [*PAGES, "/admin/ui/sessions/1"]:
        status, _, r = await user.get(path)
        assert (status, r.headers["Location"]) == (303, "/admin/login"), path
    status, text, _ = await user.get("/admin/login")
    assert status == 200 and 'name="token"' in text
    status, _, r = await user.get("/admin")
    assert (status, r.headers["Location"]) == (308, "/admin/")


async def test_a_wrong_token_is_refused_slowly_and_logged_without_it(user: ConsoleUser) -> None:
    started = time.monotonic()
    with structlog.testing.capture_logs() as logs:
        r = await user.sign_in("wrong-token-" + ADMIN_TOKEN[:10])
    assert time.monotonic() - started >= FAILED_SIGN_IN_DELAY * 0.9
    assert r.status == 401
    assert user.cookie() is None
    async with user.http.post(f"{user.base}/admin/login", data={"token": "nope"}) as resp:
        body = await resp.text()
    assert resp.status == 401 and "Wrong admin token" in body
    failed = [e for e in logs if e["event"] == "console.sign_in_failed"]
    assert failed and failed[0]["log_level"] == "warning"
    assert ADMIN_TOKEN[:10] not in repr(logs)
    status, _, _ = await user.get("/admin/")
    assert status == 303  # still signed out


async def test_the_cookie_is_a_random_id_httponly_strict_expiring(user: ConsoleUser) -> None:
    r = await user.sign_in()
    assert (r.status, r.headers["Location"]) == (303, "/admin/")
    morsel = r.cookies["bridge_console"]
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "Strict"
    assert morsel["path"] == "/admin"
    assert int(morsel["max-age"]) == SESSION_SECONDS
    assert not morsel["secure"]  # public_url is http here
    assert ADMIN_TOKEN not in morsel.value and len(morsel.value) >= 40
    for path in PAGES:
        status, _, _ = await user.get(path)
        assert status == 200, path


async def test_the_cookie_is_secure_when_the_public_url_is_https(world: World) -> None:
    bridge = await world.start_bridge(server={"public_url": "https://bridge.example.com"})
    user = ConsoleUser(bridge.url)
    try:
        r = await user.sign_in()
        assert r.status == 303
        assert r.cookies["bridge_console"]["secure"] is True
    finally:
        await user.close()


async def test_signing_out_ends_the_session(user: ConsoleUser) -> None:
    await signed_in(user)
    old_cookie = user.cookie()
    status, _, r = await user.post("/admin/logout")
    assert (status, r.headers["Location"]) == (303, "/admin/login")
    assert user.cookie() is None
    status, _, _ = await user.get("/admin/", cookies={"bridge_console": old_cookie or ""})
    assert status == 303


def test_sessions_expire_and_stay_bounded() -> None:
    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0])
    session_id, session = sessions.create()
    assert sessions.find(session_id) is session
    assert sessions.find(session_id + "x") is None and sessions.find(None) is None
    now[0] += SESSION_SECONDS - 1
    assert sessions.find(session_id) is session
    now[0] += 1
    assert sessions.find(session_id) is None
    ids = [sessions.create()[0] for _ in range(1000)]
    assert sessions.find(ids[0]) is None and sessions.find(ids[-1]) is not None


async def test_security_headers_on_every_console_answer(user: ConsoleUser) -> None:
    await signed_in(user)
    for path in [*PAGES, "/admin/login", "/admin/ui/sessions/999999"]:
        _, _, r = await user.get(path)
        assert r.headers["X-Frame-Options"] == "DENY", path
        assert r.headers["Referrer-Policy"] == "no-referrer"
        csp = r.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp


# --- CSRF ----------------------------------------------------------------------------------


async def test_an_action_without_the_csrf_token_is_refused(
    running: World, user: ConsoleUser
) -> None:
    assert running.bridge is not None
    path = "/admin/ui/channels/acme/disconnect"
    status, text, _ = await user.post(path, csrf=False)
    assert status == 403 and "signed out" in text  # no session at all
    await signed_in(user)
    status, text, _ = await user.post(path, csrf=False)
    assert status == 403 and "expired" in text
    status, _, _ = await user.post(path, {"csrf": "x" * 43}, csrf=False)
    assert status == 403
    assert running.bridge.state() == "active"
    status, _, r = await user.post(path)
    assert (status, r.headers["Location"]) == (303, "/admin/ui/channels")
    assert running.bridge.state() == "disconnected"


async def test_another_sessions_csrf_token_is_refused(running: World) -> None:
    assert running.bridge is not None
    a, b = ConsoleUser(running.bridge.url), ConsoleUser(running.bridge.url)
    try:
        await signed_in(a)
        await signed_in(b)
        assert a.csrf != b.csrf
        status, _, _ = await a.post(
            "/admin/ui/channels/acme/disconnect", {"csrf": b.csrf}, csrf=False
        )
        assert status == 403
        assert running.bridge.state() == "active"
    finally:
        await a.close()
        await b.close()


# --- channels ------------------------------------------------------------------------------


async def test_channel_buttons_act_at_once_and_show_the_new_state(
    running: World, user: ConsoleUser
) -> None:
    assert running.bridge is not None
    await signed_in(user)
    _, text, _ = await user.get("/admin/ui/channels")
    assert "Support service" in text and "badge state-active" in text
    status, _, _ = await user.post("/admin/ui/channels/acme/disconnect")
    assert status == 303
    _, text, _ = await user.get("/admin/ui/channels")
    assert "badge state-disconnected" in text
    assert "acme: disconnect done; the channel is disconnected." in text
    assert "disconnected by an admin" in text
    assert running.messenger.count("disconnect") == 1
    status, _, _ = await user.post("/admin/ui/channels/acme/reconnect")
    _, text, _ = await user.get("/admin/ui/channels")
    assert "badge state-active" in text and "the channel is active" in text
    status, text, _ = await user.post("/admin/ui/channels/nope/connect")
    assert status == 404 and "No messenger channel" in text


# --- sessions and escaping -----------------------------------------------------------------


async def test_a_session_page_shows_the_conversation_both_ways(
    running: World, user: ConsoleUser
) -> None:
    m, cv = running.messenger, running.chatvisor
    assert (await m.send_message(running.http, "c1", "hello from the user", user_id="u1"))[0] == 200
    customer = await running.customer_id("c1")
    assert (await cv.agent_reply(running.http, customer, "hello from Olga"))[0] == 200
    await eventually(lambda: m.chat_log["c1"], what="reply delivered")
    session_id = await session_id_of(running, "c1")
    await signed_in(user)

    _, text, _ = await user.get(
        "/admin/ui/sessions?messenger=acme&chat_id=c1&user_id=u1&status=open"
    )
    assert f'href="/admin/ui/sessions/{session_id}"' in text
    for query in ("chat_id=c2", "user_id=u2", "status=closed"):
        _, text, _ = await user.get(f"/admin/ui/sessions?{query}")
        assert f'href="/admin/ui/sessions/{session_id}"' not in text, query
    _, text, _ = await user.get("/admin/ui/sessions?messenger=nope")
    assert "No messenger channel with this id." in text

    async def delivered() -> bool:
        _, page, _ = await user.get(f"/admin/ui/sessions/{session_id}")
        return page.count("badge msg-delivered") == 2

    await eventually(delivered, what="both messages delivered on the page")
    _, text, _ = await user.get(f"/admin/ui/sessions/{session_id}")
    assert "hello from the user" in text and "hello from Olga" in text
    assert 'class="message from-user"' in text and 'class="message from-operator"' in text
    assert text.index("hello from the user") < text.index("hello from Olga")
    status, text, _ = await user.get("/admin/ui/sessions/99999999999999999999999")
    assert status == 404 and "No session with this id." in text


async def test_a_held_message_shows_its_attempts_and_last_error(
    running: World, user: ConsoleUser
) -> None:
    running.chatvisor.fail_with = 503
    await running.messenger.send_message(running.http, "c9", "stuck for now")
    session_id = await session_id_of(running, "c9")
    await signed_in(user)

    async def retried() -> str | None:
        _, page, _ = await user.get(f"/admin/ui/sessions/{session_id}")
        return page if "pending after 2 attempts" in page or "pending after 3" in page else None

    text = await eventually(retried, what="attempts shown")
    assert "Last error:" in text and "badge msg-pending" in text


async def test_stored_markup_is_shown_as_text(running: World, user: ConsoleUser) -> None:
    m = running.messenger
    await m.send_message(running.http, "x1", XSS, user_id='"><script>alert(3)</script>')
    customer = await running.customer_id("x1")
    await running.chatvisor.agent_reply(
        running.http, customer, XSS, agent=("a<b>", "<script>alert(4)</script>")
    )
    await running.chatvisor.hook(
        running.http, {"event": "unknown.<script>alert(5)</script>", "data": {"x": XSS}}
    )
    session_id = await session_id_of(running, "x1")
    await eventually(lambda: m.chat_log["x1"], what="reply delivered")
    await signed_in(user)
    for path in [f"/admin/ui/sessions/{session_id}", "/admin/ui/sessions", "/admin/ui/events"]:
        _, text, _ = await user.get(path)
        assert "<script>" not in text.replace("<script src", ""), path
        assert "<img src=x" not in text, path
        assert 'onerror="alert' not in text, path
    _, text, _ = await user.get(f"/admin/ui/sessions/{session_id}")
    assert str(escape(XSS)) in text  # the text itself, shown as text
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in text


async def test_no_secret_reaches_a_page(running: World, user: ConsoleUser) -> None:
    m = running.messenger
    # A user who pastes a secret into a message: the page shows it redacted.
    await m.send_message(running.http, "s1", f"my code is {CODE} and {API_TOKEN}")
    session_id = await session_id_of(running, "s1")
    await signed_in(user)
    secrets = [ADMIN_TOKEN, API_TOKEN, HOOK_TOKEN, CODE]
    for path in [*PAGES, f"/admin/ui/sessions/{session_id}", "/admin/login"]:
        _, text, _ = await user.get(path)
        leaked = [s for s in secrets if s in text]
        assert not leaked, (path, leaked)
    _, text, _ = await user.get(f"/admin/ui/sessions/{session_id}")
    assert "my code is [redacted] and [redacted]" in text


async def test_a_stored_javascript_url_is_not_a_link(running: World, user: ConsoleUser) -> None:
    await running.messenger.send_message(
        running.http,
        "f1",
        "see file",
        files=[{"name": "evil.txt", "url": "javascript:alert(1)", "size": 3}],
    )
    session_id = await session_id_of(running, "f1")
    await signed_in(user)
    _, text, _ = await user.get(f"/admin/ui/sessions/{session_id}")
    assert "evil.txt" in text
    assert "javascript:" not in text


# --- overview, outbox, events --------------------------------------------------------------


async def test_the_overview_counts_today_and_per_hour(running: World, user: ConsoleUser) -> None:
    m = running.messenger
    for i in range(3):
        await m.send_message(running.http, f"o{i}", f"message {i}")
    customer = await running.customer_id("o0")
    await running.chatvisor.agent_reply(running.http, customer, "answer")
    await eventually(lambda: m.chat_log["o0"], what="reply delivered")
    await signed_in(user)

    async def counted() -> str | None:
        _, page, _ = await user.get("/admin/")
        return page if "delivered (4)" in page else None

    text = await eventually(counted, what="four delivered in the chart")
    assert '<span class="value" id="in-today">3</span>' in text
    assert '<span class="value" id="out-today">1</span>' in text
    assert '<span class="value" id="not-active"><a href="/admin/ui/channels">0</a>' in text
    assert "<svg" in text and 'class="delivered"' in text
    assert "livechat" in text and " ms</td>" in text  # call times from the metrics
    await user.post("/admin/ui/channels/acme/disconnect")
    _, text, _ = await user.get("/admin/")
    assert '<span class="value" id="not-active"><a href="/admin/ui/channels">1</a>' in text
    assert "Channels not active" in text and "badge state-disconnected" in text


async def test_the_outbox_page_shows_dead_letters_with_their_last_error(
    world: World,
) -> None:
    # A live chat that refuses for good: the message's item is dead at once.
    world.chatvisor.fail_with = 400
    bridge = await world.start_bridge()
    user = ConsoleUser(bridge.url)
    try:
        await world.messenger.send_message(world.http, "d1", "refused")
        await eventually(lambda: stored.outbox_items(bridge.store, "dead"), what="dead")
        await signed_in(user)
        _, text, _ = await user.get("/admin/ui/outbox")
        assert '<span class="value" id="dead">1</span>' in text
        assert "livechat.message" in text and "400" in text
        _, text, _ = await user.get("/admin/")
        assert '<span class="value" id="dead"><a href="/admin/ui/outbox">1</a>' in text
    finally:
        await user.close()


async def test_the_events_page_filters(running: World, user: ConsoleUser) -> None:
    cv = running.chatvisor
    await cv.hook(running.http, {"event": "visitor.typing", "data": {"n": 1}})
    await cv.hook(running.http, {"event": "agent.away", "data": {"n": 2}})
    await signed_in(user)
    _, text, _ = await user.get("/admin/ui/events")
    assert "visitor.typing" in text and "agent.away" in text
    _, text, _ = await user.get("/admin/ui/events?event=agent.away&livechat=support")
    assert "agent.away</td>" in text and "visitor.typing</td>" not in text
    _, text, _ = await user.get("/admin/ui/events?unlinked=1")
    assert "badge unlinked" in text
    _, text, _ = await user.get("/admin/ui/events?livechat=nope")
    assert "No live chat with this id." in text


async def test_retry_a_dead_letter_and_see_it_delivered(world: World) -> None:
    world.chatvisor.fail_with = 400
    bridge = await world.start_bridge()
    user = ConsoleUser(bridge.url)
    try:
        await world.messenger.send_message(world.http, "r1", "second time lucky")
        rows = await eventually(lambda: stored.outbox_items(bridge.store, "dead"), what="dead")
        world.chatvisor.fail_with = None
        await signed_in(user)
        status, _, _ = await user.post(f"/admin/ui/outbox/{rows[0]['id']}/retry")
        assert status == 303
        await eventually(lambda: "second time lucky" in world.chatvisor.all_texts(), what="sent")
        _, text, _ = await user.get("/admin/ui/outbox")
        assert '<span class="value" id="dead">0</span>' in text
    finally:
        await user.close()


async def test_an_unlinked_event_is_linked_from_the_events_page(world: World, jivo: Jivo) -> None:
    bridge = await world.start_bridge(config=jivo.config())
    jivo.sim.hook_url = f"{bridge.url}/livechats/sales/webhook/{HOOK}"
    await jivo.user_says("l1", "hello", user_id="anon")
    ((session_id, *_),) = await jivo.sessions("l1")
    accepted = copy.deepcopy(seed("chat_accepted"))
    accepted.pop("user_token", None)
    accepted["chat_id"], accepted["visitor"] = 4242, {"name": "Someone"}
    assert (await jivo.sim.event(jivo.http, accepted))[0] == 200
    (event_id,) = (e["id"] for e in await stored.event_list(bridge.store))
    user = ConsoleUser(bridge.url)
    try:
        await signed_in(user)
        _, text, _ = await user.get("/admin/ui/events?unlinked=1")
        assert f'action="/admin/ui/events/{event_id}/link"' in text
        status, _, _ = await user.post(
            f"/admin/ui/events/{event_id}/link", {"session_id": str(session_id)}
        )
        assert status == 303
        _, text, _ = await user.get("/admin/ui/events?unlinked=1")
        assert "No event matches." in text
        status, body, _ = await user.post(
            f"/admin/ui/events/{event_id + 100}/link", {"session_id": str(session_id)}
        )
        assert status == 404 and "no event with this id" in body.lower()
    finally:
        await user.close()
    ((_, state, remote, *_),) = await jivo.sessions("l1")
    assert (state, remote) == ("open", "4242")
