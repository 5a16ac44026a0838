"""Traffic for the fault tests (test_faults, test_replica_faults): the ids and texts of each
chat's messages both ways, a live chat that holds its answers, and what must hold at the
receivers afterwards: every acknowledged message there once, in per-chat order, with its
outcome.

The receivers drop repeats by the stable ids the bridge sends (shared/protocols): the live chat
by a customer message's `id`, the messenger by an operator message's `data.messageId`; an
outcome is keyed by `data.messageId`, the messenger's own `externalMessageId`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from aiohttp import web

from tests.sim.chatvisor import ChatvisorSim
from tests.sim.messenger import MessengerSim


class Parties(Protocol):
    """The two simulated parties of a fault test, and the live chat's customer id of a chat."""

    @property
    def messenger(self) -> MessengerSim: ...

    @property
    def chatvisor(self) -> ChatvisorSim: ...

    def customer(self, chat: str) -> str: ...


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
