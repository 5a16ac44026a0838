"""A simulator's HTTP server that can be stopped and started again on the same port."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web


class SimServer:
    def __init__(self, app: web.Application, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def running(self) -> bool:
        return self._runner is not None


async def post_json(http: aiohttp.ClientSession, url: str | None, body: Any) -> tuple[int, Any]:
    """POST as the simulated party does; (status, JSON answer)."""
    assert url, "the bridge's URL is not known yet"
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json(content_type=None)
