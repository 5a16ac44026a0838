"""The admin console in a real browser: the OS's chromium, driven by Playwright's async API
(its sync API cannot run inside pytest-asyncio's loop), against a real bridge and the simulators.

No browser is downloaded: Playwright launches the OS's chromium (`$BRIDGE_CHROMIUM`, else
`chromium` on the PATH; on Debian `apt-get install chromium`). Without it, or without
Playwright, these tests skip and say why.

Screenshots: `CONSOLE_SCREENSHOTS=docs/screenshots pytest tests/test_console_browser.py -k
screenshots` writes one PNG per page there (otherwise into the test's temporary directory).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests import stored
from tests.conftest import ADMIN_TOKEN, World, eventually

# What the browser does with the pages; the pages' data on PostgreSQL: test_console [postgres].
pytestmark = pytest.mark.backends("sqlite")

CHROMIUM = os.environ.get("BRIDGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
XSS = '<script>window.pwned = 1; alert("x")</script><img src=x onerror="window.pwned = 2">'


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import Error, async_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install -e '.[dev]')")
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium, or set BRIDGE_CHROMIUM)")
    async with async_playwright() as p:
        try:
            launched = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Error as exc:
            pytest.skip(f"chromium at {CHROMIUM} would not start: {exc.message.splitlines()[0]}")
        yield launched
        await launched.close()


async def new_page(browser: Any) -> tuple[Any, Any, list[str]]:
    """A fresh context and page; the list collects any dialog (alert) the page opens."""
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    dialogs: list[str] = []

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", on_dialog)
    page.set_default_timeout(10_000)
    return context, page, dialogs


async def sign_in(page: Any, base: str, token: str = ADMIN_TOKEN) -> None:
    await page.goto(f"{base}/admin/")
    await page.fill("#token", token)
    await page.click("button[type=submit]")


async def test_sign_in_then_disconnect_and_reconnect(running: World, browser: Any) -> None:
    from playwright.async_api import expect

    assert running.bridge is not None
    base = running.bridge.url
    context, page, _ = await new_page(browser)

    await page.goto(f"{base}/admin/ui/channels")
    assert page.url == f"{base}/admin/login"  # signed out: sent to the sign-in page
    await sign_in(page, base, "not-the-token")
    await expect(page.locator(".error")).to_contain_text("Wrong admin token")
    assert not [c for c in await context.cookies() if c["name"] == "bridge_console"]

    await sign_in(page, base)
    await expect(page.locator("h1")).to_have_text("Overview")
    (cookie,) = [c for c in await context.cookies() if c["name"] == "bridge_console"]
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/admin" and cookie["expires"] > 0
    assert ADMIN_TOKEN not in cookie["value"]
    assert await page.evaluate("document.cookie") == ""  # out of scripts' reach

    await page.click("nav >> text=Channels")
    row = page.locator("#channel-acme")
    await expect(row.locator("td.state .badge")).to_have_text("active")
    await row.locator("button", has_text="Disconnect").click()
    await expect(row.locator("td.state .badge")).to_have_text("disconnected")
    await expect(page.locator(".flash")).to_contain_text("the channel is disconnected")
    assert running.bridge.state() == "disconnected"
    await row.locator("button", has_text="Reconnect").click()
    await expect(row.locator("td.state .badge")).to_have_text("active")
    assert running.bridge.state() == "active"

    await page.click("button:has-text('Sign out')")
    assert page.url == f"{base}/admin/login"
    await page.goto(f"{base}/admin/ui/channels")
    assert page.url == f"{base}/admin/login"
    await context.close()


async def test_open_a_session_and_read_its_messages_markup_as_text(
    running: World, browser: Any
) -> None:
    from playwright.async_api import expect

    assert running.bridge is not None
    m, cv = running.messenger, running.chatvisor
    await m.send_message(running.http, "b1", "Hello, is anyone there?", user_id="u-b1")
    await m.send_message(running.http, "b1", XSS, user_id="u-b1")
    customer = await running.customer_id("b1")
    await cv.agent_reply(running.http, customer, "Yes, Olga here. How can I help?")
    await eventually(lambda: m.chat_log["b1"], what="reply delivered")

    context, page, dialogs = await new_page(browser)
    await sign_in(page, running.bridge.url)
    await page.click("nav >> text=Sessions")
    await page.fill("input[name=chat_id]", "b1")
    await page.click("form.filters button")
    await page.locator("table.sessions tbody a").first.click()
    texts = page.locator(".conversation .message .text")
    await expect(texts).to_have_count(3)
    assert await texts.all_inner_texts() == [
        "Hello, is anyone there?",
        XSS,  # shown as the user wrote it
        "Yes, Olga here. How can I help?",
    ]
    await expect(page.locator(".message.from-operator .meta strong")).to_have_text("Olga Operator")
    assert await page.evaluate("window.pwned") is None  # neither script ran
    assert await page.locator(".conversation img").count() == 0
    assert dialogs == []
    await context.close()


async def test_retry_a_dead_letter_and_see_it_delivered(world: World, browser: Any) -> None:
    from playwright.async_api import expect

    world.chatvisor.fail_with = 400
    bridge = await world.start_bridge()
    assert bridge.app is not None
    await world.messenger.send_message(world.http, "r1", "second time lucky")
    await eventually(lambda: stored.outbox_items(bridge.store, "dead"), what="dead")
    world.chatvisor.fail_with = None
    context, page, _ = await new_page(browser)
    await sign_in(page, bridge.url)
    await page.click("nav >> text=Outbox")
    await page.locator("table.dead button", has_text="Retry").first.click()
    await expect(page.locator(".flash")).to_contain_text("queued again")
    await eventually(lambda: "second time lucky" in world.chatvisor.all_texts(), what="delivered")
    await page.goto(f"{bridge.url}/admin/ui/sessions?chat_id=r1")
    await page.locator("table.sessions tbody a").first.click()
    await expect(page.locator(".message .badge")).to_have_text("delivered")
    await context.close()


async def test_a_post_without_the_csrf_token_is_refused(running: World, browser: Any) -> None:
    assert running.bridge is not None
    context, page, _ = await new_page(browser)
    await sign_in(page, running.bridge.url)
    # The same browser, signed in, cookie and all; only the form's token is missing.
    answer = await context.request.post(
        f"{running.bridge.url}/admin/ui/channels/acme/disconnect", form={"do": "disconnect"}
    )
    assert answer.status == 403
    assert "expired" in await answer.text()
    assert running.bridge.state() == "active"
    await context.close()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out


async def test_screenshots_of_every_page(world: World, browser: Any, screenshots: Path) -> None:
    """Each page with some traffic on it, as a PNG (see the module's docstring)."""
    out = screenshots
    config = world.config()
    shop = {**config["messengers"]["acme"], "name": "Web shop", "webhook": "http://127.0.0.1:9/x"}
    config["messengers"]["shop"] = shop  # nothing listens there: the channel is interrupted
    bridge = await world.start_bridge(config=config)
    m, cv = world.messenger, world.chatvisor
    talk = [
        (
            "c-1001",
            "Anna",
            "Hi! My order #5521 hasn't arrived yet.",
            "Sorry to hear that, Anna. Let me check.",
        ),
        (
            "c-1002",
            "Boris",
            "Can I change the delivery address?",
            "Of course. What is the new address?",
        ),
        ("c-1003", "Clara", "Do you ship to Finland?", "Yes, within 3-5 working days."),
    ]
    for chat, name, question, answer in talk:
        m.profiles[f"u-{chat}"] = {
            "id": f"u-{chat}",
            "username": name,
            "phoneNumber": None,
            "avatar": None,
        }
        await m.send_message(world.http, chat, question, user_id=f"u-{chat}")
        customer = await world.customer_id(chat)
        await cv.agent_reply(world.http, customer, answer)
        await eventually(lambda chat=chat: m.chat_log[chat], what="reply delivered")  # type: ignore[misc]
    await m.send_message(
        world.http, "c-1001", "Thanks! <b>Tracking</b> says 'in transit'.", user_id="u-c-1001"
    )
    await eventually(lambda: len(cv.all_texts()) == 4, what="at the live chat")
    cv.fail_with = 400  # the live chat refuses this one for good: a dead letter
    await m.send_message(world.http, "c-1004", "Is the shop open on Sunday?", user_id="u-c-1004")
    await eventually(lambda: stored.outbox_items(bridge.store, "dead"), what="a dead letter")
    cv.fail_with = None
    await cv.hook(world.http, {"event": "visitor.rated", "data": {"rating": 5}})
    await cv.set_status(world.http, await world.customer_id("c-1003"), "closed")

    context, page, _ = await new_page(browser)
    await page.goto(f"{bridge.url}/admin/login")
    await page.screenshot(path=str(out / "console-login.png"))
    await sign_in(page, bridge.url)
    pages = [
        ("overview", "/admin/"),
        ("channels", "/admin/ui/channels"),
        ("sessions", "/admin/ui/sessions"),
        ("outbox", "/admin/ui/outbox"),
        ("events", "/admin/ui/events"),
    ]
    for name, path in pages:
        await page.goto(f"{bridge.url}{path}")
        await page.screenshot(path=str(out / f"console-{name}.png"), full_page=True)
    await page.goto(f"{bridge.url}/admin/ui/sessions?chat_id=c-1001")
    await page.locator("table.sessions tbody a").first.click()
    await page.screenshot(path=str(out / "console-session.png"), full_page=True)
    await context.close()
    for name in ["login", "session", *(n for n, _ in pages)]:
        assert (out / f"console-{name}.png").stat().st_size > 5000, name
