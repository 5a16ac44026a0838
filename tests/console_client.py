"""A signed-in console user over plain HTTP (aiohttp), for the console's tests: it keeps the
session cookie as a browser would and reads each page's CSRF token from its form."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from yarl import URL

from tests.conftest import ADMIN_TOKEN

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


class ConsoleUser:
    def __init__(self, base_url: str) -> None:
        self.base = base_url
        # unsafe: the bridge listens on 127.0.0.1, an IP address, whose cookies aiohttp's jar
        # would otherwise refuse.
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), timeout=aiohttp.ClientTimeout(total=15)
        )
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def sign_in(self, token: str = ADMIN_TOKEN) -> aiohttp.ClientResponse:
        async with self.http.post(
            f"{self.base}/admin/login", data={"token": token}, allow_redirects=False
        ) as r:
            await r.read()
        if r.status == 303:
            await self.get("/admin/")  # reads the CSRF token
        return r

    async def get(self, path: str, **kw: Any) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.get(f"{self.base}{path}", allow_redirects=False, **kw) as r:
            text = await r.text()
        if found := CSRF.search(text):
            self.csrf = found.group(1)
        return r.status, text, r

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        form = dict(data or {})
        if csrf:
            form["csrf"] = self.csrf
        async with self.http.post(f"{self.base}{path}", data=form, allow_redirects=False) as r:
            text = await r.text()
        return r.status, text, r

    def cookie(self) -> str | None:
        jar = self.http.cookie_jar.filter_cookies(URL(f"{self.base}/admin/"))
        morsel = jar.get("bridge_console")
        return morsel.value if morsel else None
