"""Retention: old rows pruned in small batches (acks never wait behind them), never what the
outbox still holds, pending or dead. The pruner runs as of a later `now`; every effect is
checked through the admin API."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.keys import DATABASE, PRUNER
from bridge.settings import ConfigError, settings_from_dict
from storage.port import Connection
from tests import stored
from tests.conftest import SUBSCRIPTION_SECRETS, World, eventually
from tests.sim.server import SimServer
from tests.sim.subscriber import SubscriberSim
from tests.test_dead_letters import admin, dead

DAY = 86_400.0


async def session_of(world: World, chat: str) -> dict[str, Any]:
    status, body = await admin(world, "GET", "/admin/sessions?limit=1000")
    assert status == 200
    return next(s for s in body["sessions"] if s["external_chat_id"] == chat)


async def texts(world: World, session_id: int) -> list[str]:
    status, body = await admin(world, "GET", f"/admin/sessions/{session_id}")
    assert status == 200, body
    return [m["text"] for m in body["messages"]]


async def event_names(world: World) -> list[str]:
    status, body = await admin(world, "GET", "/admin/events?limit=1000")
    assert status == 200
    return sorted(e["name"] for e in body["events"])


async def test_pruning_removes_old_rows_but_never_what_the_outbox_holds(
    world: World, tmp_path: Path
) -> None:
    sub = SubscriberSim()
    sub_server = SimServer(sub.app)
    await sub_server.start()
    subscription = {
        "url": f"{sub_server.url}/events",
        "secret": SUBSCRIPTION_SECRETS[0],
        "events": ["conversation.status"],
    }
    try:
        bridge = await world.start_bridge(subscriptions=[subscription])
        assert bridge.app is not None
        m, cv, http = world.messenger, world.chatvisor, world.http
        pruner = bridge.app[PRUNER]

        # A finished conversation: delivered both ways, then closed by the operator.
        await m.send_message(http, "done", "old question", message_id="done-1")
        done_customer = await world.customer_id("done")
        await cv.agent_reply(http, done_customer, "old answer")
        await eventually(lambda: m.chat_log["done"] == ["old answer"], what="answer delivered")
        await eventually(lambda: m.outcomes.get("done-1"), what="outcome")
        sub.fail_with = 503  # the subscriber is down: its event stays pending
        assert (await cv.set_status(http, done_customer, "DONE"))[0] == 200
        await cv.hook(http, {"event": "agent.typing", "customerId": done_customer})
        done = await session_of(world, "done")
        await eventually(lambda: sub.refused_ids, what="the event attempted")

        # A message the live chat refused: dead, kept for an admin.
        cv.fail_with = 422
        await m.send_message(http, "dead", "refused question", message_id="dead-1")
        await eventually(lambda: m.outcomes.get("dead-1") is False, what="dead")
        cv.fail_with = None

        # An operator's reply held while the channel is disconnected: pending.
        await m.send_message(http, "held", "hello", message_id="held-1")
        held_customer = await world.customer_id("held")
        await eventually(lambda: m.outcomes.get("held-1"), what="outcome")
        await admin(world, "POST", "/admin/messengers/acme/disconnect")
        await cv.agent_reply(http, held_customer, "held reply")
        await eventually(
            lambda: admin(world, "GET", "/admin/outbox?status=pending"), what="pending"
        )

        # 40 days on: bodies of finished messages and old events go; nothing else.
        counts = await pruner.prune_once(now=time.time() + 40 * DAY)
        assert counts["message_bodies"] == 3  # question, answer, and "hello"
        assert counts["events"] == 1  # agent.typing; conversation.status waits for its subscriber
        assert counts["messages"] == counts["closed_sessions"] == 0
        assert await texts(world, done["id"]) == ["", ""]
        assert await texts(world, (await session_of(world, "dead"))["id"]) == ["refused question"]
        assert await texts(world, (await session_of(world, "held"))["id"]) == ["", "held reply"]
        assert await event_names(world) == ["conversation.status"]
        assert [i["kind"] for i in await dead(world)] == ["livechat.message"]
        # The row and its dedupe key stay: a resend is still recognised as a repeat.
        await m.send_message(http, "done", "old question", message_id="done-1")
        await asyncio.sleep(0.2)
        assert cv.texts(done_customer) == ["old question"]
        # Pruning again finds nothing more to do.
        again = await pruner.prune_once(now=time.time() + 40 * DAY)
        assert not any(again.values()), again

        # 100 days on: closed sessions go with their messages, then message rows of any
        # session; what the outbox holds stays, pending or dead.
        counts = await pruner.prune_once(now=time.time() + 100 * DAY)
        # The session with its two messages, its chat and its user's profile.
        assert counts["closed_sessions"] == 5
        status, body = await admin(world, "GET", f"/admin/sessions/{done['id']}")
        assert (status, body["errcode"]) == (404, "unknown_session")
        assert await texts(world, (await session_of(world, "dead"))["id"]) == ["refused question"]
        assert await texts(world, (await session_of(world, "held"))["id"]) == ["held reply"]
        assert await event_names(world) == ["conversation.status"]
        assert len(await dead(world)) == 1
        kept = [c for c in ("dead", "done", "held") if await stored.chat(bridge.store, c)]
        assert kept == ["dead", "held"]

        # What was held is delivered whole once its channel and subscriber are back.
        await admin(world, "POST", "/admin/messengers/acme/connect")
        await eventually(lambda: m.chat_log["held"] == ["held reply"], what="held reply")
        sub.fail_with = None
        await eventually(lambda: sub.events, what="the event delivered")
        assert sub.events[0]["type"] == "conversation.status"
    finally:
        if world.bridge is not None:
            await world.bridge.stop()
            world.bridge = None
        await sub_server.stop()


def _seed_old(conn: Connection, sessions: int, per_session: int, at: float) -> None:
    """Old finished conversations, written straight into the database (set-up only)."""
    chat_id = conn.execute(
        """INSERT INTO chats (channel_id, external_chat_id, user_id, client_key, livechat_id,
                              created_at)
           VALUES ('acme', 'ancient', 'u-ancient', 'acme:ancient', 'support', ?) RETURNING id""",
        (at,),
    ).fetchone()["id"]
    for s in range(sessions):
        session_id = conn.execute(
            """INSERT INTO sessions (chat_id, livechat_id, status, opened_by, opened_at,
                                     closed_at)
               VALUES (?, 'support', 'closed', 'user', ?, ?) RETURNING id""",
            (chat_id, at, at + 60),
        ).fetchone()["id"]
        conn.executemany(
            """INSERT INTO messages (uid, dedupe_key, session_id, chat_id, direction, text,
                                     status, created_at)
               VALUES (?, ?, ?, ?, 'in', ?, 'delivered', ?)""",
            [
                (f"old-{s}-{i}", f"in:acme:old-{s}-{i}", session_id, chat_id, "x" * 200, at)
                for i in range(per_session)
            ],
        )
        conn.execute(
            """INSERT INTO events (uid, livechat_id, name, session_id, payload, received_at)
               VALUES (?, 'support', 'conversation.status', ?, ?, ?)""",
            (f"ev-{s}", session_id, json.dumps({"n": s}), at),
        )


async def test_a_burst_is_acked_while_a_large_prune_runs(world: World) -> None:
    bridge = await world.start_bridge(retention={"batch": 200, "pause": 0.02})
    assert bridge.app is not None
    m, http = world.messenger, world.http
    sessions, per_session = 2_000, 15  # 30,000 messages, 2,000 sessions and events
    seed_at = time.time() - 200 * DAY
    await bridge.app[DATABASE].write(lambda conn: _seed_old(conn, sessions, per_session, seed_at))

    prune = asyncio.create_task(bridge.app[PRUNER].prune_once())
    await asyncio.sleep(0.05)
    assert not prune.done()
    acks: list[float] = []
    for i in range(150):  # a steady 150 msg/s while the prune runs
        started = time.perf_counter()
        status, _ = await m.send_message(http, f"b{i % 10}", f"burst {i}")
        acks.append(time.perf_counter() - started)
        assert status == 200
        await asyncio.sleep(max(0.0, 1 / 150 - acks[-1]))
    overlapped = not prune.done()
    counts = await prune
    assert overlapped, "the prune ended before the burst did: make it larger"
    # Each session with its messages and its event's link, then the chat.
    assert counts["closed_sessions"] == sessions * (per_session + 1) + 1
    assert counts["events"] == sessions
    # Each ack waits for one small batch at most, never for the whole prune (seconds here).
    assert max(acks) < 0.5, f"max ack {max(acks):.3f} s"
    assert statistics.median(acks) < 0.05, f"median ack {statistics.median(acks):.3f} s"

    status, body = await admin(world, "GET", "/admin/sessions?limit=1000")
    assert {s["external_chat_id"] for s in body["sessions"]} == {f"b{i}" for i in range(10)}
    assert await event_names(world) == []
    await eventually(lambda: len(world.chatvisor.all_texts()) == 150, what="burst delivered")


def test_retention_mistakes_name_their_key() -> None:
    config = {"admin": {"token": "a-token"}, "retention": {"events": -1, "batch": 0, "days": 3}}
    with pytest.raises(ConfigError) as caught:
        settings_from_dict(config)
    problems = caught.value.problems
    assert any(p.startswith("retention.events: ") for p in problems), problems
    assert any(p.startswith("retention.batch: ") for p in problems), problems
    assert "retention.days: unknown key" in problems
    defaults = settings_from_dict({"admin": {"token": "a-token"}}).retention
    assert (defaults.message_bodies, defaults.events, defaults.closed_sessions) == (30, 30, 90)
    assert defaults.orphan_after == 24
