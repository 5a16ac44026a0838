"""`make demo`: the bridge on config.example.toml between simulated parties, two round trips.

The simulators listen where the example config points: the messenger at its webhook, the
Chatvisor-style live chat at its api_url, JivoChat at its chat_api_url and the subscriber at
its url. A second messenger, "shop", is attached to JivoChat for the demo. The database goes
to a temporary directory.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from yarl import URL

from bridge.app import create_app
from bridge.logs import configure_logging
from bridge.settings import ChatvisorSettings, JivochatSettings, LoggingSettings, load_settings
from connectors.sim.chatvisor import ChatvisorSim
from connectors.sim.jivochat import JivochatSim
from connectors.sim.messenger import MessengerSim
from connectors.sim.server import SimServer
from connectors.sim.subscriber import SubscriberSim


async def wait_for(check: Callable[[], object], what: str, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def main() -> None:
    example = load_settings(Path("config.example.toml"))
    with tempfile.TemporaryDirectory() as tmp:
        shop = example.messengers["acme"].model_copy(
            update={
                "name": "Web shop",
                "livechat": "sales",
                "webhook": "http://127.0.0.1:8094/hook",
            }
        )
        settings = example.model_copy(
            update={
                "storage": example.storage.model_copy(update={"path": f"{tmp}/demo.sqlite3"}),
                "messengers": {**example.messengers, "shop": shop},
            }
        )
        configure_logging(LoggingSettings(level="warning"), settings.secrets())
        acme = settings.messengers["acme"]
        support = settings.livechats["support"]
        sales = settings.livechats["sales"]
        assert isinstance(support, ChatvisorSettings) and isinstance(sales, JivochatSettings)
        subscription = settings.subscriptions[0]
        messenger = MessengerSim(acme.confirmation_code.get_secret_value())
        chatvisor = ChatvisorSim(support.api_token.get_secret_value())
        chatvisor.hook_url = f"{settings.server.public_url}/livechats/support/webhook/{support.hook_token.get_secret_value()}"
        jivo_url = URL(sales.chat_api_url.get_secret_value())
        jivochat = JivochatSim(path=jivo_url.path)
        jivochat.hook_url = f"{settings.server.public_url}/livechats/sales/webhook/{sales.hook_token.get_secret_value()}"
        shop_messenger = MessengerSim(shop.confirmation_code.get_secret_value())
        subscriber = SubscriberSim()
        servers = [
            SimServer(messenger.app, port=URL(acme.webhook).port or 80),
            SimServer(chatvisor.app, port=URL(support.api_url).port or 80),
            SimServer(jivochat.app, port=jivo_url.port or 80),
            SimServer(shop_messenger.app, port=URL(shop.webhook).port or 80),
            SimServer(subscriber.app, port=URL(subscription.url).port or 80),
        ]
        for server in servers:
            await server.start()
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.server.host, settings.server.port).start()
        try:
            async with aiohttp.ClientSession() as http:
                await wait_for(lambda: messenger.bridge_webhook, "the bridge's connect")
                print(f"1. bridge connected the messenger; it posts to {messenger.bridge_webhook}")
                await messenger.send_message(
                    http, "chat-42", "Hi! My order has not arrived.", user_id="alice"
                )
                await wait_for(lambda: chatvisor.customer_by_key, "the customer at the live chat")
                customer = next(iter(chatvisor.customer_by_key.values()))
                await wait_for(lambda: chatvisor.texts(customer), "the message at the live chat")
                print(f"2. live chat got {chatvisor.texts(customer)!r} from customer {customer}")
                await chatvisor.agent_reply(http, customer, "Sorry about that! It ships today.")
                await wait_for(lambda: messenger.chat_log["chat-42"], "the reply at the messenger")
                print(f"3. messenger got the operator's reply {messenger.chat_log['chat-42']!r}")
                print(f"4. delivery outcomes sent to the messenger: {messenger.outcomes}")

                await wait_for(
                    lambda: shop_messenger.bridge_webhook, "the shop messenger's connect"
                )
                await shop_messenger.send_message(
                    http, "order-7", "Where is order 7?", user_id="bob"
                )
                await wait_for(lambda: jivochat.client_messages, "the message at JivoChat")
                sent = jivochat.client_messages[0]
                print(
                    f"5. JivoChat got {sent['message']['text']!r} from client {sent['sender']['id']}"
                )
                _, answer = await jivochat.event(
                    http,
                    {
                        "event_name": "chat_accepted",
                        "chat_id": 9001,
                        "user_token": sent["sender"]["id"],
                        "agent": {"id": 2224, "name": "Thomas Anderson"},
                    },
                )
                print(
                    f"6. chat_accepted answered with contact {answer['contact_info']} and {answer['crm_link']}"
                )
                await jivochat.agent_message(
                    http, sent["sender"]["id"], "It left the warehouse today."
                )
                await wait_for(lambda: shop_messenger.chat_log["order-7"], "the agent's reply")
                print(f"7. shop messenger got {shop_messenger.chat_log['order-7']!r}")
                await jivochat.event(
                    http, {"event_name": "chat_finished", "chat_id": 9001, "agents": []}
                )
                await wait_for(lambda: subscriber.events, "the subscriber's event")
                headers, _ = subscriber.deliveries[0]
                print(
                    f"8. subscriber got a signed {subscriber.events[0]['type']!r} ({headers['webhook-signature'][:12]}...)"
                )
        finally:
            await runner.cleanup()
            for server in servers:
                await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
