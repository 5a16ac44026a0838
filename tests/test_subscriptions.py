"""Event subscriptions: signed per Standard Webhooks, durable, ordered, filtered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge.settings import ConfigError, settings_from_dict
from tests.conftest import SUBSCRIPTION_SECRETS, Jivo, World, eventually, seed
from tests.sim.server import SimServer
from tests.sim.subscriber import SubscriberSim

SECRET_ALL, SECRET_FINISHED = SUBSCRIPTION_SECRETS


class Subscribers:
    def __init__(self) -> None:
        self.all, self.finished = SubscriberSim(), SubscriberSim()
        self.servers = [SimServer(self.all.app), SimServer(self.finished.app)]

    def config(self) -> list[dict[str, Any]]:
        return [
            {"url": f"{self.servers[0].url}/events", "secret": SECRET_ALL, "events": "*"},
            {
                "url": f"{self.servers[1].url}/events",
                "secret": SECRET_FINISHED,
                "events": ["chat_finished", "offline_message"],
                "livechat": "sales",
            },
        ]


@pytest.fixture
async def subs() -> AsyncIterator[Subscribers]:
    s = Subscribers()
    for server in s.servers:
        await server.start()
    yield s
    for server in s.servers:
        await server.stop()


async def test_events_are_signed_and_filtered(jivo: Jivo, subs: Subscribers) -> None:
    await jivo.start(subscriptions=subs.config())
    for name in ("chat_accepted", "offline_message", "chat_finished", "call_event"):
        assert (await jivo.sim.event(jivo.http, seed(name)))[0] == 200
    await eventually(lambda: len(subs.all.events) == 4, what="all four at the '*' subscriber")
    await eventually(lambda: len(subs.finished.events) == 2, what="two at the filtered one")
    assert [e["type"] for e in subs.all.events] == [
        "chat_accepted",
        "offline_message",
        "chat_finished",
        "call_event",
    ]
    assert [e["type"] for e in subs.finished.events] == ["offline_message", "chat_finished"]
    for sim, secret in ((subs.all, SECRET_ALL), (subs.finished, SECRET_FINISHED)):
        for headers, body in sim.deliveries:
            Webhook(secret).verify(body, headers)  # raises on a bad signature
    event = subs.all.events[1]
    assert event["data"]["livechat"] == "sales" and event["data"]["livechat_kind"] == "jivochat"
    assert event["data"]["payload"] == seed("offline_message")
    with pytest.raises(WebhookVerificationError):
        headers, body = subs.all.deliveries[0]
        Webhook(SECRET_FINISHED).verify(body, headers)


async def test_delivered_after_the_subscriber_was_down_and_a_restart(
    world: World, jivo: Jivo, subs: Subscribers
) -> None:
    await jivo.start(subscriptions=subs.config())
    await subs.servers[0].stop()
    subs.all.fail_with = None
    names = ["chat_accepted", "chat_updated", "offline_message", "call_event", "chat_assigned"]
    for name in names:
        await jivo.sim.event(jivo.http, seed(name))
    await world.bridge.stop()
    await jivo.start(subscriptions=subs.config())  # the same database: the items are still there
    await subs.servers[0].start()
    await eventually(
        lambda: [e["type"] for e in subs.all.events] == names, what="in order after the outage"
    )
    assert len(subs.all.deliveries) == len(names)


async def test_retries_keep_the_same_webhook_id(jivo: Jivo, subs: Subscribers) -> None:
    await jivo.start(subscriptions=subs.config())
    subs.all.fail_with = 500
    await jivo.sim.event(jivo.http, seed("call_event"))
    await eventually(lambda: len(subs.all.refused_ids) >= 3, what="several refused attempts")
    subs.all.fail_with = None
    await eventually(lambda: subs.all.deliveries, what="accepted at last")
    ((headers, _),) = subs.all.deliveries
    assert set(subs.all.refused_ids) == {headers["webhook-id"]}


async def test_chatvisor_events_reach_subscribers_too(running: World, subs: Subscribers) -> None:
    await running.bridge.stop()
    sales = {"kind": "jivochat", "chat_api_url": "http://127.0.0.1:9/a/b", "hook_token": "h" * 8}
    await running.start_bridge(subscriptions=subs.config(), livechats={"sales": sales})
    await running.messenger.send_message(running.http, "s1", "hi")
    customer = await running.customer_id("s1")
    await running.chatvisor.set_status(running.http, customer, "DONE")
    await eventually(lambda: subs.all.events, what="conversation.status at '*'")
    (event,) = subs.all.events
    assert event["type"] == "conversation.status"
    assert event["data"]["messenger"] == "acme" and event["data"]["chat_id"] == "s1"
    assert subs.finished.events == []  # filtered by live chat and name


def base_config() -> dict[str, Any]:
    return {
        "admin": {"token": "t" * 12},
        "livechats": {
            "sales": {
                "kind": "jivochat",
                "chat_api_url": "https://wh.jivosite.com/a/b",
                "hook_token": "h",
            }
        },
    }


@pytest.mark.parametrize(
    ("subscription", "problem"),
    [
        (
            {"url": "http://x/e", "secret": "plain", "events": "*"},
            "subscriptions.0.secret: must be a Standard Webhooks secret",
        ),
        ({"url": "http://x/e", "secret": SECRET_ALL, "events": []}, "subscriptions.0.events"),
        (
            {"url": "nope", "secret": SECRET_ALL, "events": "*"},
            "subscriptions.0.url: must be an absolute",
        ),
        (
            {"url": "http://x/e", "secret": SECRET_ALL, "events": "*", "livechat": "zz"},
            "subscriptions.0.livechat: unknown live chat 'zz'",
        ),
        ({"url": "http://x/e", "events": "*"}, "subscriptions.0.secret: required key is missing"),
    ],
)
def test_subscription_config_errors(subscription: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_dict({**base_config(), "subscriptions": [subscription]})
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


def test_two_subscriptions_to_one_url_need_ids() -> None:
    sub = {"url": "http://x/e", "secret": SECRET_ALL, "events": "*"}
    with pytest.raises(ConfigError) as info:
        settings_from_dict({**base_config(), "subscriptions": [sub, sub]})
    assert info.value.problems == [
        "subscriptions.1: same id as subscriptions.0 (two subscriptions to one URL need distinct `id`s)"
    ]
    settings_from_dict({**base_config(), "subscriptions": [{**sub, "id": "a"}, {**sub, "id": "b"}]})
