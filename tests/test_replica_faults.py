"""Faults with replicas as real `serve` processes on one PostgreSQL database (tests/pg.py).

Three replicas behind a round-robin balancer (the test's senders: a request that meets a dead
replica, a connection error or a 5xx, goes to the next one with the same message id), kill -9
of a random replica again and again, each restarted; and a replica killed while it holds a
lane's lease mid-delivery. Whatever got a 200 must reach its receiver exactly once after the
receiver's dedupe by the bridge's stable ids, in per-chat order both ways, with its outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import API_TOKEN, CODE, eventually, free_port, make_config
from tests.procs import BridgeProcess, Tally, together
from tests.sim.messenger import MessengerSim
from tests.sim.server import SimServer
from tests.traffic import (
    Conversations,
    HoldingChatvisor,
    all_outcomes,
    assert_delivered_once_in_order,
    mid,
    send_reply,
    send_user,
)

psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed")

# Replicas share one PostgreSQL database: there is no SQLite variant of these tests.
pytestmark = pytest.mark.backends("postgres")

# Another seed: BRIDGE_TEST_SEED=N (printed by each run, to replay one).
SEED = int(os.environ.get("BRIDGE_TEST_SEED", "20261414"))
LEASE = 2.0  # delivery.lease_seconds: takeovers come within the test
TAIL = 3  # the last user messages of each chat, sent once the kills are over


class Cluster:
    """Both simulators on loopback, replicas of the bridge as real processes sharing one
    PostgreSQL database, and a client that spreads its requests over them round-robin."""

    def __init__(self, tmp_path: Path, http: aiohttp.ClientSession, dsn: str) -> None:
        self.tmp_path, self.http, self.dsn = tmp_path, http, dsn
        self.messenger = MessengerSim(CODE)
        self.chatvisor = HoldingChatvisor(API_TOKEN)
        self.messenger_server = SimServer(self.messenger.app)
        self.chatvisor_server = SimServer(self.chatvisor.app)
        self.replicas: list[BridgeProcess] = []
        self._turn = itertools.count()

    async def start(self, n: int, **over: Any) -> list[BridgeProcess]:
        ports = [free_port() for _ in range(n)]
        public = f"http://127.0.0.1:{ports[0]}"  # the balancer's address, as the messenger knows it
        delivery = {"lease_seconds": LEASE, **over.pop("delivery", {})}
        for number, port in enumerate(ports, 1):
            config = make_config(
                self.tmp_path,
                port,
                self.messenger_server.url,
                self.chatvisor_server.url,
                server={"port": port, "public_url": public},
                storage={"backend": "postgres", "dsn": self.dsn, "pool_max": 8},
                delivery=delivery,
                logging={"level": "info", "format": "json"},
                **over,
            )
            self.replicas.append(BridgeProcess(config, self.tmp_path, name=f"replica{number}"))
        await together(*(r.start(self.http) for r in self.replicas))
        for replica in self.replicas:

            async def active(r: BridgeProcess = replica) -> bool:
                return bool((await r.channel(self.http))["state"] == "active")

            await eventually(active, timeout=20, interval=0.05, what=f"{replica.name} active")
        return self.replicas

    def balanced(self) -> BridgeProcess:
        """The next replica in turn, dead or alive (a balancer finds out by trying)."""
        return self.replicas[next(self._turn) % len(self.replicas)]

    def running(self) -> BridgeProcess:
        return next(r for r in self.replicas if r.running)

    def customer(self, chat: str) -> str:
        return self.chatvisor.customer_by_key[f"acme:{chat}"]

    async def send_user(self, chat: str, index: int, tally: Tally) -> None:
        """User message number `index` of `chat`, sent until some replica answers 200."""
        await send_user(self.http, lambda: self.balanced().webhook, chat, index, tally)

    async def send_reply(self, chat: str, index: int, tally: Tally) -> None:
        """Operator reply number `index` in `chat`'s conversation, sent until some replica's
        live-chat hook answers 200."""
        customer, cv = self.customer(chat), self.chatvisor
        await send_reply(
            self.http, cv, customer, chat, index, tally, url=lambda: self.balanced().hook_url()
        )

    async def depth(self) -> dict[str, Any]:
        body = await self.running().admin(self.http, "/admin/outbox?status=pending")
        depth: dict[str, Any] = body["depth"]
        return depth

    async def drained(self) -> dict[str, Any]:
        async def empty() -> Any:
            d = await self.depth()
            return d if d["pending"] == 0 else None

        depth: dict[str, Any] = await eventually(empty, timeout=20, what="the outbox drained")
        return depth

    async def lane_leases(self) -> dict[str, int]:
        """Every lane lease in the database, expired or not: lane -> the holder's pid."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT name, holder FROM leases WHERE name LIKE 'lane:%'")
            rows = await cur.fetchall()
        # A holder is `host:pid:random` (bridge/leases.py, replica_id).
        return {name: int(holder.split(":")[-2]) for name, holder in rows}

    async def settled(self, check: Any, what: str, timeout: float = 60) -> None:
        """Wait for `check`; on a timeout, fail saying what is still in the database."""
        try:
            await eventually(check, timeout=timeout, interval=0.1, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {await self.leftovers()}") from None

    async def leftovers(self) -> str:
        """What the database still holds of the run: pending and dead items, orphans, leases."""
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            items = await (
                await conn.execute(
                    """SELECT status, kind, lane, attempts, last_error FROM outbox
                       ORDER BY id LIMIT 20"""
                )
            ).fetchall()
            orphans = await (
                await conn.execute("SELECT customer_id, message_id FROM orphans LIMIT 20")
            ).fetchall()
            held = await (await conn.execute("SELECT name, holder FROM leases")).fetchall()
        return f"outbox {items}; orphans {orphans}; leases {held}"

    def outcome_order(self) -> dict[str, list[str]]:
        """Per chat, the message ids of the outcomes in the order they first arrived."""
        seen: set[str] = set()
        order: dict[str, list[str]] = defaultdict(list)
        for call in self.messenger.calls:
            if call["type"] == "messageOutcome" and call["data"]["messageId"] not in seen:
                message_id = call["data"]["messageId"]
                seen.add(message_id)
                order[message_id.rsplit("-m", 1)[0]].append(message_id)
        return order

    def repeats(self) -> dict[str, int]:
        """What the receivers got more than once (same id) and dropped."""
        outcomes = Counter(
            c["data"]["messageId"] for c in self.messenger.calls if c["type"] == "messageOutcome"
        )
        return {
            "live chat messages": self.chatvisor.duplicates,
            "operator messages": self.messenger.duplicates,
            "outcomes": sum(n - 1 for n in outcomes.values()),
        }

    async def stop(self) -> None:
        self.chatvisor.release.set()
        for replica in self.replicas:
            await replica.stop_quietly()


@pytest.fixture
async def cluster(tmp_path: Path, pg_dsn: str) -> AsyncIterator[Cluster]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        c = Cluster(tmp_path, http, pg_dsn)
        await c.messenger_server.start()
        await c.chatvisor_server.start()
        try:
            yield c
        finally:
            await c.stop()
            await c.messenger_server.stop()
            await c.chatvisor_server.stop()


@dataclass
class Kill:
    replica: str
    acked: int  # user messages acknowledged before it
    orphaned: int  # lanes whose head it held in flight: each taken over by another replica
    restart: float = 0.0  # seconds until it was ready again


async def stop_all(c: Cluster) -> None:
    """SIGTERM every replica: each exits 0, and no run of any logged a traceback."""
    assert await together(*(r.terminate() for r in c.replicas)) == [0] * len(c.replicas)
    for replica in c.replicas:
        replica.assert_clean_logs()


def lost_leases(c: Cluster) -> int:
    """Leases a live replica found taken over by another (it stalled past the expiry)."""
    return sum(len(r.events("delivery.lease_lost")) for r in c.replicas)


# --- 1. three replicas, kill -9 again and again ---------------------------------------------


@pytest.mark.timeout(240)
async def test_three_replicas_kill_9_at_random_lose_and_repeat_nothing(cluster: Cluster) -> None:
    c, rng = cluster, random.Random(SEED)
    print(f"\nseed {SEED} (BRIDGE_TEST_SEED)")
    await c.start(3)
    chats = [f"r{n:02d}" for n in range(40)]
    per_chat, per_reply_chat, kill_count = 60, 15, 5
    total = len(chats) * per_chat
    kills: list[Kill] = []
    ready = {r.name for r in c.replicas}  # replicas up, not being restarted
    restarts: list[asyncio.Task[None]] = []
    killed = asyncio.Event()
    # The last TAIL user messages of each chat wait for the last kill: the traffic lasts until
    # then, whatever the pace.
    talk = Conversations(c, per_chat, per_reply_chat, pace=4, tail=TAIL, go_on=killed)
    tally_in, tally_out = talk.users, talk.operators
    started = time.monotonic()

    async def restart(victim: BridgeProcess, kill: Kill) -> None:
        t0 = time.monotonic()
        await victim.start(c.http)
        kill.restart = round(time.monotonic() - t0, 2)
        ready.add(victim.name)

    async def killer() -> None:
        await eventually(lambda: tally_in.ok >= total // 20, timeout=60, what="warmed up")
        for _ in range(kill_count):
            await asyncio.sleep(rng.uniform(1.5, 2.5))
            # One replica at least stays up: a kill waits for a restart if need be.
            await eventually(lambda: len(ready) >= 2, timeout=60, what="two replicas ready")
            victim = rng.choice([r for r in c.replicas if r.name in ready])
            pid, acked = victim.runs[-1].proc.pid, tally_in.ok
            ready.discard(victim.name)
            await victim.kill()
            # What it held when it died: lanes whose head it had in flight, unsettled.
            orphaned = [lane for lane, holder in (await c.lane_leases()).items() if holder == pid]
            kills.append(Kill(victim.name, acked, len(orphaned)))
            restarts.append(asyncio.create_task(restart(victim, kills[-1])))
        await together(*restarts)
        killed.set()

    await together(*map(talk.user, chats), *map(talk.operator, chats), killer())
    sending = time.monotonic() - started
    sent = dict.fromkeys(chats, per_chat)
    replied = dict.fromkeys(chats, per_reply_chat)
    await c.settled(lambda: all_outcomes(c, sent), "outcomes")
    await c.settled(
        lambda: all(len(c.messenger.chat_log[chat]) == n for chat, n in replied.items()),
        "operator replies",
    )
    assert_delivered_once_in_order(c, sent, replied)
    order = c.outcome_order()
    for chat, n in sent.items():
        assert order[chat] == [mid(chat, i) for i in range(n)], chat
    depth = await c.drained()
    assert depth["dead"] == 0, depth
    # Every lane a dead replica held was taken over and settled: no lane lease is left.
    assert await c.lane_leases() == {}

    assert len(kills) == kill_count
    assert sum(k.orphaned for k in kills) > 0  # the dead held lanes, which others took over
    assert tally_in.ok == total and tally_out.ok == sum(replied.values())
    await stop_all(c)
    print(
        f"{total} user messages, {sum(replied.values())} operator replies over 3 replicas;"
        f" {len(kills)} kills (replica, acked so far, lanes taken over, seconds to ready):"
        f" {[(k.replica, k.acked, k.orphaned, k.restart) for k in kills]};"
        f" takeovers {sum(k.orphaned for k in kills)} of dead replicas' lanes,"
        f" {lost_leases(c)} of live replicas' (stalled past the lease);"
        f" sending {sending:.1f} s, total {time.monotonic() - started:.1f} s;"
        f" sender retries {tally_in.retries} ({tally_in.answers}),"
        f" operator retries {tally_out.retries} ({tally_out.answers});"
        f" repeats dropped at the receivers {c.repeats()}"
    )


# --- 2. a replica dies holding a lane's lease mid-delivery ----------------------------------


@pytest.mark.timeout(120)
async def test_a_lane_held_by_a_killed_replica_is_taken_over_after_its_lease(
    cluster: Cluster,
) -> None:
    c, cv = cluster, cluster.chatvisor
    # A long request timeout: the held call is slow, not failed (no retry of its own).
    await c.start(3, delivery={"request_timeout": 30})
    chat, tally = "held", Tally()
    await c.send_user(chat, 0, tally)
    await eventually(lambda: mid(chat, 0) in c.messenger.outcomes, timeout=20, what="linked")
    cv.hold = True  # the live chat records the next message but is slow to answer
    await c.send_user(chat, 1, tally)
    await c.send_user(chat, 2, tally)  # queued behind it, in the same lane
    await eventually(lambda: cv.holding == 1, timeout=20, what="the call held")
    ((lane, pid),) = (await c.lane_leases()).items()
    (victim,) = [r for r in c.replicas if r.runs[-1].proc.pid == pid]
    await asyncio.sleep(LEASE)  # renewed meanwhile: the lease outlives a renewal period
    assert await c.lane_leases() == {lane: pid}
    assert len(cv.message_ids) == 2 and cv.duplicates == 0

    await victim.kill()
    killed = time.monotonic()
    cv.hold = False
    cv.release.set()
    # Another replica takes the lane over once the lease has expired, and performs the same
    # item again: the same id, which the live chat drops as a repeat.
    await eventually(lambda: cv.duplicates == 1, timeout=3 * LEASE, what="the takeover")
    waited = time.monotonic() - killed
    assert waited > LEASE / 2, f"taken over {waited:.2f} s after the kill: before the expiry"
    sent = {chat: 3}
    await eventually(lambda: all_outcomes(c, sent), timeout=20, what="outcomes")
    assert victim.runs[-1].proc.returncode is not None  # it was the others' doing
    assert_delivered_once_in_order(c, sent)
    assert cv.duplicates == 1 and c.repeats()["outcomes"] == 0
    assert c.outcome_order()[chat] == [mid(chat, i) for i in range(3)]
    await c.drained()
    assert await c.lane_leases() == {}

    await victim.start(c.http)
    await stop_all(c)
    print(f"\ntaken over {waited:.2f} s after the kill (lease {LEASE} s); repeats {c.repeats()}")
