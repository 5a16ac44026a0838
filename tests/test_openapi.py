"""`/openapi.json` stays true: a valid document, the same operations as the app's routes, and a
real bridge that answers a fuzzer only as the document says (no 5xx, no traceback)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import structlog
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bridge.app import create_app
from bridge.logs import configure_logging
from bridge.settings import LoggingSettings, settings_from_dict
from bridge.web.openapi import SPEC
from tests.conftest import (
    ADMIN_TOKEN,
    API_TOKEN,
    CODE,
    HOOK,
    HOOK_TOKEN,
    JIVO_URL_SECRET,
    SUBSCRIPTION_SECRETS,
    World,
    eventually,
)
from tests.sim.jivochat import JivochatSim
from tests.sim.messenger import MessengerSim
from tests.sim.server import SimServer
from tests.sim.subscriber import SubscriberSim

HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


def test_the_document_is_valid_openapi() -> None:
    validate(SPEC)
    assert SPEC["openapi"].startswith("3.1")


def _spec_path(canonical: str) -> str:
    # aiohttp's canonical form may keep a parameter's pattern: {session_id:[0-9]+}
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", canonical)


def test_every_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    config = {"storage": {"path": str(tmp_path / "b.sqlite3")}, "admin": {"token": ADMIN_TOKEN}}
    app = create_app(settings_from_dict(config))
    served = set()
    for route in app.router.routes():
        if route.method == "HEAD":  # aiohttp adds one beside each GET
            continue
        if (route.name or "").startswith("console."):  # HTML for browsers, not this API
            continue
        assert route.resource is not None
        served.add((route.method.lower(), _spec_path(route.resource.canonical)))
    documented = {
        (method, path)
        for path, item in SPEC["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert served == documented, (
        f"served, not documented: {sorted(served - documented)};"
        f" documented, not served: {sorted(documented - served)}"
    )


def test_every_path_parameter_is_declared() -> None:
    for path, item in SPEC["paths"].items():
        in_path = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == in_path, f"{method.upper()} {path}"


async def test_openapi_json_is_served(running: World) -> None:
    assert running.bridge is not None
    async with running.http.get(f"{running.bridge.url}/openapi.json") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        assert await r.json() == json.loads(json.dumps(SPEC))


# --- the fuzz run ---------------------------------------------------------------------------

# `make test` runs a short fuzz (FUZZ_REQUESTS unset: 1,000 requests); `make fuzz`, which CI also
# runs, sets 10,000. The short run keeps `make test` within minutes on 2 cores.
TARGET_REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "1000"))
WORKERS = 2  # fuzzer processes: generating a case costs far more than answering it
CHANNELS = ("acme", "beta")
LIVECHATS = {"support": HOOK_TOKEN, "sales": HOOK}
CHATS = tuple(f"chat-{i}" for i in range(4))
USERS = tuple(f"user-{i}" for i in range(4))
SECRETS = (ADMIN_TOKEN, API_TOKEN, HOOK_TOKEN, CODE, HOOK, JIVO_URL_SECRET, SUBSCRIPTION_SECRETS[0])
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

# How often each operation is drawn: the parsers behind the two webhooks get the most.
# schemathesis leaves out the document's own URL; test_openapi_json_is_served covers it.
WEIGHTS = {
    ("POST", "/messengers/{channel_id}/webhook"): 32,
    ("POST", "/livechats/{livechat_id}/webhook/{hook_token}"): 32,
    ("POST", "/admin/messengers/{channel_id}/{action}"): 4,
    ("GET", "/admin/channels"): 4,
    ("GET", "/admin/sessions"): 5,
    ("GET", "/admin/sessions/{session_id}"): 5,
    ("GET", "/admin/outbox"): 4,
    ("POST", "/admin/outbox/{item_id}/{action}"): 3,
    ("POST", "/admin/outbox/{action}"): 3,
    ("GET", "/admin/events"): 5,
    ("POST", "/admin/events/{event_id}/link"): 3,
    ("GET", "/c/{key}"): 1,
    ("GET", "/healthz"): 2,
    ("GET", "/readyz"): 3,
    ("GET", "/metrics"): 2,
}


@dataclass
class Report:
    requests: int = 0
    answers: Counter[tuple[str, int, str]] = field(default_factory=Counter)  # op, status, errcode
    failures: list[str] = field(default_factory=list)
    failure_kinds: Counter[str] = field(default_factory=Counter)

    def answered(self, op: str, response: Any) -> None:
        self.requests += 1
        errcode = ""
        if response.status_code >= 400:
            try:
                errcode = str(response.json().get("errcode"))
            except (ValueError, AttributeError):
                errcode = "(no JSON object)"
        self.answers[(op, response.status_code, errcode)] += 1

    def fail(self, kind: str, detail: str) -> None:
        self.failure_kinds[kind] += 1
        if self.failure_kinds[kind] <= 3:  # enough of each kind to reproduce it
            self.failures.append(f"{kind}: {detail}")

    @staticmethod
    def merge(parts: list[Report]) -> Report:
        total = Report()
        for part in parts:
            total.requests += part.requests
            total.answers.update(part.answers)
            total.failures.extend(part.failures)
            total.failure_kinds.update(part.failure_kinds)
        return total

    def summary(self) -> str:
        return "\n".join(
            f"{n:6d}  {op} -> {status} {errcode}".rstrip()
            for (op, status, errcode), n in sorted(self.answers.items())
        )


def _often(draw: Callable[..., Any]) -> bool:
    return bool(draw(st.integers(0, 9)) < 7)


def _credentials(case: Any, draw: Callable[..., Any], customer_ids: list[str]) -> None:
    """Most of the time, give a drawn case the real token and ids the bridge knows, so that
    it gets past the 401s and 404s into the parsers and the relay."""
    path, params = case.operation.path, case.path_parameters or {}
    body = case.body if isinstance(case.body, dict) else None
    if path.startswith("/admin/"):
        if _often(draw):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {ADMIN_TOKEN}"}
        if "channel_id" in params and _often(draw):
            params["channel_id"] = draw(st.sampled_from(CHANNELS))
        if "session_id" in params and _often(draw):
            params["session_id"] = draw(st.integers(1, 12))
        if "item_id" in params and _often(draw):
            params["item_id"] = draw(st.integers(1, 40))
        if "event_id" in params and _often(draw):
            params["event_id"] = draw(st.integers(1, 40))
        if body is not None and "session_id" in body and _often(draw):
            body["session_id"] = draw(st.integers(1, 12))
        query = case.query or {}
        if "channel" in query and _often(draw):
            query["channel"] = draw(st.sampled_from(CHANNELS))
        if "messenger" in query and _often(draw):
            query["messenger"] = draw(st.sampled_from(CHANNELS))
        if "livechat" in query and _often(draw):
            query["livechat"] = draw(st.sampled_from(sorted(LIVECHATS)))
    elif path.startswith("/messengers/"):
        if _often(draw):
            params["channel_id"] = draw(st.sampled_from(CHANNELS))
        if body is not None and _often(draw):
            body["token"] = CODE
            data = body.get("data")
            if isinstance(data, dict) and _often(draw):
                for key, pool in (
                    ("externalMessageId", [f"m-{i}" for i in range(100)]),  # duplicates too
                    ("externalChatId", CHATS),
                    ("externalUserId", USERS),
                    ("userId", USERS),
                ):
                    if key in data:
                        data[key] = draw(st.sampled_from(pool))
    elif path.startswith("/livechats/"):
        if _often(draw):
            livechat = draw(st.sampled_from(sorted(LIVECHATS)))
            params["livechat_id"] = livechat
            params["hook_token"] = LIVECHATS[livechat] if _often(draw) else "wrong-token"
        if body is not None and _often(draw):
            client_keys = [f"{c}:{chat}" for c in CHANNELS for chat in CHATS]
            if "customerId" in body:
                body["customerId"] = draw(st.sampled_from(customer_ids))
            conversation = body.get("conversation")
            if isinstance(conversation, dict) and "customerId" in conversation:
                conversation["customerId"] = draw(st.sampled_from(customer_ids))
            recipient = body.get("recipient")
            if isinstance(recipient, dict):
                recipient["id"] = draw(st.sampled_from(client_keys))
            if "event_name" in body:
                body["user_token"] = draw(st.sampled_from(client_keys))


def _fuzz(base_url: str, customer_ids: list[str], target: int) -> Report:
    """One fuzzer process: `target` requests at least, drawn across every operation."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = {}
    for result in schema.get_all_operations():
        op = result.ok()
        operations[(op.method.upper(), op.path)] = op
    assert set(operations) == set(WEIGHTS)

    def strategy(op: Any) -> st.SearchStrategy[Any]:
        positive = op.as_strategy(schemathesis.GenerationMode.POSITIVE)
        if not op.body and not any(True for _ in op.iter_parameters()):
            return positive  # nothing to get wrong
        return st.one_of(positive, positive, op.as_strategy(schemathesis.GenerationMode.NEGATIVE))

    strategies = {key: strategy(op) for key, op in operations.items()}
    keys = [key for key, weight in WEIGHTS.items() for _ in range(weight)]
    report = Report()
    session = requests.Session()

    # Failures are collected, never raised: Hypothesis only draws, it does not shrink.
    @settings(
        max_examples=500,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one_request(data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(keys))
        case = data.draw(strategies[key])
        _credentials(case, data.draw, customer_ids)
        try:
            response = case.call(base_url=base_url, session=session, timeout=15)
        except requests.RequestException as exc:
            report.fail("no answer", f"{exc!r}\n{case.as_curl_command()}")
            return
        report.answered(f"{key[0]} {key[1]}", response)
        try:
            case.validate_response(response, checks=CHECKS)
        except (Exception, schemathesis.errors.FailureGroup) as exc:  # a group is no Exception
            kind = f"{key[0]} {key[1]} -> {response.status_code} {type(exc).__name__}"
            report.fail(kind, f"{exc}\n{response.text[:1000]}")

    while report.requests < target:
        one_request()
    return report


async def _fuzz_in_processes(base_url: str, customer_ids: list[str]) -> Report:
    loop = asyncio.get_running_loop()
    pool = ProcessPoolExecutor(max_workers=WORKERS, mp_context=multiprocessing.get_context("spawn"))
    try:
        # Every worker is waited for, even after one failed: one still sending needs this
        # event loop, which serves the bridge, to answer.
        parts = await asyncio.gather(
            *(
                loop.run_in_executor(
                    pool, _fuzz, base_url, customer_ids, TARGET_REQUESTS // WORKERS
                )
                for _ in range(WORKERS)
            ),
            return_exceptions=True,
        )
    finally:
        await asyncio.to_thread(pool.shutdown)
    for part in parts:
        if isinstance(part, BaseException):
            raise part
    return Report.merge([part for part in parts if isinstance(part, Report)])


def _fuzz_config(world: World, beta: str, jivo: str, subscriber: str) -> dict[str, Any]:
    """Both live-chat kinds, a messenger on each, and a subscriber to every event."""
    config = world.config()
    config["livechats"]["sales"] = {"kind": "jivochat", "chat_api_url": jivo, "hook_token": HOOK}
    config["messengers"]["beta"] = {
        "name": "Beta",
        "livechat": "sales",
        "webhook": f"{beta}/hook",
        "confirmation_code": CODE,
    }
    config["subscriptions"] = [
        {"url": f"{subscriber}/events", "secret": SUBSCRIPTION_SECRETS[0], "events": "*"}
    ]
    return config


@pytest.mark.timeout(600)
async def test_fuzz_a_real_bridge_against_the_document(world: World) -> None:
    beta, jivo = MessengerSim(CODE), JivochatSim()
    servers = [SimServer(beta.app), SimServer(jivo.app), SimServer(SubscriberSim().app)]
    for server in servers:
        await server.start()
    beta_url, jivo_url, subscriber_url = (server.url for server in servers)
    config = _fuzz_config(world, beta_url, jivo_url + jivo.path, subscriber_url)

    # The bridge's own log lines (structlog) and those of the libraries (stdlib logging),
    # rendered without the redactor: the run must log no traceback and no secret.
    logs = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(LoggingSettings(level="info", format="json"), stream=logs)
    started = time.monotonic()
    try:
        bridge = await world.start_bridge(config=config)
        await eventually(lambda: bridge.state("beta") == "active", what="beta active")
        for index, (chat, user) in enumerate(zip(CHATS, USERS, strict=True)):
            world.messenger.profiles[user] = {"username": f"User {index}", "phoneNumber": None}
            for sim in (world.messenger, beta):
                status, _ = await sim.send_message(world.http, chat, "hello", user_id=user)
                assert status == 200
        customer_ids = [await world.customer_id(chat) for chat in CHATS]
        report = await _fuzz_in_processes(bridge.url, customer_ids)
        await bridge.stop()  # its shutdown is logged here too
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = saved_handlers, saved_level
        for server in servers:
            await server.stop()
    elapsed = time.monotonic() - started

    print(f"\n{report.requests} requests in {elapsed:.0f} s\n{report.summary()}")
    assert report.requests >= TARGET_REQUESTS
    assert not report.failures, f"{report.failure_kinds}\n\n" + "\n\n".join(report.failures)
    assert not any(status >= 500 for _, status, _ in report.answers), report.summary()
    text = logs.getvalue()
    tracebacks = [
        line for line in text.splitlines() if "Traceback" in line or '"exception"' in line
    ]
    assert not tracebacks, "\n".join(tracebacks[:5])
    assert not [secret for secret in SECRETS if secret in text], "a secret was logged"
