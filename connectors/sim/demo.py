"""`make demo`: the bridge on config.example.toml between the two simulators, one round trip.

The simulated messenger listens where the example config's webhook points and the simulated
live chat where its api_url points; the database goes to a temporary directory.
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
from bridge.settings import ChatvisorSettings, LoggingSettings, load_settings
from connectors.sim.chatvisor import ChatvisorSim
from connectors.sim.messenger import MessengerSim
from connectors.sim.server import SimServer


async def wait_for(check: Callable[[], object], what: str, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise SystemExit(f"demo: timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def main() -> None:
    example = load_settings(Path("config.example.toml"))
    with tempfile.TemporaryDirectory() as tmp:
        settings = example.model_copy(
            update={"storage": example.storage.model_copy(update={"path": f"{tmp}/demo.sqlite3"})}
        )
        configure_logging(LoggingSettings(level="warning"), settings.secrets())
        acme = settings.messengers["acme"]
        support = settings.livechats["support"]
        assert isinstance(support, ChatvisorSettings), "the demo plays a Chatvisor-style live chat"
        messenger = MessengerSim(acme.confirmation_code.get_secret_value())
        chatvisor = ChatvisorSim(support.api_token.get_secret_value())
        chatvisor.hook_url = f"{settings.server.public_url}/livechats/support/webhook/{support.hook_token.get_secret_value()}"
        servers = [
            SimServer(messenger.app, port=URL(acme.webhook).port or 80),
            SimServer(chatvisor.app, port=URL(support.api_url).port or 80),
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
        finally:
            await runner.cleanup()
            for server in servers:
                await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
