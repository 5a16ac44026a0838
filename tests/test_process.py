"""The real `messenger-bridge serve` process, driven by the CLI; its logs hold no secret."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import sys
from pathlib import Path

import pytest
import structlog

from bridge.logs import configure_logging
from bridge.settings import LoggingSettings
from tests.conftest import ADMIN_TOKEN, API_TOKEN, CODE, HOOK_TOKEN, World, eventually
from tests.procs import toml

ROOT = Path(__file__).resolve().parent.parent
SECRETS = (ADMIN_TOKEN, API_TOKEN, HOOK_TOKEN, CODE)


async def cli(config: Path, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_serve_and_channel_commands(world: World, tmp_path: Path) -> None:
    config = world.config(logging={"level": "debug", "format": "json"})
    path = tmp_path / "config.toml"
    path.write_text(toml(config))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "--config",
        str(path),
        "serve",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{world.bridge_port}"

        async def ready() -> bool:
            try:
                async with world.http.get(f"{base}/readyz") as r:
                    return r.status == 200
            except OSError:
                return False

        await eventually(ready, timeout=20, what="bridge ready")
        await eventually(lambda: world.messenger.bridge_webhook, what="connect")
        world.chatvisor.hook_url = f"{base}/livechats/support/webhook/{HOOK_TOKEN}"

        code, out, _ = await cli(path, "channels")
        assert code == 0
        assert out.splitlines()[0].split()[:4] == ["ID", "NAME", "LIVECHAT", "STATE"]
        assert "acme" in out and "active" in out

        await world.messenger.send_message(world.http, "p1", "over a real process")
        customer = await world.customer_id("p1")
        await world.chatvisor.agent_reply(world.http, customer, "answer")
        await eventually(lambda: world.messenger.chat_log["p1"] == ["answer"], what="reply")
        # Bad input of every kind, so that error paths log too.
        await world.messenger.send(world.http, "message", {"x": 1}, token="wrong-token")
        async with world.http.post(f"{base}/livechats/support/webhook/wrong", json={}) as r:
            assert r.status == 401

        code, out, _ = await cli(path, "disconnect", "acme")
        assert code == 0 and "disconnected" in out
        code, out, _ = await cli(path, "reconnect", "acme")
        assert code == 0 and "active" in out
        code, _, err = await cli(path, "connect", "nope")
        assert code == 1 and "404" in err
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    logs = stderr.decode()
    lines = [json.loads(line) for line in logs.splitlines()]
    assert any(line["event"] == "http.request" for line in lines)
    assert "Traceback" not in logs
    for secret in SECRETS:
        assert secret not in logs


async def test_cli_without_a_running_bridge(tmp_path: Path, world: World) -> None:
    path = tmp_path / "config.toml"
    path.write_text(toml(world.config()))
    code, _, err = await cli(path, "channels")
    assert code == 1 and "cannot reach the bridge" in err


def test_redactor_catches_a_secret_logged_by_mistake() -> None:
    buf = io.StringIO()
    configure_logging(LoggingSettings(format="json"), [CODE], stream=buf)
    try:
        structlog.get_logger().info("oops", detail=f"token={CODE}", nested={"k": [CODE]})
        try:
            raise ValueError(CODE)
        except ValueError:
            structlog.get_logger().exception("failed")
    finally:
        structlog.reset_defaults()
    assert CODE not in buf.getvalue()
    assert "[redacted]" in buf.getvalue()


async def test_message_path_log_lines_carry_ids_and_empty_code_is_warned(world: World) -> None:
    buf = io.StringIO()
    configure_logging(LoggingSettings(level="debug", format="json"), SECRETS, stream=buf)
    try:
        acme = {**world.config()["messengers"]["acme"], "confirmation_code": ""}
        world.messenger.code = ""
        await world.start_bridge(messengers={"acme": acme})
        await world.messenger.send_message(world.http, "ids", "hello", message_id="ext-1")
        customer = await world.customer_id("ids")
        await world.chatvisor.agent_reply(world.http, customer, "hi")
        await eventually(lambda: world.messenger.chat_log["ids"], what="reply")
        await eventually(lambda: world.messenger.outcomes, what="outcome")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in buf.getvalue().splitlines()]
    (warning,) = [line for line in lines if line["event"] == "config.warning"]
    assert warning["level"] == "warning"
    assert warning["warning"].startswith("messengers.acme.confirmation_code: empty")
    accepted = next(line for line in lines if line["event"] == "messenger.message_accepted")
    assert {"channel", "session", "message"} <= accepted.keys()
    done = [line for line in lines if line["event"] == "delivery.done"]
    # To the live chat (whose outcome went out with it, or as an item of its own), the reply.
    assert len(done) >= 2
    assert done[0]["notified"] or any(line["kind"] == "messenger.outcome" for line in done)
    for line in done:
        assert line["channel"] == "acme"
    for line in done:
        if line["kind"] != "messenger.outcome":
            assert line["session"] == accepted["session"] and line["message"]


async def test_the_demo_runs() -> None:
    import socket

    for port in (8080, 8090, 8091, 8092, 8093, 8094):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip(f"port {port} is taken on this machine")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "connectors.sim.demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert [line.split(".")[0] for line in lines] == [str(i) for i in range(1, 9)]
    assert "subscriber got a signed 'chat_finished'" in lines[-1]
