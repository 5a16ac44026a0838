"""Fast sinks: a Chatvisor-style live chat and a messenger that only count and time arrivals.

`python -m bench.sinks PORT` serves both on one port; GET /stats returns what arrived. Message
ids are counted so that loss and duplicates are measured where they would hurt.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from aiohttp import web


class Sinks:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.livechat_ids: Counter[str] = Counter()  # by the text, which carries the sender's id
        self.livechat_arrival: dict[str, float] = {}
        self.outcomes: Counter[str] = Counter()
        self.outcome_arrival: dict[str, float] = {}
        self.forwarded: Counter[str] = Counter()
        self.forward_arrival: dict[str, float] = {}
        self.customers = 0

    async def customer(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.customers += 1
        return web.json_response({"customerId": "c-" + body["id"]})

    async def message(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = body["text"]
        self.livechat_ids[key] += 1
        self.livechat_arrival.setdefault(key, time.time())
        return web.json_response({"id": "lc-" + body["id"]})

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        kind = body.get("type")
        if kind == "messageOutcome":
            key = body["data"]["messageId"]
            self.outcomes[key] += 1
            self.outcome_arrival.setdefault(key, time.time())
        elif kind == "userInfo":
            return web.json_response({"id": body["data"]["userId"], "username": "bench"})
        return web.json_response({"result": "ok"})

    async def forward(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = body["data"]["externalMessageId"]
        self.forwarded[key] += 1
        self.forward_arrival.setdefault(key, time.time())
        return web.json_response({"result": "ok"})

    async def stats(self, request: web.Request) -> web.Response:
        def summary(counts: Counter[str], arrival: dict[str, float]) -> dict[str, Any]:
            return {
                "unique": len(counts),
                "duplicates": sum(counts.values()) - len(counts),
                "arrival": arrival if request.query.get("arrival") else {},
            }

        return web.json_response(
            {
                "livechat": summary(self.livechat_ids, self.livechat_arrival),
                "outcomes": summary(self.outcomes, self.outcome_arrival),
                "forwarded": summary(self.forwarded, self.forward_arrival),
            }
        )

    async def clear(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"result": "ok"})


def app() -> web.Application:
    sinks = Sinks()
    application = web.Application(client_max_size=64 * 1024 * 1024)
    application.router.add_post("/rest/v1/customer", sinks.customer)
    application.router.add_post("/rest/v1/conversation/{customer_id}/message", sinks.message)
    application.router.add_post("/hook", sinks.hook)
    application.router.add_post("/forward", sinks.forward)
    application.router.add_get("/stats", sinks.stats)
    application.router.add_post("/clear", sinks.clear)
    return application


if __name__ == "__main__":
    web.run_app(app(), host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
