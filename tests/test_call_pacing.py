"""How often the bridge calls out (issue 9, point 12): a `Retry-After` HTTP-date is honoured,
/readyz does not turn each request into a call to JivoChat, and a settle that cannot be
written is retried, not the outside call it settles."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Any

import pytest

from tests import stored
from tests.conftest import Jivo, World, database_locked, eventually


@pytest.mark.parametrize(
    ("offset", "cap", "low", "high"),
    [
        (3.0, 10.0, 1.9, 6.0),  # a date 2-3 s ahead (HTTP-dates have whole seconds): waited for
        (3600.0, 1.0, 0.9, 3.5),  # an hour ahead: capped at delivery.retry_cap
        (-3600.0, 10.0, 0.0, 0.8),  # in the past: now
    ],
    ids=["ahead", "capped", "past"],
)
async def test_retry_after_as_an_http_date_is_honoured(
    world: World, offset: float, cap: float, low: float, high: float
) -> None:
    await world.start_bridge(delivery={"retry_cap": cap})
    m, cv, http = world.messenger, world.chatvisor, world.http
    # A first delivery, so that the delivery process's start is not in the timing.
    assert (await m.send_message(http, "warm", "up", message_id="warm-1"))[0] == 200
    await eventually(lambda: m.outcomes.get("warm-1") is True, what="warmed up")
    started = time.time()
    cv.fail_with, cv.fail_times = 503, 1
    cv.retry_after = formatdate(started + offset, usegmt=True)
    assert (await m.send_message(http, "ra", "later", message_id="ra-1"))[0] == 200
    await eventually(lambda: m.outcomes.get("ra-1") is True, timeout=10, what="delivered")
    elapsed = time.time() - started
    assert low <= elapsed <= high, f"delivered after {elapsed:.2f} s, expected {low}-{high}"
    assert cv.texts(cv.customer_by_key["acme:ra"]) == ["later"]


async def readyz(world: World) -> dict[str, Any]:
    assert world.bridge is not None
    async with world.http.get(f"{world.bridge.url}/readyz") as r:
        assert r.status == 200
        body: dict[str, Any] = await r.json()
    return body


async def test_readyz_probes_jivochat_once_for_many_requests(world: World, jivo: Jivo) -> None:
    await jivo.start()  # status_cache: 30 s by default
    jivo.sim.status_delay = 0.3  # requests pile up while the first probe is out
    bodies = await asyncio.gather(*(readyz(world) for _ in range(40)))
    for _ in range(20):
        bodies.append(await readyz(world))
    assert jivo.sim.status_calls == 1
    assert all(b["livechats"]["sales"]["agents_online"] is True for b in bodies)
    jivo.sim.agents_online = False
    assert (await readyz(world))["livechats"]["sales"]["agents_online"] is True  # cached
    assert jivo.sim.status_calls == 1


async def test_readyz_probes_jivochat_once_per_cache_period(world: World, jivo: Jivo) -> None:
    config = jivo.config()
    config["livechats"]["sales"]["status_cache"] = 0.4
    await world.start_bridge(config=config)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        await asyncio.gather(*(readyz(world) for _ in range(5)))
        await asyncio.sleep(0.02)
    # 2 s of steady asking, a probe per 0.4 s: 5 or 6 (each period starts at a probe).
    assert 4 <= jivo.sim.status_calls <= 7, jivo.sim.status_calls
    jivo.sim.agents_online = False
    await asyncio.sleep(0.45)
    sales = (await readyz(world))["livechats"]["sales"]
    assert sales["agents_online"] is False and sales["status_age"] < 0.4


async def test_a_settle_that_cannot_be_written_waits_without_calling_again(
    world: World,
) -> None:
    """The live chat takes the message, then the database is locked before the bridge can
    write the settle: the settle is tried again under back-off until the lock is gone, and the
    live chat gets the call once (it was once made again every second)."""
    bridge = await world.start_bridge(storage={"busy_timeout": 0.2})
    m, cv, http = world.messenger, world.chatvisor, world.http
    assert (await m.send_message(http, "s1", "first", message_id="s1-1"))[0] == 200
    customer = await world.customer_id("s1")
    await eventually(lambda: m.outcomes.get("s1-1") is True, what="the first delivered")

    calls = cv.message_calls
    cv.delay = 1.0  # the call is out when the lock is taken
    assert (await m.send_message(http, "s1", "second", message_id="s1-2"))[0] == 200
    await eventually(lambda: cv.message_calls == calls + 1, what="the call made")
    async with database_locked(world.storage):
        await eventually(lambda: cv.texts(customer) == ["first", "second"], what="taken")
        await asyncio.sleep(2.5)  # several settle tries meet the lock
        assert cv.message_calls == calls + 1
        assert await stored.outbox_items(bridge.store) != []  # the lock held the settle back

    async def settled() -> bool:
        return await stored.outbox_items(bridge.store) == []

    await eventually(settled, what="the settle written once the lock is gone")
    found = await stored.all_messages(bridge.store)
    assert [m["status"] for m in found if m["external_id"] == "s1-2"] == ["delivered"]
    await asyncio.sleep(0.3)  # nothing more goes out
    assert cv.message_calls == calls + 1 and cv.duplicates == 0
    outcomes = [c for c in m.calls if c["type"] == "messageOutcome"]
    assert [c["data"]["messageId"] for c in outcomes] == ["s1-1", "s1-2"]
