"""Real loopback servers for every party: the messenger, the live chat and the bridge itself."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import pytest
import structlog
from aiohttp import web

from bridge.app import create_app
from bridge.keys import CHANNELS, DATABASE
from bridge.settings import Settings, settings_from_dict
from storage.pg_dsn import passwords as dsn_passwords
from storage.port import Store
from tests import stored
from tests.sim.chatvisor import ChatvisorSim
from tests.sim.jivochat import JivochatSim
from tests.sim.messenger import MessengerSim
from tests.sim.server import SimServer

# A real PostgreSQL server (pg_server) and a database per test (pg_dsn), or a clear skip.
pytest_plugins = ("tests.pg",)

ADMIN_TOKEN = "admin-secret-token-1234"
# delivery.worker of in-process bridges; TEST_DELIVERY_WORKER=process runs them all with the child.
IN_PROCESS_WORKER = os.environ.get("TEST_DELIVERY_WORKER", "inline")
API_TOKEN = "chatvisor-api-token-5678"
HOOK_TOKEN = "chatvisor-hook-token-9012"
CODE = "messenger-confirmation-code-3456"


# Every secret any test configures. The whole suite's bridge logs are checked for them.
SUBSCRIPTION_SECRETS = [
    "whsec_" + base64.b64encode(b"a" * 32).decode(),
    "whsec_" + base64.b64encode(b"b" * 24).decode(),
]
JIVO_URL_SECRET = "x7Kq2mPz9"  # the random part of the simulated Chat API URL
# The test PostgreSQL server's passwords, from the DSNs handed out (see `storage`).
DSN_SECRETS: set[str] = set()


# --- the storage backend ------------------------------------------------------------------
#
# Every test that asks for `backend` (through `world`, `running`, `jivo` or `storage`) runs
# once per backend: `[sqlite]` on a file in its tmp_path, `[postgres]` on a fresh database of
# its own on the session's PostgreSQL server (tests/pg.py), or skipped saying why that server
# cannot be had. A test about SQLite itself (its file, WAL, locks) is marked
# `@pytest.mark.sqlite_only("why")`: its PostgreSQL variant is skipped with that reason. A test
# whose own bridge does not use the world's database runs once: `@pytest.mark.backends("x")`.

BACKENDS = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): a test of SQLite itself; its [postgres] variant is skipped",
    )
    config.addinivalue_line(
        "markers", "backends(*names): the only backends the test runs on, no variant skipped"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    only = metafunc.definition.get_closest_marker("sqlite_only")
    chosen = metafunc.definition.get_closest_marker("backends")
    params = [
        pytest.param(
            name,
            marks=[pytest.mark.skip(reason=f"SQLite only: {only.args[0]}")]
            if only is not None and name != "sqlite"
            else [],
        )
        for name in BACKENDS
        if chosen is None or name in chosen.args
    ]
    metafunc.parametrize("backend", params)


@pytest.fixture
def storage(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The `[storage]` section of the test's bridges on its backend."""
    if backend == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")
        DSN_SECRETS.update(dsn_passwords(dsn))
        return {"backend": "postgres", "dsn": dsn, "pool_min": 1, "pool_max": 4}
    return {"path": str(tmp_path / "bridge.sqlite3")}


@pytest.fixture(scope="session")
def _suite_log() -> Iterator[TextIO]:
    """All bridge log lines of the run, rendered without the redactor: the code itself must not
    log a secret, whatever the safety net would have caught."""
    with tempfile.TemporaryFile("w+") as sink:
        yield sink
        sink.seek(0)
        text = sink.read()
    secrets = [
        ADMIN_TOKEN,
        API_TOKEN,
        HOOK_TOKEN,
        CODE,
        "jivo-hook-token-7777",
        JIVO_URL_SECRET,
        *SUBSCRIPTION_SECRETS,
        *DSN_SECRETS,
    ]
    leaked = [secret for secret in secrets if secret in text]
    assert not leaked, f"secrets found in the suite's logs: {len(leaked)} of {len(secrets)}"


@pytest.fixture(autouse=True)
def _log_to_suite_sink(_suite_log: TextIO) -> None:
    # Re-applied before each test: a test that configures logging of its own resets it after.
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=_suite_log),
        cache_logger_on_first_use=False,
    )


@contextlib.asynccontextmanager
async def database_locked(storage: dict[str, Any]) -> AsyncIterator[None]:
    """Another program holds the bridge's database locked against writes while in the block
    (reads go on): SQLite's `BEGIN EXCLUSIVE` on the file; PostgreSQL's `LOCK TABLE ... IN
    EXCLUSIVE MODE` on every table. A write of the bridge waits for it up to busy_timeout."""
    if storage.get("backend") == "postgres":
        import psycopg

        conn = await psycopg.AsyncConnection.connect(storage["dsn"])
        try:
            rows = await (
                await conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).fetchall()
            tables = ", ".join(f'"{name}"' for (name,) in rows)
            await conn.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
            yield
        finally:
            await conn.rollback()
            await conn.close()
        return
    locker = sqlite3.connect(
        storage["path"], timeout=5, isolation_level=None, check_same_thread=False
    )
    try:
        await asyncio.to_thread(locker.execute, "BEGIN EXCLUSIVE")
        yield
    finally:
        with contextlib.suppress(sqlite3.Error):
            locker.execute("ROLLBACK")
        locker.close()


def bound_socket(port: int = 0) -> socket.socket:
    """A socket bound on 127.0.0.1 (not yet listening): the port is ours until it is closed."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(
    check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Wait until `check()` (sync or async) is truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(interval)


class Bridge:
    """The real service, started in this process on its own port (as `serve` would)."""

    def __init__(self, settings: Settings, sock: socket.socket | None = None) -> None:
        self.settings = settings
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._sock = sock

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.server.port}"

    async def start(self) -> None:
        # The port is held from before start-up, whose outgoing calls (channel connects, the
        # delivery process's) could otherwise be given it as their own local port.
        sock = self._sock or bound_socket(self.settings.server.port)
        self._sock = None
        self.app = create_app(self.settings)
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        try:
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            raise

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def state(self, channel_id: str = "acme") -> str:
        assert self.app is not None
        return self.app[CHANNELS].state(channel_id)

    @property
    def store(self) -> Store:
        """The running bridge's store, for reads through the repositories (tests/stored.py)."""
        assert self.app is not None
        return self.app[DATABASE]

    def hook_url(self, livechat_id: str = "support", token: str = HOOK_TOKEN) -> str:
        return f"{self.url}/livechats/{livechat_id}/webhook/{token}"

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_config(
    tmp_path: Path, bridge_port: int, messenger_url: str, chatvisor_url: str, **over: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "server": {
            "port": bridge_port,
            "public_url": f"http://127.0.0.1:{bridge_port}",
            "max_body_bytes": 65536,
        },
        "storage": {"path": str(tmp_path / "bridge.sqlite3")},
        "admin": {"token": ADMIN_TOKEN},
        "delivery": {
            "retry_base": 0.02,
            "retry_cap": 0.2,
            "request_timeout": 2,
            "connect_timeout": 1,
            "failures_before_interrupted": 3,
        },
        "livechats": {
            "support": {
                "kind": "chatvisor",
                "api_url": f"{chatvisor_url}/rest/v1",
                "api_token": API_TOKEN,
                "hook_token": HOOK_TOKEN,
            }
        },
        "messengers": {
            "acme": {
                "name": "Support service",
                "livechat": "support",
                "webhook": f"{messenger_url}/hook",
                "confirmation_code": CODE,
            }
        },
    }
    for section, values in over.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


class World:
    """Everything a test needs: the two simulators, the bridge, and an HTTP client."""

    def __init__(
        self, tmp_path: Path, http: aiohttp.ClientSession, storage: dict[str, Any] | None = None
    ) -> None:
        self.tmp_path = tmp_path
        self.http = http
        self.storage = storage or {"path": str(tmp_path / "bridge.sqlite3")}
        self.messenger = MessengerSim(CODE)
        self.chatvisor = ChatvisorSim(API_TOKEN)
        self.messenger_server = SimServer(self.messenger.app)
        self.chatvisor_server = SimServer(self.chatvisor.app)
        self._port_sock: socket.socket | None = bound_socket()
        self.bridge_port: int = self._port_sock.getsockname()[1]
        self.bridge: Bridge | None = None

    async def start_sims(self) -> None:
        await self.messenger_server.start()
        await self.chatvisor_server.start()

    def config(self, **over: Any) -> dict[str, Any]:
        # In-process bridges deliver inline unless a test asks for the delivery process: a
        # child per test costs about 0.6 s of CPU, half of `make test`. The delivery process
        # has tests of its own (test_delivery_process), and every real-process test (faults,
        # start-up, redirects, the CLI) runs the default, "process".
        delivery = {"worker": IN_PROCESS_WORKER, **over.pop("delivery", {})}
        return make_config(
            self.tmp_path,
            self.bridge_port,
            self.messenger_server.url,
            self.chatvisor_server.url,
            delivery=delivery,
            storage={**self.storage, **over.pop("storage", {})},
            **over,
        )

    async def start_bridge(
        self, *, wait_active: bool = True, config: dict[str, Any] | None = None, **over: Any
    ) -> Bridge:
        settings = settings_from_dict(config or self.config(**over))
        sock, self._port_sock = self._port_sock, None
        if sock is not None and settings.server.port != self.bridge_port:
            sock.close()
            sock = None
        bridge = Bridge(settings, sock)
        await bridge.start()
        self.bridge = bridge
        self.chatvisor.hook_url = bridge.hook_url()
        if wait_active:
            await eventually(lambda: bridge.state() == "active", what="channel active")
        return bridge

    async def stop(self) -> None:
        if self._port_sock is not None:
            self._port_sock.close()
        if self.bridge is not None:
            await self.bridge.stop()
        await self.messenger_server.stop()
        await self.chatvisor_server.stop()

    async def customer_id(self, chat_id: str, channel_id: str = "acme") -> str:
        key = f"{channel_id}:{chat_id}"
        result: str = await eventually(
            lambda: self.chatvisor.customer_by_key.get(key), what=f"customer {key}"
        )
        if self.bridge is not None:
            # ...and until the bridge stored it: a status hook sent before that finds no chat.

            async def linked() -> bool:
                assert self.bridge is not None
                row = await stored.chat(self.bridge.store, chat_id, channel_id)
                return row is not None and row.customer_id == result

            await eventually(linked, what=f"customer {key} stored by the bridge")
        return result


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def world(
    tmp_path: Path, http: aiohttp.ClientSession, storage: dict[str, Any]
) -> AsyncIterator[World]:
    w = World(tmp_path, http, storage)
    await w.start_sims()
    yield w
    await w.stop()


@pytest.fixture
async def running(world: World) -> World:
    """A world whose bridge is up and whose channel is active."""
    await world.start_bridge()
    return world


# --- JivoChat -----------------------------------------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "jivochat"
HOOK = "jivo-hook-token-7777"
EVENTS = [
    "call_event",
    "chat_accepted",
    "chat_assigned",
    "chat_finished",
    "chat_updated",
    "offline_message",
]


def seed(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FIXTURES / f"{name}.request.json").read_text())
    return doc


class Jivo:
    def __init__(self, world: World, sim: JivochatSim, server: SimServer) -> None:
        self.world, self.sim, self.server = world, sim, server

    @property
    def http(self) -> Any:
        return self.world.http

    def config(self, **over: Any) -> dict[str, Any]:
        base = self.world.config()
        acme = {**base["messengers"]["acme"], "livechat": "sales"}
        sales = {
            "kind": "jivochat",
            "chat_api_url": self.server.url + self.sim.path,
            "hook_token": HOOK,
        }
        return self.world.config(livechats={"sales": sales}, messengers={"acme": acme}, **over)

    async def start(self, **over: Any) -> None:
        bridge = await self.world.start_bridge(config=self.config(**over))
        self.sim.hook_url = f"{bridge.url}/livechats/sales/webhook/{HOOK}"

    async def user_says(self, chat: str, text: str, **kw: Any) -> None:
        status, _ = await self.world.messenger.send_message(self.http, chat, text, **kw)
        assert status == 200

    async def sessions(self, chat: str) -> list[tuple[Any, ...]]:
        """(id, status, remote chat id, agent name, CRM link, transcript) of the chat's
        sessions, oldest first."""
        assert self.world.bridge is not None
        keys = ("id", "status", "remote_chat_id", "agent_name", "crm_link", "transcript")
        found = await stored.sessions(self.world.bridge.store, chat)
        return [tuple(s[k] for k in keys) for s in found]


@pytest.fixture
async def jivo(world: World) -> AsyncIterator[Jivo]:
    sim = JivochatSim()
    server = SimServer(sim.app)
    await server.start()
    j = Jivo(world, sim, server)
    yield j
    if world.bridge is not None:
        await world.bridge.stop()
        world.bridge = None
    await server.stop()
