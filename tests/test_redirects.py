"""No outside call follows a redirect (issue 9, point 2): a 3xx is a failed call, retried with
back-off, never delivered, logged with the `Location`'s host only.

Each party that answers 3xx points its `Location` at a trap: another loopback server that
counts what reaches it and answers 200 as the real party would, so a followed redirect would
look delivered. The trap must get nothing; once the party answers 200, the item is delivered
once.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog
from aiohttp import web

from bridge.core.model import Retry
from bridge.logs import configure_logging
from bridge.settings import LoggingSettings
from connectors import http as outside
from tests import stored
from tests.conftest import (
    SUBSCRIPTION_SECRETS,
    Jivo,
    World,
    eventually,
    free_port,
    make_config,
    seed,
)
from tests.procs import BridgeProcess, toml
from tests.sim.server import SimServer
from tests.sim.subscriber import SubscriberSim

# What a Location's path and query could carry: never to be logged.
SECRET_PATH = "/moved/secret-path-Zq81?token=trap-token-5521"


class Trap:
    """Where the redirects point: counts every request and answers 200 with a plausible
    body (a customer id, a message id), so that following the redirect would look like
    success."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self.server = SimServer(app)

    async def _any(self, request: web.Request) -> web.Response:
        self.hits.append((request.method, request.path))
        return web.json_response(
            {"customerId": "trap-customer", "id": "trap-id", "result": "ok", "username": "trap"}
        )

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def location(self) -> str:
        return f"{self.server.url}{SECRET_PATH}"


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    t = Trap()
    await t.server.start()
    yield t
    await t.server.stop()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    """The serving process's log lines during the test, at debug."""
    buf = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging(LoggingSettings(level="debug", format="json"), (), stream=buf)
    try:
        yield buf
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)


def assert_logged_host_only(text: str, trap: Trap, *request_urls: str) -> None:
    """The redirect is in the log by its Location's host; never its path, nor any URL the
    bridge called."""
    assert f"redirect to {trap.host} not followed" in text
    assert "secret-path-Zq81" not in text and "trap-token-5521" not in text
    for url in request_urls:
        assert url not in text, url


async def last_errors(world: World) -> list[str]:
    assert world.bridge is not None
    items = await stored.outbox_items(world.bridge.store)
    return [i["last_error"] for i in items if i["last_error"] is not None]


async def redirected(world: World, trap: Trap, times: int = 3) -> None:
    """Until an item has failed `times` times on a redirect to the trap."""
    assert world.bridge is not None
    pattern = re.compile(rf"HTTP 3\d\d: redirect to {re.escape(trap.host)} not followed")

    async def seen() -> bool:
        assert world.bridge is not None
        items = await stored.outbox_items(world.bridge.store)
        return any(
            i["attempts"] >= times and pattern.fullmatch(i["last_error"] or "") for i in items
        )

    await eventually(seen, what=f"{times} attempts answered with a redirect")


# --- the live chat --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [302, 307])
async def test_chatvisor_redirect_is_retried_never_delivered(
    tmp_path: Path, trap: Trap, world: World, status: int
) -> None:
    """The real `serve` process (its delivery process too): a Chatvisor answering 3xx to the
    customer call, then to the message call, gets the message once it answers 200; the
    redirect target gets nothing and no outcome is sent before."""
    m, cv, http = world.messenger, world.chatvisor, world.http
    config = make_config(
        tmp_path,
        free_port(),
        world.messenger_server.url,
        world.chatvisor_server.url,
        logging={"level": "debug", "format": "json"},
        storage=world.storage,
    )
    bridge = BridgeProcess(config, tmp_path)
    try:
        await bridge.start(http)
        cv.hook_url = bridge.hook_url()

        async def active() -> bool:
            return (await bridge.channel(http))["state"] == "active"

        await eventually(active, what="channel active")

        async def item_failed(times: int) -> bool:
            body = await bridge.admin(http, "/admin/outbox?status=pending")
            return any(
                i["attempts"] >= times and "not followed" in (i["last_error"] or "")
                for i in body["items"]
            )

        cv.fail_with, cv.location = status, trap.location  # the customer call first
        assert (await m.send_message(http, "r1", "hello", message_id="r1-1"))[0] == 200
        await eventually(lambda: item_failed(3), what="three redirected attempts")
        assert trap.hits == [] and m.outcomes == {} and cv.all_texts() == []

        cv.fail_with = None
        await eventually(lambda: m.outcomes == {"r1-1": True}, what="delivered once answered")
        customer = cv.customer_by_key["acme:r1"]
        assert cv.texts(customer) == ["hello"]

        cv.fail_with = status  # now the message call, the customer being known
        assert (await m.send_message(http, "r1", "again", message_id="r1-2"))[0] == 200
        await eventually(lambda: item_failed(3), what="three redirected attempts")
        assert trap.hits == [] and "r1-2" not in m.outcomes
        cv.fail_with = None
        await eventually(lambda: m.outcomes.get("r1-2") is True, what="the second delivered")
        assert cv.texts(customer) == ["hello", "again"] and cv.duplicates == 0
        assert trap.hits == []
        listed = (await bridge.admin(http, "/admin/sessions"))["sessions"]
        ours = {s["customer_id"] for s in listed if s["external_chat_id"] == "r1"}
        assert ours == {customer}  # never the trap's
    finally:
        await bridge.stop_quietly()
    bridge.assert_clean_logs()
    text = bridge.log_text()
    assert f"HTTP {status}: redirect to {trap.host} not followed" in text
    assert_logged_host_only(text, trap, world.chatvisor_server.url, world.messenger_server.url)


async def test_jivochat_redirect_is_retried_never_delivered(
    world: World, jivo: Jivo, trap: Trap, logs: io.StringIO
) -> None:
    await jivo.start()
    jivo.sim.fail_with, jivo.sim.location = 307, trap.location
    await jivo.user_says("j1", "hi jivo", message_id="j1-1")
    await redirected(world, trap)
    assert trap.hits == [] and world.messenger.outcomes == {} and jivo.sim.client_messages == []
    jivo.sim.fail_with = None
    await eventually(lambda: world.messenger.outcomes == {"j1-1": True}, what="delivered")
    assert jivo.sim.texts("acme:j1") == ["hi jivo"] and jivo.sim.duplicates == 0
    assert trap.hits == []
    assert_logged_host_only(
        logs.getvalue(), trap, jivo.server.url + jivo.sim.path, world.messenger_server.url
    )


async def test_jivochat_status_probe_does_not_follow(world: World, jivo: Jivo, trap: Trap) -> None:
    await jivo.start()
    jivo.sim.status_fail_with, jivo.sim.location = 302, trap.location
    async with jivo.http.get(f"{world.bridge.url}/readyz") as r:  # type: ignore[union-attr]
        body = await r.json()
    assert r.status == 200
    sales = body["livechats"]["sales"]
    assert sales["agents_online"] is None
    assert sales["status_error"] == f"HTTP 302: redirect to {trap.host} not followed"
    assert jivo.sim.status_calls == 1 and trap.hits == []
    assert "secret-path" not in json.dumps(body)


# --- the messenger ----------------------------------------------------------------------------


async def test_messenger_connect_redirect_keeps_the_channel_inactive(
    world: World, trap: Trap, logs: io.StringIO
) -> None:
    m = world.messenger
    m.fail_types, m.location = {"connect": 307}, trap.location
    bridge = await world.start_bridge(wait_active=False)

    async def tried_three_times() -> bool:
        acme = await stored.channel_row(bridge.store)
        return acme.state == "interrupted" and "not followed" in (acme.last_error or "")

    await eventually(tried_three_times, what="connect refused by a redirect")
    await eventually(lambda: "connect failed" in logs.getvalue(), what="a logged failure")
    assert bridge.state() == "interrupted" and m.bridge_webhook is None
    assert trap.hits == []
    m.fail_types = {}
    await eventually(lambda: bridge.state() == "active", what="active once answered 200")
    assert m.bridge_webhook == f"{bridge.url}/messengers/acme/webhook" and trap.hits == []
    assert_logged_host_only(logs.getvalue(), trap, world.messenger_server.url)


async def test_messenger_message_and_outcome_redirects_are_retried(
    running: World, trap: Trap, logs: io.StringIO
) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    m.location = trap.location
    # An outcome answered with a redirect is not taken as sent.
    m.fail_types = {"messageOutcome": 302}
    assert (await m.send_message(http, "c1", "hello", message_id="c1-1"))[0] == 200
    await redirected(running, trap)
    assert m.outcomes == {} and trap.hits == []
    m.fail_types = {}
    await eventually(lambda: m.outcomes == {"c1-1": True}, what="the outcome once answered")

    # An operator's reply answered with a redirect is not delivered.
    customer = await running.customer_id("c1")
    m.fail_types = {"message": 307}
    assert (await cv.agent_reply(http, customer, "from the operator", message_id="a1"))[0] == 200
    await redirected(running, trap)
    assert m.messages == {} and trap.hits == []
    found = await stored.all_messages(running.bridge.store)  # type: ignore[union-attr]
    assert [m["status"] for m in found if m["text"] == "from the operator"] == ["pending"]
    m.fail_types = {}
    await eventually(lambda: m.chat_log["c1"] == ["from the operator"], what="the reply")
    assert m.duplicates == 0 and trap.hits == []
    assert_logged_host_only(logs.getvalue(), trap, running.messenger_server.url)


async def test_messenger_user_info_redirect_is_not_followed(running: World, trap: Trap) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    m.profiles["user-u1"] = {"username": "Alice"}
    m.fail_types, m.location = {"userInfo": 302}, trap.location
    assert (await m.send_message(http, "u1", "who am I", message_id="u1-1"))[0] == 200
    customer = await running.customer_id("u1")
    assert m.refused == ["userInfo"]
    # The message goes without a profile (a profile never blocks it); the trap's is not used.
    assert cv.customers[customer]["firstname"] == "user-u1"
    assert trap.hits == []


# --- subscribers ------------------------------------------------------------------------------


async def test_subscriber_redirect_is_retried_never_delivered(
    world: World, jivo: Jivo, trap: Trap, logs: io.StringIO
) -> None:
    sub = SubscriberSim()
    server = SimServer(sub.app)
    await server.start()
    try:
        url = f"{server.url}/events"
        await jivo.start(
            subscriptions=[{"url": url, "secret": SUBSCRIPTION_SECRETS[0], "events": "*"}]
        )
        sub.fail_with, sub.location = 308, trap.location
        assert (await jivo.sim.event(jivo.http, seed("chat_accepted")))[0] == 200
        await eventually(lambda: len(sub.refused_ids) >= 3, what="three redirected attempts")
        assert sub.events == [] and trap.hits == []
        assert len(set(sub.refused_ids)) == 1  # the same webhook-id on every attempt
        sub.fail_with = None
        await eventually(lambda: len(sub.events) == 1, what="delivered once answered")
        assert sub.deliveries[0][0]["webhook-id"] == sub.refused_ids[0]
        assert trap.hits == []
        assert_logged_host_only(logs.getvalue(), trap, url)
    finally:
        await server.stop()


# --- the CLI ---------------------------------------------------------------------------------


async def test_cli_does_not_follow_a_redirect(tmp_path: Path, trap: Trap) -> None:
    """The channel commands talk to the admin API with the admin token: an answer pointing
    elsewhere must not take the token (or the action) there."""
    front = web.Application()

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(trap.location)

    front.router.add_route("*", "/{tail:.*}", moved)
    server = SimServer(front)
    await server.start()
    try:
        config = make_config(tmp_path, free_port(), "http://127.0.0.1:9", "http://127.0.0.1:9")
        path = tmp_path / "config.toml"
        path.write_text(toml(config))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge",
            "--config",
            str(path),
            "reconnect",
            "acme",
            "--url",
            server.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
    finally:
        await server.stop()
    assert proc.returncode == 1
    assert trap.hits == []
    assert f"redirect to {trap.host} not followed" in err.decode()
    assert "secret-path" not in err.decode() + out.decode()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_our_client_cannot_follow_a_redirect(trap: Trap, status: int, method: str) -> None:
    """The client every outside call goes through is built unable to follow a redirect (a
    request cannot ask otherwise): whatever the status and method, the answer is the 3xx
    itself, read as a failed call, and nothing reaches the Location."""
    front = web.Application()

    async def moved(request: web.Request) -> web.Response:
        return web.Response(status=status, headers={"Location": trap.location})

    front.router.add_route(method, "/", moved)
    server = SimServer(front)
    await server.start()
    try:
        async with outside.Client(5, 5, limit=4) as client:
            body = {"a": 1} if method == "POST" else None
            answer = await outside.request(client, method, server.url + "/", body)
    finally:
        await server.stop()
    assert trap.hits == []
    assert isinstance(answer, outside.Response) and answer.status == status
    assert answer.location_host == trap.host
    assert outside.describe(answer) == f"HTTP {status}: redirect to {trap.host} not followed"
    assert isinstance(outside.classify(answer), Retry)


async def test_our_client_ignores_the_environments_proxy(
    trap: Trap, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy variable set for something else on the host must not reroute deliveries (the
    proxy would see every message): calls go straight to their URL."""
    front = web.Application()
    reached: list[str] = []

    async def party(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.json_response({"result": "ok"})

    front.router.add_post("/hook", party)
    server = SimServer(front)
    await server.start()
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, trap.server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    try:
        async with outside.Client(5, 5, limit=4) as client:
            answer = await outside.request(client, "POST", server.url + "/hook", {"a": 1})
    finally:
        await server.stop()
    assert trap.hits == []
    assert reached == ["/hook"]
    assert isinstance(answer, outside.Response) and answer.status == 200


async def test_an_answer_is_read_up_to_max_body_and_failures_never_quote_the_url() -> None:
    """A party answering a huge body costs at most `max_body` bytes of memory; a call that
    fails is described without its URL (a live chat's URL may carry a secret in its path)."""
    front = web.Application()

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 65536)
        return response

    front.router.add_post("/huge", huge)
    server = SimServer(front)
    await server.start()
    closed = free_port()  # nothing listens there
    try:
        async with outside.Client(5, 5, limit=4) as client:
            answer = await outside.request(client, "POST", server.url + "/huge", max_body=100_000)
            refused = await outside.request(
                client, "POST", f"http://127.0.0.1:{closed}/secret-path-Zq81?token=t", {"a": 1}
            )
            slow = await outside.request(
                client, "POST", server.url + "/huge", {"a": 1}, seconds=0.000001
            )
    finally:
        await server.stop()
    assert isinstance(answer, outside.Response) and len(answer.body) == 100_000
    assert refused == outside.NoResponse(f"cannot connect to 127.0.0.1:{closed}")
    assert slow == outside.NoResponse("timed out")
