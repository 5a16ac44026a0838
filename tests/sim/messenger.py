"""A company's own messenger, as the arbitrary-messenger contract describes it.

It receives the bridge's calls on `/hook`, checks the confirmation code, keeps what it got
(dropping repeated message ids, as a real messenger should), and sends users' messages to the
webhook URL the bridge gave it in `connect`.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
from collections import Counter, defaultdict
from typing import Any

import aiohttp
from aiohttp import web

from tests.sim.server import post_json


class MessengerSim:
    def __init__(self, code: str) -> None:
        self.code = code
        self.calls: list[dict[str, Any]] = []  # every authenticated call, in arrival order
        self.attempts: Counter[str] = Counter()  # every call by type, refused ones too
        self.messages: dict[str, dict[str, Any]] = {}  # operator messages by the bridge's id
        self.chat_log: dict[str, list[str]] = defaultdict(list)  # texts per chat, in order
        self.duplicates = 0
        self.outcomes: dict[str, bool] = {}
        self.reads: list[str] = []
        self.profiles: dict[str, dict[str, Any]] = {}
        self.bridge_webhook: str | None = None
        self.fail_with: int | None = None  # answer every call with this status
        self.fail_types: dict[str, int] = {}  # or only calls of these types
        self.location: str | None = None  # sent as `Location` with each failure (for a 3xx)
        self.refused: list[str] = []  # the types of calls answered with a failure, in order
        self.delay = 0.0
        self.delay_types: dict[str, float] = {}  # seconds calls of these types are answered late
        self._ids = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_post("/hook", self._hook)

    def count(self, kind: str) -> int:
        return sum(1 for c in self.calls if c["type"] == kind)

    async def _hook(self, request: web.Request) -> web.Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        body = await request.json()
        self.attempts[str(body.get("type"))] += 1
        if not hmac.compare_digest(str(body.get("token", "")), self.code):
            return web.Response(status=401, text="confirmation code differs")
        kind = body["type"]
        if kind in self.delay_types:
            await asyncio.sleep(self.delay_types[kind])
        status = self.fail_types.get(kind, self.fail_with)
        if status is not None:
            self.refused.append(kind)
            headers = {"Location": self.location} if self.location else None
            return web.Response(status=status, text="simulated failure", headers=headers)
        self.calls.append(body)
        data = body.get("data") or {}
        if kind == "connect":
            self.bridge_webhook = data["webhook"]
        elif kind == "message":
            if data["messageId"] in self.messages:
                self.duplicates += 1
            else:
                self.messages[data["messageId"]] = data
                self.chat_log[data["targetChatId"]].append(data["text"])
        elif kind == "messageOutcome":
            self.outcomes[data["messageId"]] = data["success"]
        elif kind == "markAsRead":
            self.reads.append(data["messageId"])
        elif kind == "userInfo":
            profile = self.profiles.get(data["userId"])
            if profile is None:
                return web.Response(status=404, text="no such user")
            return web.json_response(profile)
        return web.json_response({"result": "ok"})

    async def send(
        self,
        http: aiohttp.ClientSession,
        kind: str,
        data: dict[str, Any] | None = None,
        **extra: Any,
    ) -> tuple[int, Any]:
        """POST one request to the bridge; returns (status, JSON body)."""
        body: dict[str, Any] = {"type": kind, "token": self.code, **extra}
        if data is not None:
            body["data"] = data
        return await post_json(http, self.bridge_webhook, body)

    async def send_message(
        self,
        http: aiohttp.ClientSession,
        chat_id: str,
        text: str,
        *,
        user_id: str | None = None,
        message_id: str | None = None,
        files: list[dict[str, Any]] | None = None,
    ) -> tuple[int, Any]:
        data: dict[str, Any] = {
            "externalMessageId": message_id or f"m{next(self._ids)}",
            "externalChatId": chat_id,
            "externalUserId": user_id or f"user-{chat_id}",
            "text": text,
        }
        if files is not None:
            data["files"] = files
        return await self.send(http, "message", data)
