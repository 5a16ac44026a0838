"""The real `messenger-bridge serve` process, driven by the CLI; its logs hold no secret."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from pathlib import Path

import structlog

from bridge.logs import configure_logging
from bridge.settings import LoggingSettings
from tests.conftest import (
    ADMIN_TOKEN,
    API_TOKEN,
    CODE,
    HOOK_TOKEN,
    World,
    eventually,
    free_port,
)
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
        world.messenger.fail_types["connect"] = 500  # the messenger refuses: the command says so
        code, out, err = await cli(path, "reconnect", "acme")
        assert code == 1 and "interrupted" in out and "acme is interrupted" in err
        del world.messenger.fail_types["connect"]
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
        # A host name in a redirect's Location comes back lower-cased.
        structlog.get_logger().info("retry", error=f"redirect to {CODE.upper()}.example")
        try:
            raise ValueError(CODE)
        except ValueError:
            structlog.get_logger().exception("failed")
    finally:
        structlog.reset_defaults()
    assert CODE.lower() not in buf.getvalue().lower()
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


async def demo(config: Path) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.sim.demo",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_demo_runs_on_the_ports_of_its_config(tmp_path: Path) -> None:
    # The example with every port moved to a free one: the demo must listen where it says.
    example = (ROOT / "config.example.toml").read_text()
    ports = {old: free_port() for old in (8080, 8090, 8091, 8092, 8093)}
    for old, new in ports.items():
        example = example.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
    example = example.replace("port = 8080", f"port = {ports[8080]}")
    config = tmp_path / "demo.toml"
    config.write_text(example)
    code, out, err = await demo(config)
    assert code == 0, err
    for port in ports.values():
        assert f"127.0.0.1:{port}" in out
    assert ":8094" not in out  # the added messenger: a free port, not a fixed one
    lines = [line.strip() for line in out.splitlines()]
    trip = lines[lines.index("Round trip 1: messenger acme <-> live chat support") :]
    assert [line.split(".")[0] for line in trip[1:7]] == [str(i) for i in range(1, 7)]
    assert trip[2].startswith("2. user") and "(the bridge: 200)" in trip[2]
    assert trip[3].startswith("3. live chat support got 'Hi! My order has not arrived.'")
    assert (
        trip[5] == "5. messenger acme got it for chat chat-1: 'Sorry about that! It ships today.'"
    )
    assert trip[6] == "6. outcome: messenger acme was told the user's message was delivered"
    assert any("subscriber 0 got a signed 'chat_finished'" in line for line in lines)
    assert lines[-1].startswith("Done: 2 round trip(s)")


async def test_the_demo_refuses_a_party_it_cannot_play(tmp_path: Path) -> None:
    example = (ROOT / "config.example.toml").read_text()
    config = tmp_path / "demo.toml"
    config.write_text(example.replace("127.0.0.1:8091", "messenger.example.com:8091"))
    code, out, err = await demo(config)
    assert code == 2, out
    assert err.strip() == (
        "demo: messengers.acme.webhook: messenger.example.com is not this machine;"
        " the demo plays it locally"
    )
