"""JivoChat, as shared/protocols/jivochat.md describes it.

A Chat API channel at `/<random>/<channel>`: it records client messages (a repeated message id
is a no-op) and answers `/status` with `0` or `1`. The agent's side is played by
`agent_message` (a Chat-API agent reply) and `event` (a Webhooks-API event), both posted to the
bridge's hook URL exactly as JivoChat would.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from tests.sim.server import post_json


class JivochatSim:
    def __init__(self, path: str = "/x7Kq2mPz9/sales-channel") -> None:
        self.path = path
        self.hook_url: str | None = None
        self.client_messages: list[dict[str, Any]] = []
        self.by_client: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.seen_ids: set[str] = set()
        self.duplicates = 0
        self.agents_online = True
        self.fail_with: int | None = None
        self.fail_times = 0
        # Every client-message call by message id, refused or not (a repeat counts too).
        self.calls_by_id: Counter[str] = Counter()
        # Given a call's body, the status to refuse it with, or None to take it.
        self.refuse: Callable[[dict[str, Any]], int | None] = lambda body: None
        self.location: str | None = None  # sent as `Location` with each failure (for a 3xx)
        self.status_calls = 0  # /status probes received
        self.status_fail_with: int | None = None  # answer /status with this status instead
        self.status_delay = 0.0  # seconds each /status answer takes
        self._ids = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_post(path, self._client_message)
        self.app.router.add_get(f"{path}/status", self._status)

    def texts(self, client_key: str) -> list[str]:
        return [m["message"].get("text", "") for m in self.by_client[client_key]]

    async def _client_message(self, request: web.Request) -> web.Response:
        body = await request.json()
        message_id = body["message"]["id"]
        self.calls_by_id[message_id] += 1
        if (refused := self.refuse(body)) is not None:
            return web.Response(status=refused, text="simulated refusal")
        if self.fail_with is not None:
            status = self.fail_with
            if self.fail_times:
                self.fail_times -= 1
                if not self.fail_times:
                    self.fail_with = None
            headers = {"Location": self.location} if self.location else None
            return web.Response(status=status, text="simulated failure", headers=headers)
        if message_id in self.seen_ids:
            self.duplicates += 1
        else:
            self.seen_ids.add(message_id)
            self.client_messages.append(body)
            self.by_client[body["sender"]["id"]].append(body)
        return web.Response(text="")

    async def _status(self, request: web.Request) -> web.Response:
        self.status_calls += 1
        await asyncio.sleep(self.status_delay)
        if self.status_fail_with is not None:
            headers = {"Location": self.location} if self.location else None
            return web.Response(status=self.status_fail_with, headers=headers)
        return web.Response(text="1" if self.agents_online else "0")

    async def post(self, http: aiohttp.ClientSession, body: dict[str, Any]) -> tuple[int, Any]:
        return await post_json(http, self.hook_url, body)

    async def agent_message(
        self,
        http: aiohttp.ClientSession,
        client_key: str,
        text: str = "",
        *,
        message_id: str | None = None,
        kind: str = "text",
        file: str | None = None,
        file_name: str | None = None,
        agent: tuple[Any, str] = ("2224", "Thomas Anderson"),
    ) -> tuple[int, Any]:
        message: dict[str, Any] = {"type": kind, "id": message_id or f"jv-{next(self._ids)}"}
        if text:
            message["text"] = text
        if file:
            message["file"], message["file_name"] = file, file_name
        return await self.post(
            http,
            {
                "sender": {"id": agent[0], "name": agent[1]},
                "recipient": {"id": client_key},
                "message": message,
            },
        )

    async def event(self, http: aiohttp.ClientSession, payload: dict[str, Any]) -> tuple[int, Any]:
        return await self.post(http, payload)
