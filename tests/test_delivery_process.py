"""The delivery process (`delivery.worker = "process"`): killed, it is started again, and what
it had in flight is delivered by the next one; nothing lost, nothing out of order. Falling
behind, it shares the calls with the serving process; gone, or not ready yet, the serving
process stands in. It never outlives the serving process, whatever stage it is at."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from bridge.delivery.link import READY, connect
from bridge.keys import DELIVERY_PROCESS
from bridge.settings import settings_from_dict
from tests import conftest
from tests.conftest import World, eventually
from tests.procs import ROOT, BridgeProcess
from tests.test_metrics import scrape, value

# The delivery process's own life (start, share, exit with its parent): not the database's.
# Its reads on PostgreSQL run in the round trips' [process-postgres] variants.
pytestmark = pytest.mark.backends("sqlite")


async def delivery_process_ready(world: World) -> None:
    assert world.bridge is not None and world.bridge.app is not None
    process = world.bridge.app[DELIVERY_PROCESS]
    await eventually(lambda: process.running, timeout=60, what="the delivery process ready")


async def test_a_killed_delivery_process_is_replaced_and_nothing_is_lost(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    process = running.bridge.app[DELIVERY_PROCESS]
    assert process.starts == 1 and process.pid is not None
    await delivery_process_ready(running)  # so that the calls are its own
    chats = ["k1", "k2", "k3"]
    cv.delay = 0.5  # so that the kill finds calls in flight
    for i in range(5):
        for chat in chats:
            status, _ = await m.send_message(http, chat, f"{chat}-{i}")
            assert status == 200
    await asyncio.sleep(0.2)
    first = process.pid
    os.kill(first, signal.SIGKILL)
    cv.delay = 0.0
    await eventually(lambda: process.starts == 2 and process.pid != first, what="a new process")
    for chat in chats:
        customer = await running.customer_id(chat)
        expected = [f"{chat}-{i}" for i in range(5)]
        await eventually(lambda c=customer, e=expected: cv.texts(c) == e, what=f"{chat} in order")
    await eventually(lambda: len(m.outcomes) == 15 and all(m.outcomes.values()), what="outcomes")
    assert value(await scrape(running), "bridge_delivery_process_starts_total") == 2


async def test_inline_delivery_needs_no_process(world: World) -> None:
    await world.start_bridge(delivery={"worker": "inline"})
    assert DELIVERY_PROCESS not in world.bridge.app
    await world.messenger.send_message(world.http, "i1", "inline", message_id="i1-1")
    await eventually(lambda: world.chatvisor.all_texts() == ["inline"], what="delivered")
    await eventually(lambda: world.messenger.outcomes == {"i1-1": True}, what="outcome")


async def test_the_serving_process_shares_deliveries_once_the_process_falls_behind(
    world: World,
) -> None:
    await world.start_bridge(delivery={"share_after": 2})
    await delivery_process_ready(world)
    m, cv, http = world.messenger, world.chatvisor, world.http
    cv.delay = 0.3  # calls pile up in the delivery process: the serving process takes some
    chats = [f"s{n}" for n in range(8)]
    for i in range(3):
        for chat in chats:
            status, _ = await m.send_message(http, chat, f"{chat}-{i}")
            assert status == 200
    for chat in chats:
        customer = await world.customer_id(chat)
        expected = [f"{chat}-{i}" for i in range(3)]
        await eventually(lambda c=customer, e=expected: cv.texts(c) == e, what=f"{chat} in order")
    await eventually(lambda: len(m.outcomes) == 24 and all(m.outcomes.values()), what="outcomes")
    text = await scrape(world)
    by_process = value(text, 'bridge_delivery_performed_total{process="delivery"}')
    by_serving = value(text, 'bridge_delivery_performed_total{process="serving"}')
    assert by_process > 0 and by_serving > 0


async def test_share_after_zero_keeps_every_call_in_the_delivery_process(world: World) -> None:
    """Once the delivery process is ready (until then the serving process stands in, as it
    does while the child is down), every call is the child's, however far behind it falls."""
    await world.start_bridge(delivery={"share_after": 0})
    await delivery_process_ready(world)
    m, cv, http = world.messenger, world.chatvisor, world.http
    cv.delay = 0.2
    for n in range(6):
        await m.send_message(http, f"z{n}", f"z{n}", message_id=f"z{n}-1")
    await eventually(lambda: len(m.outcomes) == 6, what="outcomes")
    text = await scrape(world)
    assert value(text, 'bridge_delivery_performed_total{process="serving"}') == 0


async def test_while_the_delivery_process_is_down_the_serving_process_delivers(
    running: World,
) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    await running.bridge.app[DELIVERY_PROCESS].stop()  # gone, and not started again
    for i in range(3):
        await m.send_message(http, "d1", f"down-{i}", message_id=f"d1-{i}")
    customer = await running.customer_id("d1")
    expected = [f"down-{i}" for i in range(3)]
    await eventually(lambda: cv.texts(customer) == expected, what="delivered in order")
    await eventually(lambda: len(m.outcomes) == 3 and all(m.outcomes.values()), what="outcomes")
    text = await scrape(running)
    assert value(text, 'bridge_delivery_performed_total{process="serving"}') >= 3


async def test_the_first_message_after_a_start_does_not_wait_for_the_delivery_process(
    world: World,
) -> None:
    # The delivery process takes a second or more to start (imports): until it says it is
    # ready, the serving process delivers, rather than queue the calls behind its start.
    m, cv, http = world.messenger, world.chatvisor, world.http
    bridge = await world.start_bridge()
    assert bridge.app is not None
    process = bridge.app[DELIVERY_PROCESS]
    assert (await m.send_message(http, "f1", "first", message_id="f1-1"))[0] == 200
    await eventually(lambda: cv.all_texts() == ["first"], interval=0.001, what="delivered")
    delivered_at = time.monotonic()
    text = await scrape(world)
    assert value(text, 'bridge_delivery_performed_total{process="serving"}') >= 1
    assert value(text, 'bridge_delivery_performed_total{process="delivery"}') == 0
    await delivery_process_ready(world)
    assert process.ready_at is not None and delivered_at < process.ready_at
    await eventually(lambda: m.outcomes == {"f1-1": True}, what="outcome")


# --- it never outlives the serving process ----------------------------------------------


def is_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def delivery_child(parent: int) -> int | None:
    try:
        pids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"bridge.delivery.child_main" in cmdline:
            return int(pid)
    return None


async def spawn_child(parent: int) -> tuple[asyncio.subprocess.Process, socket.socket]:
    """The delivery process as `bridge.delivery.child_process` starts it, with `parent` named as its parent."""
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bridge.delivery.child_main",
            str(theirs.fileno()),
            "auto",
            str(parent),
            pass_fds=(theirs.fileno(),),
            cwd=ROOT,
        )
    finally:
        theirs.close()
    return proc, ours


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("delay", [0.0, 0.002, 0.005, 0.01, 0.02, 0.2, 1.0, None])
async def test_the_delivery_process_exits_when_the_serving_process_is_killed(
    world: World, tmp_path: Path, delay: float | None
) -> None:
    """kill -9 of the serving process at every stage of the delivery process's start (None:
    once it is ready): the delivery process is gone within a few seconds."""
    bridge = BridgeProcess(world.config(), tmp_path)
    child = None
    try:
        if delay is None:
            await bridge.start(world.http)
            await eventually(lambda: bridge.events("delivery.process_ready"), what="ready")
        else:
            await bridge.spawn()
        parent = bridge.runs[-1].proc.pid
        child = await eventually(
            lambda: delivery_child(parent), interval=0.0005, what="the delivery process"
        )
        if delay:
            await asyncio.sleep(delay)
        await bridge.kill()
        await eventually(lambda: is_gone(child), timeout=5, what=f"pid {child} gone")
    finally:
        await bridge.stop_quietly()
        if child is not None and not is_gone(child):
            os.kill(child, signal.SIGKILL)  # the test failed: leave nothing behind


@pytest.mark.parametrize("stage", ["before the settings", "while starting", "running"])
async def test_the_delivery_process_exits_when_its_socket_closes(world: World, stage: str) -> None:
    """The socket alone (the serving process is alive: no signal from the kernel) ends it,
    whatever stage it is at."""
    proc, ours = await spawn_child(os.getpid())
    try:
        if stage == "before the settings":
            ours.close()
        else:
            said: list[object] = []
            link = await connect(ours, said.append)
            link.send(settings_from_dict(world.config()))
            if stage == "running":
                await eventually(lambda: said == [READY], timeout=60, what="READY")
            else:
                await asyncio.sleep(0.01)
            link.close()
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_delivery_process_whose_parent_is_already_gone_exits(world: World) -> None:
    proc, ours = await spawn_child(os.getpid() + 1_000_000)  # not its parent
    try:
        assert await asyncio.wait_for(proc.wait(), 10) == 3
    finally:
        ours.close()


@pytest.fixture(autouse=True)
def _in_process_bridges_use_the_delivery_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other test files run in-process bridges inline (tests/conftest.py); here the
    delivery process is the subject."""
    monkeypatch.setattr(conftest, "IN_PROCESS_WORKER", "process")
