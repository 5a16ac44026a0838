"""How often the bridge calls out (issue 9, point 12): a `Retry-After` HTTP-date is honoured,
/readyz does not turn each request into a call to JivoChat, and a settle that cannot be
written is retried, not the outside call it settles."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from tests.conftest import World, eventually


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
