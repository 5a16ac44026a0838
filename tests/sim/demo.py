"""`make demo`: the bridge on a config between simulated parties, a round trip per live chat.

`python -m tests.sim.demo [--config FILE]` reads the config the service would
(`--config`, else $BRIDGE_CONFIG, else ./config.toml, else config.example.toml) and plays every
other party where that config points: each messenger at its `webhook`, each Chatvisor-style
live chat at its `api_url`, each JivoChat at its `chat_api_url`, each subscriber at its `url`
(their hosts must be this machine's loopback). A live chat no messenger uses gets a demo
messenger of its own, on a free port. The bridge listens on `[server]`'s host and port; the
database goes to a temporary directory. It prints each round trip (a user's message to the
live chat, the operator's reply back to the user, the delivery outcome the messenger is told)
and exits 0, or says what failed and exits 1 (2 for a config it cannot play).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from bridge.app import create_app
from bridge.logs import configure_logging
from bridge.settings import (
    ChatvisorSettings,
    ConfigError,
    JivochatSettings,
    LoggingSettings,
    MessengerSettings,
    Settings,
    load_settings,
    resolve_config_path,
)
from tests.sim.chatvisor import ChatvisorSim
from tests.sim.jivochat import JivochatSim
from tests.sim.messenger import MessengerSim
from tests.sim.server import SimServer
from tests.sim.subscriber import SubscriberSim

LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
WAIT = 15.0  # seconds the demo waits for each step


class DemoError(Exception):
    """What the demo cannot do, said to the user (exit code 1)."""


class CannotPlay(DemoError):
    """A config the demo cannot play the parties of (exit code 2)."""


async def wait_for(check: Callable[[], object], what: str, seconds: float = WAIT) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise DemoError(f"timed out after {seconds:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Party:
    """One simulated party: what it is, and its server."""

    label: str
    server: SimServer

    @property
    def address(self) -> str:
        """Where it listens (host and port: a JivoChat URL's path is a secret)."""
        host = self.server.host
        return f"{f'[{host}]' if ':' in host else host}:{self.server.port}"


def place(key: str, url: str, app: web.Application, own_path: str) -> SimServer:
    """A server for `app` at `url`'s host and port, answering `own_path` (the simulator's
    route) at `url`'s path. Raises CannotPlay when `url` is not on this machine or its path
    cannot be served."""
    parsed = URL(url)
    if parsed.host not in LOOPBACK:
        raise CannotPlay(f"{key}: {parsed.host} is not this machine; the demo plays it locally")
    path = parsed.path.rstrip("/")
    if path != own_path:
        if not path.endswith(own_path):
            raise CannotPlay(f"{key}: the simulator answers at a path ending in {own_path}")
        outer = web.Application()
        outer.add_subapp(path[: -len(own_path)], app)
        app = outer
    port = parsed.port if parsed.port is not None else (443 if parsed.scheme == "https" else 80)
    host = parsed.host.strip("[]")
    return SimServer(app, host=host, port=port)


class Demo:
    def __init__(self, settings: Settings, config_name: str) -> None:
        self.settings = settings
        self.config_name = config_name
        self.parties: list[Party] = []
        self.messengers: dict[str, MessengerSim] = {}
        self.chatvisors: dict[str, ChatvisorSim] = {}
        self.jivochats: dict[str, JivochatSim] = {}
        self.subscribers: list[SubscriberSim] = []
        self.messenger_settings: dict[str, MessengerSettings] = {}
        self.bridge_url = ""
        self.tmp = ""

    def build(self, tmp: str) -> None:
        """The simulated parties from the config, and the settings the bridge runs on (the
        database in `tmp`, public_url where it listens here, the added demo messengers)."""
        settings = self.settings
        host = settings.server.host
        local = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        bridge_url = f"http://{f'[{local}]' if ':' in local else local}:{settings.server.port}"
        messengers = dict(settings.messengers)
        used = {m.livechat for m in messengers.values() if m.enabled}
        for lc_id in settings.livechats:
            if lc_id not in used:
                # The first messenger's code and options, on a port the OS gives.
                template = next(iter(messengers.values()), None)
                if template is None:
                    raise CannotPlay("messengers: the config has none")
                messengers[f"demo-{lc_id}"] = template.model_copy(
                    update={
                        "name": f"Demo messenger for {lc_id}",
                        "livechat": lc_id,
                        "webhook": "http://127.0.0.1:0/hook",
                        "enabled": True,
                    }
                )
        for m_id, messenger in messengers.items():
            sim = self.messengers[m_id] = MessengerSim(
                messenger.confirmation_code.get_secret_value()
            )
            server = place(f"messengers.{m_id}.webhook", messenger.webhook, sim.app, "/hook")
            self.parties.append(Party(f"messenger {m_id}", server))
        for lc_id, lc in settings.livechats.items():
            hook = f"{bridge_url}/livechats/{lc_id}/webhook/{lc.hook_token.get_secret_value()}"
            if isinstance(lc, ChatvisorSettings):
                cv = self.chatvisors[lc_id] = ChatvisorSim(lc.api_token.get_secret_value())
                cv.hook_url = hook
                server = place(f"livechats.{lc_id}.api_url", lc.api_url, cv.app, "/rest/v1")
            else:
                assert isinstance(lc, JivochatSettings)
                url = lc.chat_api_url.get_secret_value()
                jv = self.jivochats[lc_id] = JivochatSim(path=URL(url).path)
                jv.hook_url = hook
                server = place(f"livechats.{lc_id}.chat_api_url", url, jv.app, URL(url).path)
            self.parties.append(Party(f"live chat {lc_id} ({lc.kind})", server))
        for index, sub in enumerate(settings.subscriptions):
            subscriber = SubscriberSim()
            self.subscribers.append(subscriber)
            server = place(f"subscriptions.{index}.url", sub.url, subscriber.app, "/events")
            self.parties.append(Party(f"subscriber {index}", server))
        self.messenger_settings = messengers
        self.bridge_url = bridge_url
        self.tmp = tmp

    def bridge_settings(self) -> Settings:
        settings = self.settings
        messengers = dict(self.messenger_settings)
        for m_id in messengers:
            if m_id not in settings.messengers:  # its port is known once its server listens
                server = next(p.server for p in self.parties if p.label == f"messenger {m_id}")
                messengers[m_id] = messengers[m_id].model_copy(
                    update={"webhook": f"http://127.0.0.1:{server.port}/hook"}
                )
        return settings.model_copy(
            update={
                "server": settings.server.model_copy(update={"public_url": self.bridge_url}),
                "storage": settings.storage.model_copy(update={"path": f"{self.tmp}/demo.sqlite3"}),
                "messengers": messengers,
            }
        )

    async def start_parties(self) -> None:
        for party in self.parties:
            try:
                await party.server.start()
            except OSError as exc:
                raise DemoError(
                    f"cannot listen on {party.address} for {party.label}: {exc}"
                ) from None

    async def stop_parties(self) -> None:
        for party in self.parties:
            await party.server.stop()

    def print_parties(self) -> None:
        print(f"messenger-bridge demo on {self.config_name}; every other party is simulated here")
        print(f"  {'the bridge':<30}{self.bridge_url}")
        for party in self.parties:
            added = " (added by the demo)" if party.label.split()[-1].startswith("demo-") else ""
            print(f"  {party.label:<30}{party.address}{added}")

    async def round_trip(self, http: aiohttp.ClientSession, lc_id: str, number: int) -> None:
        """A user's message through a messenger of `lc_id` to it, and the operator's reply back."""
        m_id = next(
            m for m, s in self.messenger_settings.items() if s.livechat == lc_id and s.enabled
        )
        messenger = self.messengers[m_id]
        chat, user, message_id = f"chat-{number}", f"user-{number}", f"demo-{number}"
        text, reply = "Hi! My order has not arrived.", "Sorry about that! It ships today."
        print(f"\nRound trip {number}: messenger {m_id} <-> live chat {lc_id}")
        await wait_for(lambda: messenger.bridge_webhook, f"the bridge's connect to {m_id}")
        print(
            f"  1. the bridge connected messenger {m_id}, which posts to {messenger.bridge_webhook}"
        )
        status, answer = await messenger.send_message(
            http, chat, text, user_id=user, message_id=message_id
        )
        if status != 200:
            raise DemoError(f"the bridge answered the user's message {status}: {answer}")
        print(f"  2. user {user} wrote in {m_id}, chat {chat}: {text!r} (the bridge: 200)")
        key = f"{m_id}:{chat}"
        if lc_id in self.chatvisors:
            cv = self.chatvisors[lc_id]
            await wait_for(lambda: cv.texts(cv.customer_by_key.get(key, "")), "the live chat")
            customer = cv.customer_by_key[key]
            print(f"  3. live chat {lc_id} got {cv.texts(customer)[-1]!r} from customer {customer}")
            await cv.agent_reply(http, customer, reply)
        else:
            jv = self.jivochats[lc_id]
            await wait_for(lambda: jv.texts(key), "JivoChat")
            print(f"  3. JivoChat {lc_id} got {jv.texts(key)[-1]!r} from client {key}")
            accepted = {
                "event_name": "chat_accepted",
                "chat_id": 9000 + number,
                "user_token": key,
                "agent": {"id": 2224, "name": "Thomas Anderson"},
            }
            await jv.event(http, accepted)
            await jv.agent_message(http, key, reply)
        print(f"  4. the operator answered: {reply!r}")
        await wait_for(lambda: messenger.chat_log[chat], f"the reply at messenger {m_id}")
        print(f"  5. messenger {m_id} got it for chat {chat}: {messenger.chat_log[chat][-1]!r}")
        await wait_for(lambda: message_id in messenger.outcomes, "the delivery outcome")
        outcome = "delivered" if messenger.outcomes[message_id] else "FAILED"
        print(f"  6. outcome: messenger {m_id} was told the user's message was {outcome}")
        if not messenger.outcomes[message_id]:
            raise DemoError(f"the user's message was not delivered to live chat {lc_id}")
        if lc_id in self.jivochats:
            await self.jivochats[lc_id].event(
                http, {"event_name": "chat_finished", "chat_id": 9000 + number, "agents": []}
            )
            await self.tell_subscribers(lc_id)

    async def tell_subscribers(self, lc_id: str) -> None:
        """After a JivoChat `chat_finished`: each subscriber that wants it got it, signed."""
        subscriptions = self.settings.subscriptions
        for index, subscriber in enumerate(self.subscribers):
            if not subscriptions[index].wants(lc_id, "chat_finished"):
                continue

            def finished(subscriber: SubscriberSim = subscriber) -> bool:
                return any(event["type"] == "chat_finished" for event in subscriber.events)

            await wait_for(finished, f"subscriber {index}'s chat_finished")
            headers = subscriber.deliveries[-1][0]
            print(
                f"  7. the chat finished; subscriber {index} got a signed 'chat_finished'"
                f" ({headers['webhook-signature'][:12]}...)"
            )

    async def run(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            self.build(tmp)
            await self.start_parties()
            runner: web.AppRunner | None = None
            try:
                settings = self.bridge_settings()
                configure_logging(LoggingSettings(level="error"), settings.secrets())
                self.print_parties()
                runner = web.AppRunner(create_app(settings), access_log=None)
                await runner.setup()
                try:
                    await web.TCPSite(runner, settings.server.host, settings.server.port).start()
                except OSError as exc:
                    raise DemoError(
                        f"the bridge cannot listen on {self.bridge_url}: {exc}"
                    ) from None
                async with aiohttp.ClientSession() as http:
                    for number, lc_id in enumerate(settings.livechats, 1):
                        await self.round_trip(http, lc_id, number)
            finally:
                if runner is not None:
                    await runner.cleanup()
                await self.stop_parties()
        print(f"\nDone: {len(self.settings.livechats)} round trip(s), each delivered both ways.")
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim.demo", description=__doc__)
    parser.add_argument("--config", help="TOML file (default: as `messenger-bridge serve`)")
    args = parser.parse_args(argv)
    path = resolve_config_path(args.config)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if not settings.livechats:
        print("demo: livechats: the config has none", file=sys.stderr)
        return 2
    try:
        return asyncio.run(Demo(settings, str(path)).run())
    except CannotPlay as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
