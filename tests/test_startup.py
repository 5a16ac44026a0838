"""Start-up and the messenger: a start that fails tells no messenger a URL (it fails before
`connect`), and a `public_url` changed since the last run is told to every active channel.
What the start and the stop log."""

from __future__ import annotations

import asyncio
import fcntl
import os
import socket
import sqlite3
from pathlib import Path

import pytest

from bridge.version import version
from tests.conftest import World, eventually, make_config
from tests.pg import PgServer
from tests.procs import BridgeProcess


def config_on(world: World, tmp_path: Path, port: int) -> dict[str, object]:
    return make_config(
        tmp_path,
        port,
        world.messenger_server.url,
        world.chatvisor_server.url,
        storage={**world.storage, "busy_timeout": 0.5},
    )


async def fails_to_start(bridge: BridgeProcess) -> str:
    """Runs `serve` until it exits; asserts exit code 1 and clean logs; the start's error."""
    run = await bridge.spawn()
    try:
        code = await asyncio.wait_for(run.proc.wait(), 60)
    finally:
        await bridge.stop_quietly()
    assert code == 1, run.text()
    bridge.assert_clean_logs()
    (line,) = bridge.events("bridge.cannot_start")
    assert line["level"] == "error"
    return str(line["error"])


async def test_a_port_in_use_fails_the_start_before_any_connect(
    world: World, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        error = await fails_to_start(BridgeProcess(config_on(world, tmp_path, port), tmp_path))
    assert world.messenger.attempts["connect"] == 0
    assert f"cannot listen on 127.0.0.1:{port}" in error and "in use" in error


@pytest.mark.sqlite_only("the one-process lock is SQLite's (fcntl on the file's .lock)")
async def test_a_database_in_use_fails_the_start_before_any_connect(
    world: World, tmp_path: Path
) -> None:
    config = config_on(world, tmp_path, world.bridge_port)
    bridge = BridgeProcess(config, tmp_path)
    fd = os.open(f"{bridge.db_path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another bridge process on the same file holds it
        error = await fails_to_start(bridge)
    finally:
        os.close(fd)
    assert "in use by another bridge process" in error
    assert world.messenger.attempts["connect"] == 0


@pytest.mark.sqlite_only("SQLite's file locking by another program")
async def test_a_locked_database_fails_the_start_cleanly_before_any_connect(
    world: World, tmp_path: Path
) -> None:
    config = config_on(world, tmp_path, world.bridge_port)
    bridge = BridgeProcess(config, tmp_path)
    other = sqlite3.connect(bridge.db_path, isolation_level=None)  # another program's lock
    try:
        other.execute("CREATE TABLE mine (x)")
        other.execute("BEGIN EXCLUSIVE")
        error = await fails_to_start(bridge)  # no traceback: assert_clean_logs
    finally:
        other.close()
    assert error == f"{bridge.db_path}: database is locked"
    assert world.messenger.attempts["connect"] == 0


@pytest.mark.backends("postgres")  # its bridge has a DSN of its own
async def test_a_postgres_refusing_the_password_fails_the_start_cleanly_before_any_connect(
    world: World, tmp_path: Path, pg_server: PgServer
) -> None:
    wrong = "Wr0ng-pa55word-at-start"
    config = make_config(
        tmp_path,
        world.bridge_port,
        world.messenger_server.url,
        world.chatvisor_server.url,
        storage={"backend": "postgres", "dsn": pg_server.dsn(password=wrong)},
    )
    bridge = BridgeProcess(config, tmp_path)
    error = await fails_to_start(bridge)  # no traceback, no password: assert_clean_logs
    assert error.startswith(
        f"cannot open the database postgresql://postgres:***@127.0.0.1:{pg_server.port}/postgres:"
    )
    assert "password authentication failed" in error
    assert wrong not in bridge.log_text() and pg_server.password not in bridge.log_text()
    assert world.messenger.attempts["connect"] == 0


async def test_a_changed_public_url_is_told_to_the_messenger_at_start(world: World) -> None:
    m = world.messenger
    bridge = await world.start_bridge()
    assert m.bridge_webhook == f"{bridge.url}/messengers/acme/webhook"
    await bridge.stop()

    bridge = await world.start_bridge()  # the same URL: nothing to tell
    assert m.count("connect") == 1
    await bridge.stop()

    moved = f"http://localhost:{world.bridge_port}"
    bridge = await world.start_bridge(server={**world.config()["server"], "public_url": moved})
    await eventually(lambda: m.count("connect") == 2, what="a second connect")
    assert m.bridge_webhook == f"{moved}/messengers/acme/webhook"
    await eventually(lambda: bridge.state() == "active", what="active again")
    await bridge.stop()

    bridge = await world.start_bridge(server={**world.config()["server"], "public_url": moved})
    assert m.count("connect") == 2  # stored: not told again
    assert (await m.send_message(world.http, "p1", "reaches the new URL"))[0] == 200


async def test_the_start_and_stop_are_logged(world: World, tmp_path: Path) -> None:
    config = config_on(world, tmp_path, world.bridge_port)
    config["messengers"]["acme"]["confirmation_code"] = ""  # a config warning
    world.messenger.code = ""
    bridge = BridgeProcess(config, tmp_path)
    try:
        await bridge.start(world.http)
        await eventually(lambda: world.messenger.count("connect") == 1, what="connect")
    finally:
        code = await bridge.terminate()
    assert code == 0
    bridge.assert_clean_logs()
    names = [line["event"] for line in bridge.log_lines()]
    order = ["bridge.starting", "config.warning", "bridge.started", "bridge.stopped"]
    assert [name for name in names if name in order] == order
    (starting,) = bridge.events("bridge.starting")
    assert starting["version"] == version()
    assert starting["config"] == str(bridge.config_path.resolve())
    (warning,) = bridge.events("config.warning")
    assert warning["level"] == "warning"
    assert warning["warning"].startswith("messengers.acme.confirmation_code: empty")
    (started,) = bridge.events("bridge.started")
    assert started["level"] == "info" and started["version"] == version()
    assert started["config"] == starting["config"]
    assert started["listening"] == [f"http://127.0.0.1:{world.bridge_port}"]
    assert started["public_url"] == config["server"]["public_url"]
    assert started["channels"] in ({"acme": "connecting"}, {"acme": "active"})
    (stopped,) = bridge.events("bridge.stopped")
    assert stopped["level"] == "info" and isinstance(stopped["ran_for"], float | int)
    assert stopped["ran_for"] >= 0
