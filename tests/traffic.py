"""Traffic for the fault tests (test_faults, test_replica_faults): the ids and texts of each
chat's messages both ways, senders that keep each message until it gets a 200, a live chat that
holds its answers, and what must hold at the receivers afterwards: every acknowledged message
there once, in per-chat order, with its outcome.

The receivers drop repeats by the stable ids the bridge sends (shared/protocols): the live chat
by a customer message's `id`, the messenger by an operator message's `data.messageId`; an
outcome is keyed by `data.messageId`, the messenger's own `externalMessageId`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
from aiohttp import web

from tests.conftest import eventually
from tests.procs import Tally, post, until_200, user_message
from tests.sim.chatvisor import ChatvisorSim
from tests.sim.messenger import MessengerSim


class Parties(Protocol):
    """The two simulated parties of a fault test, and the live chat's customer id of a chat."""

    @property
    def messenger(self) -> MessengerSim: ...

    @property
    def chatvisor(self) -> ChatvisorSim: ...

    def customer(self, chat: str) -> str: ...


class Senders(Parties, Protocol):
    """The parties, with a sender for each way (`send_user`, `send_reply` below)."""

    async def send_user(self, chat: str, index: int, tally: Tally) -> None: ...

    async def send_reply(self, chat: str, index: int, tally: Tally) -> None: ...


def mid(chat: str, i: int) -> str:
    """The messenger's `externalMessageId` of user message number `i` of `chat`."""
    return f"{chat}-m{i}"


def text(chat: str, i: int) -> str:
    return f"{chat} says {i}"


def aid(chat: str, j: int) -> str:
    """The live chat's id of operator reply number `j` in `chat`'s conversation."""
    return f"{chat}-a{j}"


def reply(chat: str, j: int) -> str:
    return f"operator to {chat}: {j}"


async def send_user(
    http: aiohttp.ClientSession,
    url: Callable[[], str],
    chat: str,
    index: int,
    tally: Tally,
    timeout: float = 5.0,
) -> None:
    """User message number `index` of `chat`, sent until it gets a 200, each attempt to `url()`
    (the same bridge, or a balancer's next replica). `timeout`: seconds per attempt."""
    body = user_message(mid(chat, index), chat, text(chat, index))
    await until_200(lambda: post(http, url(), body, timeout), tally, what=mid(chat, index))


async def send_reply(
    http: aiohttp.ClientSession,
    cv: ChatvisorSim,
    customer: str,
    chat: str,
    index: int,
    tally: Tally,
    url: Callable[[], str | None] = lambda: None,
) -> None:
    """Operator reply number `index` in `chat`'s conversation (the live chat's `customer`), sent
    until it gets a 200, each attempt to `url()` (None: the sim's `hook_url`)."""
    await until_200(
        lambda: cv.agent_reply(
            http, customer, reply(chat, index), message_id=aid(chat, index), url=url()
        ),
        tally,
        what=aid(chat, index),
    )


@dataclass
class Conversations:
    """Each chat's user sends its messages one after another, and its operator answers once the
    bridge has linked the conversation, keeping pace with the user; every message is sent until
    it gets a 200 (`Senders`)."""

    parties: Senders
    per_chat: int  # user messages of each chat
    per_reply_chat: int  # operator replies in each chat the operator answers
    pace: int  # reply number j waits until pace * j of the chat's user messages got a 200
    tail: int = 0  # the last user messages of each chat, sent once `go_on` is set
    go_on: asyncio.Event = field(default_factory=asyncio.Event)
    users: Tally = field(default_factory=Tally)
    operators: Tally = field(default_factory=Tally)
    progress: dict[str, int] = field(default_factory=dict)  # user messages that got a 200

    async def user(self, chat: str) -> None:
        self.progress.setdefault(chat, 0)
        for i in range(self.per_chat):
            if self.tail and i == self.per_chat - self.tail:
                await self.go_on.wait()
            await self.parties.send_user(chat, i, self.users)
            self.progress[chat] = i + 1

    async def operator(self, chat: str) -> None:
        # The operator answers once the bridge has linked the conversation (the outcome of the
        # chat's first message is committed with that link), then keeps pace with the user.
        await eventually(lambda: mid(chat, 0) in self.parties.messenger.outcomes, timeout=60)
        for j in range(self.per_reply_chat):
            await eventually(lambda j=j: self.progress.get(chat, 0) >= self.pace * j, timeout=120)
            await self.parties.send_reply(chat, j, self.operators)


class HoldingChatvisor(ChatvisorSim):
    """The live-chat sim, holding its answer to a customer message it has already recorded
    (the operator already sees it) while `hold` is set."""

    def __init__(self, api_token: str) -> None:
        super().__init__(api_token)
        self.hold = False
        self.release = asyncio.Event()
        self.holding = 0

    async def _message(self, request: web.Request) -> web.Response:
        answer = await super()._message(request)
        if self.hold:
            self.holding += 1
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(30):
                        await self.release.wait()
            finally:
                self.holding -= 1
        return answer


def assert_delivered_once_in_order(
    f: Parties, sent: dict[str, int], replied: dict[str, int] | None = None
) -> None:
    """Every user message reached the live chat once, in order, with a good outcome; every
    operator reply reached the messenger once, in order."""
    m, cv = f.messenger, f.chatvisor
    for chat, n in sent.items():
        assert cv.texts(f.customer(chat)) == [text(chat, i) for i in range(n)], chat
    ids = [mid(chat, i) for chat, n in sent.items() for i in range(n)]
    assert sorted(m.outcomes) == sorted(ids)
    assert all(m.outcomes.values())
    assert len(cv.message_ids) == len(ids)  # nothing else reached the live chat
    for chat, n in (replied or {}).items():
        assert m.chat_log[chat] == [reply(chat, j) for j in range(n)], chat
    assert len(m.messages) == sum((replied or {}).values())


def all_outcomes(f: Parties, sent: dict[str, int]) -> bool:
    return all(mid(chat, n - 1) in f.messenger.outcomes for chat, n in sent.items()) and len(
        f.messenger.outcomes
    ) == sum(sent.values())
