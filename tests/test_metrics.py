"""`/metrics`: what an operator graphs and alerts on."""

from __future__ import annotations

from bridge.version import version
from tests import stored
from tests.conftest import World, eventually


def value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or (
            line.startswith(name + "{") and line.split(" ")[0] == name
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


async def scrape(world: World) -> str:
    assert world.bridge is not None
    async with world.http.get(f"{world.bridge.url}/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return await r.text()


async def test_metrics_follow_the_message_path(running: World) -> None:
    m, cv, http = running.messenger, running.chatvisor, running.http
    cv.fail_with, cv.fail_times = 503, 2
    await m.send_message(http, "x1", "hello", message_id="x1-1")
    await eventually(lambda: m.outcomes.get("x1-1") is True, what="delivered")
    async with http.post(m.bridge_webhook or "", data=b"{oops") as r:
        assert r.status == 400

    async def settled() -> bool:  # the outcome's own settle follows its arrival by a moment
        return await stored.outbox_items(running.bridge.store) == []

    await eventually(settled, what="the outbox drained")
    text = await scrape(running)
    route = 'route="/messengers/{channel_id}/webhook"'
    assert f'bridge_http_requests_total{{method="POST",{route},status="200"}} 1.0' in text
    assert f'bridge_http_requests_total{{method="POST",{route},status="400"}} 1.0' in text
    assert 'bridge_deliveries_total{result="retry",target="livechat"} 2.0' in text
    assert 'bridge_deliveries_total{result="delivered",target="livechat"} 1.0' in text
    assert 'bridge_deliveries_total{result="delivered",target="messenger"} 1.0' in text
    assert 'bridge_delivery_retries_total{target="livechat"} 2.0' in text
    assert 'bridge_channel_state{channel="acme",state="active"} 1.0' in text
    assert 'bridge_channel_state{channel="acme",state="interrupted"} 0.0' in text
    assert "bridge_sessions_open 1.0" in text
    assert "bridge_outbox_pending 0.0" in text
    assert f"bridge_http_request_duration_seconds_count{{{route}}} 2.0" in text


async def test_outbox_depth_and_age_while_the_live_chat_is_down(running: World) -> None:
    await running.chatvisor_server.stop()
    for i in range(3):
        await running.messenger.send_message(running.http, f"d{i}", "waiting")

    async def retried() -> bool:
        return any(i["attempts"] > 0 for i in await stored.outbox_items(running.bridge.store))

    await eventually(retried, what="a retry")
    text = await scrape(running)
    assert "bridge_outbox_pending 3.0" in text
    age = next(
        float(x.rsplit(" ", 1)[1])
        for x in text.splitlines()
        if x.startswith("bridge_outbox_oldest_age_seconds ")
    )
    assert 0 < age < 60


async def test_the_running_version_is_exported(running: World) -> None:
    text = await scrape(running)
    assert f'bridge_build_info{{version="{version()}"}} 1.0' in text
