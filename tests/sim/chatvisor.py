"""A Chatvisor-style live chat, as shared/protocols/chatvisor.md describes it.

REST under `/rest/v1` (bearer token): customers are tagged by the bridge's id and never
duplicated (a tagging body with a non-string `id`, or a null where Chatvisor's public body has
a string, is refused with 400, as a strict API would); customer messages are kept per
conversation and a repeated id is a no-op. An operator's side is played by `agent_reply`,
`set_status` and `mark_read`, which call the bridge's hook with the contract's named events,
and by `conversation_webhook`, which posts the bare Conversation object Chatvisor's own
WebHooks send.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
from collections import defaultdict
from typing import Any

import aiohttp
from aiohttp import web

from tests.sim.server import post_json


class ChatvisorSim:
    def __init__(self, api_token: str) -> None:
        self.api_token = api_token
        self.hook_url: str | None = None  # set by whoever wires the bridge to it
        self.customers: dict[str, dict[str, Any]] = {}  # by live-chat customer id
        self.customer_by_key: dict[str, str] = {}
        self.conversations: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.message_ids: dict[str, str] = {}  # bridge message id -> live-chat message id
        self.duplicates = 0
        self.customer_calls = 0
        self.message_calls = 0  # message calls received, counted on arrival (repeats too)
        self.customer_bodies: list[dict[str, Any]] = []  # every tagging body, as received
        self.fail_with: int | None = None
        self.fail_times = 0  # fail only this many next calls (0: as long as fail_with is set)
        self.retry_after: str | None = None
        self.location: str | None = None  # sent as `Location` with each failure (for a 3xx)
        self.failure_text = "simulated"  # the `error` of each failure's body
        self.delay = 0.0  # seconds each message call takes
        self.refuse_messages = 0  # refuse this many next message calls with 422, for good
        self.refused: list[str] = []  # the ids of the messages refused so
        self._ids = itertools.count(1)
        self.app = web.Application()
        self.app.router.add_post("/rest/v1/customer", self._customer)
        self.app.router.add_post("/rest/v1/conversation/{customer_id}/message", self._message)
        self.app.router.add_post("/rest/v1/conversation/{customer_id}/agent-url", self._agent_url)

    def texts(self, customer_id: str) -> list[str]:
        return [m["text"] for m in self.conversations[customer_id]]

    def all_texts(self) -> list[str]:
        return [m["text"] for conv in self.conversations.values() for m in conv]

    def _refuse(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if not hmac.compare_digest(auth, f"Bearer {self.api_token}"):
            return web.json_response({"error": "bad token"}, status=401)
        if self.fail_with is not None:
            status = self.fail_with
            if self.fail_times:
                self.fail_times -= 1
                if not self.fail_times:
                    self.fail_with = None
            return self._failure(status)
        return None

    def _failure(self, status: int) -> web.Response:
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        if self.location:
            headers["Location"] = self.location
        return web.json_response({"error": self.failure_text}, status=status, headers=headers)

    async def _customer(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        body = await request.json()
        self.customer_bodies.append(body)
        strings = ("email", "firstname", "lastname", "phone")
        if not isinstance(body.get("id"), str) or any(
            key in body and not isinstance(body[key], str) for key in strings
        ):
            return web.json_response({"error": "invalid customer body"}, status=400)
        self.customer_calls += 1
        key = body["id"]
        customer_id = self.customer_by_key.get(key) or f"cust-{next(self._ids)}"
        self.customer_by_key[key] = customer_id
        self.customers[customer_id] = body
        return web.json_response({"customerId": customer_id})

    async def _message(self, request: web.Request) -> web.Response:
        self.message_calls += 1
        if (refused := self._refuse(request)) is not None:
            return refused
        customer_id = request.match_info["customer_id"]
        await asyncio.sleep(self.delay)
        if customer_id not in self.customers:
            return web.json_response({"error": "unknown customer"}, status=404)
        body = await request.json()
        if self.refuse_messages:
            self.refuse_messages -= 1
            self.refused.append(body["id"])
            return web.json_response({"error": "simulated refusal"}, status=422)
        if body["id"] in self.message_ids:
            self.duplicates += 1
        else:
            self.message_ids[body["id"]] = f"lc-{next(self._ids)}"
            self.conversations[customer_id].append(body)
        return web.json_response({"id": self.message_ids[body["id"]]})

    async def _agent_url(self, request: web.Request) -> web.Response:
        if (refused := self._refuse(request)) is not None:
            return refused
        return web.json_response(
            {"url": f"https://chat.example/agent/{request.match_info['customer_id']}"}
        )

    # --- the operator's side -----------------------------------------------------------

    async def hook(
        self, http: aiohttp.ClientSession, body: dict[str, Any], url: str | None = None
    ) -> tuple[int, Any]:
        """POST an event to the bridge's hook: `url`, else `hook_url` (one of several replicas'
        hooks may be given, as a load balancer in front of them would choose)."""
        return await post_json(http, url or self.hook_url, body)

    async def agent_reply(
        self,
        http: aiohttp.ClientSession,
        customer_id: str,
        text: str,
        *,
        message_id: str | None = None,
        files: list[dict[str, Any]] | None = None,
        agent: tuple[str, str] = ("agent-1", "Olga Operator"),
        url: str | None = None,
    ) -> tuple[int, Any]:
        return await self.hook(
            http,
            {
                "event": "message.new",
                "customerId": customer_id,
                "message": {
                    "id": message_id or f"agent-msg-{next(self._ids)}",
                    "text": text,
                    "files": files or [],
                    "timestamp": "2026-11-21T10:00:00Z",
                    "sender": {"type": "agent", "id": agent[0], "name": agent[1]},
                },
            },
            url,
        )

    async def set_status(
        self,
        http: aiohttp.ClientSession,
        customer_id: str,
        status: str,
        event: str = "conversation.status",
    ) -> tuple[int, Any]:
        return await self.hook(
            http,
            {
                "event": event,
                "conversation": {
                    "customerId": customer_id,
                    "status": status,
                    "lastMessage": {"text": ""},
                    "url": f"https://chat.example/c/{customer_id}",
                },
            },
        )

    async def conversation_webhook(
        self,
        http: aiohttp.ClientSession,
        customer_id: str,
        status: str,
        text: str = "",
        *,
        text_key: str = "test",
    ) -> tuple[int, Any]:
        """What Chatvisor's own WebHooks POST: a bare Conversation object, no `event`; the
        docs' example spells the text key of `lastMessage` as `test`."""
        return await self.hook(
            http,
            {
                "customerId": customer_id,
                "status": status,
                "lastMessage": {text_key: text},
                "url": f"https://chat.example/c/{customer_id}",
            },
        )

    async def mark_read(
        self, http: aiohttp.ClientSession, customer_id: str, message_id: str
    ) -> tuple[int, Any]:
        return await self.hook(
            http, {"event": "message.read", "customerId": customer_id, "messageId": message_id}
        )
