"""Every time the JSON admin API gives is ISO 8601 in UTC (never Unix seconds), in every
endpoint, whatever state the data is in: open and closed sessions, a JivoChat transcript,
pending and dead outbox items, events."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from tests.conftest import Jivo, World, eventually, seed

TIME_KEY = re.compile(r"(_at|^since|^timestamp|^at)$")


def times_in(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """(path, value) of every key that names a time, outside `payload` (what a party sent,
    passed through as it was)."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "payload":
                continue
            if TIME_KEY.search(key):
                found.append((f"{path}.{key}", inner))
            found.extend(times_in(inner, f"{path}.{key}"))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found.extend(times_in(inner, f"{path}[{index}]"))
    return found


async def get(world: World, path: str) -> Any:
    assert world.bridge is not None
    async with world.http.get(
        world.bridge.url + path, headers=world.bridge.admin_headers()
    ) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_every_admin_time_is_iso_8601(world: World, jivo: Jivo) -> None:
    await jivo.start()
    await jivo.user_says("t1", "first")
    await jivo.sim.event(
        jivo.http, {**seed("chat_accepted"), "user_token": "acme:t1", "chat_id": 5}
    )
    lines = [
        {"timestamp": 1700000000, "type": "visitor", "message": "first"},
        {"timestamp": 1e300, "type": "agent", "agent_id": 2224, "message": "beyond any calendar"},
        {"type": "agent", "agent_id": 2224, "message": "no time"},
    ]
    finished = {**seed("chat_finished"), "chat_id": 5, "chat": {"messages": lines}}
    assert await jivo.sim.event(jivo.http, finished) == (200, {"result": "ok"})
    jivo.sim.fail_with = 422  # refused for good: a dead letter
    await jivo.user_says("t1", "dead one", message_id="t1-dead")
    await eventually(lambda: world.messenger.outcomes.get("t1-dead") is False, what="dead")
    jivo.sim.fail_with = 503  # refused for now: pending
    await jivo.user_says("t1", "pending one")
    await eventually(lambda: jivo.sim.calls_by_id, what="a refused call")

    sessions = (await get(world, "/admin/sessions"))["sessions"]
    closed = next(s for s in sessions if s["status"] == "closed")
    detail = await get(world, f"/admin/sessions/{closed['id']}")
    assert [line["timestamp"] for line in detail["transcript"]] == [
        "2023-11-14T22:13:20.000+00:00",
        None,
        None,
    ]
    pending = await get(world, "/admin/outbox?status=pending")
    assert pending["items"] and pending["depth"]["oldest_created_at"] is not None
    answers = [
        await get(world, "/admin/channels"),
        {"sessions": sessions},
        detail,
        await get(world, f"/admin/sessions/{sessions[0]['id']}"),
        await get(world, "/admin/outbox?status=dead"),
        pending,
        await get(world, "/admin/events"),
    ]
    found = [pair for answer in answers for pair in times_in(answer)]
    keys = {re.sub(r"\[\d+\]", "[]", path) for path, _ in found}
    for key in (
        ".channels[].since",
        ".sessions[].opened_at",
        ".sessions[].closed_at",
        ".messages[].created_at",
        ".transcript[].timestamp",
        ".depth.oldest_created_at",
        ".items[].next_attempt_at",
        ".items[].created_at",
        ".items[].updated_at",
        ".events[].received_at",
    ):
        assert key in keys, f"{key} not seen"
    for path, value in found:
        if value is None:
            continue
        assert isinstance(value, str), f"{path}: {value!r} is not an ISO 8601 string"
        parsed = datetime.fromisoformat(value)
        assert parsed.utcoffset() is not None and parsed.utcoffset() == UTC.utcoffset(None)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", value), path
