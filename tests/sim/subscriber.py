"""An event subscriber: keeps every delivery with its headers; can be told to fail."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web


class SubscriberSim:
    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.refused_ids: list[str] = []  # webhook-ids of attempts answered with fail_with
        self.fail_with: int | None = None
        self.location: str | None = None  # sent as `Location` with each failure (for a 3xx)
        self.app = web.Application()
        self.app.router.add_post("/events", self._receive)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Each distinct delivery (by webhook-id), decoded, in arrival order."""
        seen: set[str] = set()
        out = []
        for headers, body in self.deliveries:
            if headers["webhook-id"] not in seen:
                seen.add(headers["webhook-id"])
                out.append(json.loads(body))
        return out

    async def _receive(self, request: web.Request) -> web.Response:
        headers = {
            k.lower(): v for k, v in request.headers.items() if k.lower().startswith("webhook-")
        }
        if self.fail_with is not None:
            self.refused_ids.append(headers.get("webhook-id", ""))
            location = {"Location": self.location} if self.location else None
            return web.Response(status=self.fail_with, headers=location)
        self.deliveries.append((headers, await request.read()))
        return web.Response(status=204)
