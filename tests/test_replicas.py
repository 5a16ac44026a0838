"""Several replicas of the bridge on one PostgreSQL database (tests/pg.py), in this process:
per-lane order while their workers race, a dead replica's lease taken over and its item
performed again with the same id, NOTIFY waking another replica's worker, one reconnect runner
per channel, held items released once, one session per chat whoever opens it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
import structlog

from bridge.delivery import worker as worker_module
from bridge.keys import RELAY, WORKER
from bridge.settings import settings_from_dict
from storage import chats, leases, outbox
from storage.port import Connection
from tests import stored
from tests.conftest import ADMIN_TOKEN, CODE, Bridge, World, bound_socket, eventually, make_config
from tests.sim.server import post_json

pytest.importorskip("psycopg", reason="the PostgreSQL driver is not installed")

from storage.postgres import PostgresStore

# Replicas share one PostgreSQL database: there is no SQLite variant of these tests.
pytestmark = pytest.mark.backends("postgres")


class Replicas:
    """`n` bridges on one database, one public URL (the first's, as behind a load balancer)."""

    def __init__(self, world: World, dsn: str) -> None:
        self.world, self.dsn = world, dsn
        self.bridges: list[Bridge] = []
        self._ids = itertools.count(1)

    async def start(self, n: int, *, wait_active: bool = True, **over: Any) -> list[Bridge]:
        socks = [bound_socket() for _ in range(n)]
        ports = [s.getsockname()[1] for s in socks]
        public = f"http://127.0.0.1:{ports[0]}"
        delivery = {"worker": "inline", **over.pop("delivery", {})}
        for sock, port in zip(socks, ports, strict=True):
            config = make_config(
                self.world.tmp_path,
                port,
                self.world.messenger_server.url,
                self.world.chatvisor_server.url,
                server={"port": port, "public_url": public},
                storage={"backend": "postgres", "dsn": self.dsn, "pool_max": 8},
                delivery=delivery,
                **over,
            )
            bridge = Bridge(settings_from_dict(config), sock)
            await bridge.start()
            self.bridges.append(bridge)
        self.world.chatvisor.hook_url = self.bridges[0].hook_url()
        if wait_active:
            for bridge in self.bridges:
                await eventually(lambda b=bridge: b.state() == "active", what="channel active")
        return self.bridges

    async def stop(self) -> None:
        for bridge in self.bridges:
            await bridge.stop()

    async def customer_id(self, chat: str) -> str:
        """The chat's live-chat customer id, once the bridge has stored it."""

        async def linked() -> str | None:
            row = await stored.chat(self.bridges[0].store, chat)
            return row.customer_id if row is not None else None

        customer: str = await eventually(linked, what=f"{chat}'s customer stored")
        return customer

    async def user_says(self, bridge: Bridge, chat: str, text: str) -> int:
        """A messenger user's message, posted to this replica (as a load balancer would)."""
        body = {
            "type": "message",
            "token": CODE,
            "data": {
                "externalMessageId": f"r{next(self._ids)}",
                "externalChatId": chat,
                "externalUserId": f"user-{chat}",
                "text": text,
            },
        }
        status, _ = await post_json(self.world.http, f"{bridge.url}/messengers/acme/webhook", body)
        return status


@pytest.fixture
async def replicas(world: World, pg_dsn: str) -> AsyncIterator[Replicas]:
    r = Replicas(world, pg_dsn)
    yield r
    await r.stop()


async def test_per_lane_order_holds_while_three_replicas_workers_race(
    world: World, replicas: Replicas
) -> None:
    bridges = await replicas.start(3)
    world.chatvisor.delay = 0.01  # each call takes a while: the other workers look meanwhile
    chats = [f"chat-{i}" for i in range(4)]
    sent: dict[str, list[str]] = {chat: [] for chat in chats}

    async def one_chat(chat: str) -> None:
        for i in range(15):  # one after another (each acked), spread over the replicas
            text = f"{chat} #{i}"
            assert await replicas.user_says(bridges[i % 3], chat, text) == 200
            sent[chat].append(text)

    with structlog.testing.capture_logs() as logs:
        await asyncio.gather(*(one_chat(chat) for chat in chats))
        total = sum(len(v) for v in sent.values())
        await eventually(
            lambda: len(world.chatvisor.all_texts()) >= total, timeout=30, what="all delivered"
        )
    # Lanes passed from replica to replica as each settles (and lets go): no takeover.
    assert not [e for e in logs if e["event"] == "delivery.lanes_taken_over"]
    for chat in chats:
        customer = world.chatvisor.customer_by_key[f"acme:{chat}"]
        assert world.chatvisor.texts(customer) == sent[chat]
    assert world.chatvisor.duplicates == 0
    assert len(world.chatvisor.all_texts()) == total


async def test_a_dead_replicas_lease_expires_and_another_performs_its_item_with_the_same_id(
    pg_dsn: str,
) -> None:
    a, b = PostgresStore(pg_dsn), PostgresStore(pg_dsn)
    await a.open()
    await b.open()
    try:

        def queue(conn: Connection) -> int:
            first = outbox.enqueue(conn, kind="message.in", lane="lc:1", now=0, payload={"n": 1})
            outbox.enqueue(conn, kind="message.in", lane="lc:1", now=0, payload={"n": 2})
            return first

        first = await a.write(queue)

        def claim(holder: str, conn: Connection) -> list[outbox.OutboxItem]:
            return outbox.claim_ready(
                conn, time.time(), 10, (), 0, holder=holder, lease_seconds=1.0
            )

        claimed = await a.write(partial(claim, "replica-a"))
        assert [item.id for item in claimed] == [first]
        # While replica A's lease lasts, B claims nothing of the lane (not even the next item).
        assert await b.write(partial(claim, "replica-b")) == []
        # A renews while its call goes on: B still cannot take the lane.
        await asyncio.sleep(0.6)
        renewed = await a.write(
            partial(leases.renew, names=["lane:lc:1"], holder="replica-a", seconds=1.0)
        )
        assert renewed == {"lane:lc:1"}
        await asyncio.sleep(0.6)
        assert await b.write(partial(claim, "replica-b")) == []
        # A dies (renews no more): once its lease expires, B claims the same item, same id and
        # payload, to perform it again.
        await asyncio.sleep(1.1)
        again = await b.write(
            partial(
                outbox.claim_leased,
                now=time.time(),
                limit=10,
                busy=(),
                n_busy=0,
                holder="replica-b",
                lease_seconds=1.0,
            )
        )
        assert [(item.id, item.payload) for item in again.items] == [(first, {"n": 1})]
        assert again.taken_over == {"lc:1": "replica-a"}  # said so: A's lease had expired
        # A's late settle of it, were it to come, finds it still pending at most once.
        assert await a.write(partial(outbox.complete, item_id=first)) is True
        assert await b.write(partial(outbox.complete, item_id=first)) is False
    finally:
        await a.close()
        await b.close()


async def test_a_lane_leased_by_a_dead_replica_is_delivered_once_the_lease_expires(
    world: World, replicas: Replicas
) -> None:
    (bridge,) = await replicas.start(1, delivery={"lease_seconds": 1.5})
    # A replica that died holding the lane of the first chat's messages (chat id 1).
    await bridge.store.write(
        partial(leases.acquire, names=["lane:lc:1"], holder="dead-replica", seconds=1.5)
    )
    started = time.monotonic()
    assert await replicas.user_says(bridge, "c1", "after the takeover") == 200
    await eventually(lambda: world.chatvisor.all_texts(), timeout=10, what="delivered")
    assert time.monotonic() - started > 1.0  # not before the dead replica's lease expired
    assert world.chatvisor.all_texts() == ["after the takeover"]


async def test_a_replica_taking_over_a_stopped_replicas_lane_warns_and_counts_it(
    world: World, replicas: Replicas
) -> None:
    world.chatvisor.delay = 1.8  # A's call hangs (under delivery.request_timeout, 2 s)
    (a,) = await replicas.start(1, delivery={"lease_seconds": 1.5})
    assert await replicas.user_says(a, "c1", "hello") == 200
    await eventually(lambda: world.chatvisor.message_calls >= 1, what="A's call in flight")
    held = await a.store.fetch_all("SELECT name, holder FROM leases WHERE name LIKE 'lane:%'")
    assert len(held) == 1
    a_holder = held[0]["holder"]
    lane = held[0]["name"].removeprefix("lane:")
    (head,) = [i["id"] for i in await stored.outbox_items(a.store, "pending") if i["lane"] == lane]
    _, b = await replicas.start(1, delivery={"lease_seconds": 1.5})  # both, A first
    with structlog.testing.capture_logs() as logs:
        # A's worker stops mid-call, as if A had died: it neither settles nor renews the lease.
        await a.app[WORKER].stop()
        world.chatvisor.delay = 0.0
        await eventually(
            lambda: world.chatvisor.all_texts() == ["hello"], timeout=10, what="B delivered"
        )
    warned = [e for e in logs if e["event"] == "delivery.lanes_taken_over"]
    assert len(warned) == 1, logs
    assert warned[0]["log_level"] == "warning"
    assert warned[0]["count"] == 1
    assert warned[0]["previous_holders"] == [a_holder]
    assert warned[0]["items"] == [head]  # the one A had in flight, performed again by B
    assert "same ids" in warned[0]["effect"]
    assert await _takeovers(world, b) == 1.0
    assert await _takeovers(world, a) == 0.0


async def _takeovers(world: World, bridge: Bridge) -> float:
    async with world.http.get(f"{bridge.url}/metrics") as resp:
        text = await resp.text()
    (line,) = [x for x in text.splitlines() if x.startswith("bridge_lane_takeovers_total ")]
    return float(line.split()[1])


async def test_a_notify_wakes_another_replicas_worker_well_before_its_poll(
    world: World, replicas: Replicas, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An idle worker looks again only after an hour: a delivery within the test's wait can
    # only come from a notification (no timing assertion, whatever the machine's load).
    monkeypatch.setattr(worker_module, "MAX_IDLE", 3600.0)
    a, _b = await replicas.start(2)
    await a.app[WORKER].stop()  # only B delivers: it learns of A's items by notification
    for i in range(5):
        await asyncio.sleep(0.3)  # B's worker idles
        assert await replicas.user_says(a, "c1", f"m{i}") == 200
        await eventually(lambda i=i: len(world.chatvisor.all_texts()) > i, what=f"m{i}")


async def test_one_replica_at_a_time_runs_a_channels_reconnect_attempts(
    world: World, replicas: Replicas
) -> None:
    world.messenger.fail_types["connect"] = 500
    world.messenger.delay_types["connect"] = 0.15  # an attempt takes a while: overlaps show
    await replicas.start(2, wait_active=False)

    def in_flight() -> int:
        return world.messenger.attempts["connect"] - world.messenger.refused.count("connect")

    most = 0
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        most = max(most, in_flight())
        await asyncio.sleep(0.005)
    assert most == 1
    assert world.messenger.attempts["connect"] >= 3
    # The runner connects; the other replica sees the channel active too.
    del world.messenger.fail_types["connect"]
    for bridge in replicas.bridges:
        await eventually(lambda b=bridge: b.state() == "active", what="active everywhere")


async def test_held_replies_are_released_once_when_two_replicas_connect_at_once(
    world: World, replicas: Replicas
) -> None:
    a, b = await replicas.start(2)
    assert await replicas.user_says(a, "c1", "hello") == 200
    customer = await replicas.customer_id("c1")
    await eventually(lambda: world.chatvisor.all_texts(), what="delivered")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with world.http.post(f"{a.url}/admin/messengers/acme/disconnect", headers=admin) as r:
        assert r.status == 200
    await eventually(lambda: b.state() == "disconnected", what="B sees the disconnect")
    for i in range(3):
        status, _ = await world.chatvisor.agent_reply(world.http, customer, f"held {i}")
        assert status == 200

    async def connect(bridge: Bridge) -> int:
        async with world.http.post(
            f"{bridge.url}/admin/messengers/acme/connect", headers=admin
        ) as resp:
            return resp.status

    with structlog.testing.capture_logs() as logs:
        assert await asyncio.gather(connect(a), connect(b)) == [200, 200]
        await eventually(
            lambda: len(world.messenger.chat_log["c1"]) == 3, what="held replies delivered"
        )
    released = [e["held"] for e in logs if e["event"] == "channel.held_released"]
    # The three are released by whichever connect makes the channel active first. A connect
    # that commits after that is a connect of its own (connecting, then active again): it
    # holds and releases again what is still pending by then (up to the same three, if none
    # was delivered yet), and nothing is delivered twice (below).
    assert released and released[0] == 3 and all(n <= 3 for n in released[1:])
    assert world.messenger.chat_log["c1"] == ["held 0", "held 1", "held 2"]
    assert world.messenger.duplicates == 0


async def test_two_replicas_opening_a_session_for_one_chat_at_once_open_one(
    world: World, replicas: Replicas
) -> None:
    a, b = await replicas.start(2)
    chats = [f"race-{i}" for i in range(8)]
    # Known chats whose sessions are closed: the next message opens one, on whichever replica.
    for chat in chats:
        assert await replicas.user_says(a, chat, f"{chat} first") == 200
    for chat in chats:
        customer = await replicas.customer_id(chat)
        assert (await world.chatvisor.set_status(world.http, customer, "DONE"))[0] == 200
    for chat in chats:
        await eventually(lambda chat=chat: _all_closed(a, chat), what=f"{chat}'s session closed")
    statuses = await asyncio.gather(
        *(
            replicas.user_says(bridge, chat, f"{chat} via {n}")
            for chat in chats
            for n, bridge in enumerate((a, b))
        )
    )
    assert set(statuses) == {200}
    for chat in chats:
        sessions = await stored.sessions(a.store, chat)
        assert [s["status"] for s in sessions] == ["closed", "open"], chat


async def _all_closed(bridge: Bridge, chat: str) -> bool:
    sessions = await stored.sessions(bridge.store, chat)
    return bool(sessions) and all(s["status"] == "closed" for s in sessions)


async def test_a_lost_listen_connection_is_reconnected_and_wakes_again(
    world: World, replicas: Replicas, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    monkeypatch.setattr(worker_module, "MAX_IDLE", 3600.0)  # only a notification wakes B
    a, _b = await replicas.start(2)
    await a.app[WORKER].stop()
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:

        async def listening() -> bool:  # each replica's listener connects after its start
            cur = await admin.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'messenger-bridge listen'"
            )
            row = await cur.fetchone()
            return row is not None and row[0] == 2

        await eventually(listening, what="both replicas listening")
        cur = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'messenger-bridge listen'"
        )
        row = await cur.fetchone()
        assert row is not None and row[0] == 2  # each replica's listening connection
    await asyncio.sleep(0.8)  # the first reconnect comes within 0.2 s
    for i in range(3):
        await asyncio.sleep(0.3)
        assert await replicas.user_says(a, "c1", f"m{i}") == 200
        await eventually(lambda i=i: len(world.chatvisor.all_texts()) > i, what=f"m{i}")


async def test_a_reply_that_comes_while_another_replica_links_its_customer_is_not_orphaned(
    world: World, replicas: Replicas
) -> None:
    a, b = await replicas.start(2)
    for bridge in (a, b):  # nothing is delivered: the chat stays unlinked until A links it below
        await bridge.app[WORKER].stop()
    assert await replicas.user_says(a, "c1", "hello") == 200
    chat = await stored.chat(a.store, "c1")
    assert chat is not None and chat.customer_id is None
    relay, linked, go = a.app[RELAY], threading.Event(), threading.Event()

    def settle(conn: Connection) -> None:
        # Replica A's settle of the chat's first delivery, held open before its commit: the
        # customer's id stored, and the replies kept for that customer taken.
        chats.set_customer(conn, chat.id, "cust-late", None)
        relay.adopt_orphans(conn, chat.id)
        linked.set()
        go.wait(10)

    settling = asyncio.create_task(a.store.write(settle))
    assert await asyncio.to_thread(linked.wait, 10)
    # Meanwhile the operator's reply reaches replica B, which cannot see the link yet.
    replying = asyncio.create_task(
        world.chatvisor.agent_reply(
            world.http, "cust-late", "early reply", message_id="x1", url=b.hook_url()
        )
    )
    await asyncio.sleep(0.5)
    go.set()
    await settling
    assert (await replying)[0] == 200
    # Not kept as an orphan that A's take, already run, would never see again: queued.
    assert await stored.orphans(a.store) == []
    items = await stored.outbox_items(a.store, "pending")
    assert [i["kind"] for i in items] == [outbox.TO_LIVECHAT, outbox.TO_MESSENGER]
    replies = [m["text"] for m in await stored.all_messages(a.store) if m["direction"] == "out"]
    assert replies == ["early reply"]
