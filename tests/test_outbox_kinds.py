"""The outbox kinds' registry: every kind the worker performs has a target (its metrics
label), a call and a follow-up, and the groups the rest of the project asks about are derived
from it; a kind the registry does not know (stored by another release) is given up at once,
by the serving process and the delivery process alike, as it always was."""

from __future__ import annotations

import time
from functools import partial

import pytest

from bridge.core import outbox_kinds
from bridge.delivery.calls import CALLS
from bridge.delivery.settle import FOLLOW_UPS
from bridge.keys import DATABASE, WORKER
from storage import outbox
from tests.conftest import World, eventually
from tests.test_dead_letters import dead
from tests.test_delivery_process import delivery_process_ready
from tests.test_metrics import scrape, value


def test_every_performed_kind_has_a_call_a_target_and_a_follow_up() -> None:
    performed = {k.name for k in outbox_kinds.KINDS.values() if k.target is not None}
    assert performed == set(CALLS) == set(FOLLOW_UPS)
    for name in performed:
        assert callable(CALLS[name]) and callable(FOLLOW_UPS[name])
        assert outbox_kinds.target_of(name) in ("livechat", "messenger", "subscriber")
    # A kept reply is never performed: only an admin's retry routes it again.
    assert outbox.KEPT_REPLY not in CALLS and outbox.KEPT_REPLY not in FOLLOW_UPS


def test_the_groups_come_from_the_entries() -> None:
    # The names stored in the outbox, and the metrics' target labels, are as they always were.
    assert outbox_kinds.MESSAGE_KINDS == (
        "livechat.message",
        "messenger.message",
        "messenger.outcome",
        "messenger.read",
    )
    assert outbox_kinds.EVENT_KINDS == ("subscriber.event",)
    assert outbox_kinds.MESSAGE_DELIVERIES == ("livechat.message", "messenger.message")
    assert [k.name for k in outbox_kinds.KINDS.values() if k.held_per_channel] == [
        "messenger.message",
        "messenger.outcome",
        "messenger.read",
    ]
    assert outbox_kinds.target_of("operator.reply") == "operator"
    assert outbox_kinds.target_of("martian.probe") == "martian"


@pytest.mark.parametrize("worker", ["inline", "process"])
async def test_an_unknown_kind_in_the_outbox_is_given_up_at_once(world: World, worker: str) -> None:
    bridge = await world.start_bridge(delivery={"worker": worker})
    if worker == "process":
        await delivery_process_ready(world)
    assert bridge.app is not None
    item_id = await bridge.app[DATABASE].write(
        partial(outbox.enqueue, kind="martian.probe", lane="martian:1", now=time.time())
    )
    bridge.app[WORKER].wake()

    async def given_up() -> list[dict[str, object]]:
        return [item for item in await dead(world) if item["id"] == item_id]

    (item,) = await eventually(given_up, what="the unknown kind dead")
    assert item["kind"] == "martian.probe" and item["attempts"] == 1
    assert item["last_error"] == "unknown outbox kind 'martian.probe'"
    text = await scrape(world)
    assert value(text, 'bridge_deliveries_total{result="dead",target="martian"}') == 1
    if worker == "process":  # the delivery process made the call, not the serving process
        assert value(text, 'bridge_delivery_performed_total{process="delivery"}') == 1
