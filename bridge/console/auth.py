"""Signing in to the console: the admin token through a form, then a session cookie.

The cookie holds a random session id (256 bits), never the token; the server keeps, per session,
its expiry and its CSRF token, in memory: sessions end when the process restarts (sign in
again). Every action is a POST whose form carries the session's CSRF token, compared in
constant time. The cookie is HttpOnly, SameSite=Strict, limited to `/admin` and, when
`server.public_url` is https, Secure.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web

from bridge.keys import SETTINGS
from bridge.secrets import same_secret

log = structlog.get_logger("console")

COOKIE = "bridge_console"
COOKIE_PATH = "/admin"
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 256  # a bound on memory; beyond it the session closest to expiry ends
FAILED_SIGN_IN_DELAY = 1.0  # seconds; failures wait their turn, so guesses go one at a time
CSRF_FIELD = "csrf"


@dataclass(slots=True)
class ConsoleSession:
    csrf: str
    expires: float  # Unix s
    flash: str | None = None  # one line shown on the next page, then dropped

    def take_flash(self) -> str | None:
        flash, self.flash = self.flash, None
        return flash


def _digest(session_id: str) -> str:
    # Kept by digest: a lookup's timing then says nothing about a valid id's characters.
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class Sessions:
    """The console's signed-in sessions, in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._by_digest: dict[str, ConsoleSession] = {}
        self._failures = asyncio.Lock()

    def create(self) -> tuple[str, ConsoleSession]:
        """A new session: (the id for the cookie, the session)."""
        now = self._clock()
        for key in [k for k, s in self._by_digest.items() if s.expires <= now]:
            del self._by_digest[key]
        while len(self._by_digest) >= MAX_SESSIONS:
            oldest = min(self._by_digest, key=lambda k: self._by_digest[k].expires)
            del self._by_digest[oldest]
        session_id = secrets.token_urlsafe(32)
        session = ConsoleSession(secrets.token_urlsafe(32), now + SESSION_SECONDS)
        self._by_digest[_digest(session_id)] = session
        return session_id, session

    def find(self, session_id: str | None) -> ConsoleSession | None:
        if not session_id:
            return None
        key = _digest(session_id)
        session = self._by_digest.get(key)
        if session is not None and session.expires <= self._clock():
            del self._by_digest[key]
            return None
        return session

    def end(self, session_id: str | None) -> None:
        if session_id:
            self._by_digest.pop(_digest(session_id), None)

    async def slow_down(self) -> None:
        """After a failed sign-in: wait, one failure at a time."""
        async with self._failures:
            await asyncio.sleep(FAILED_SIGN_IN_DELAY)


SESSIONS = web.AppKey("console_sessions", Sessions)


def token_matches(request: web.Request, given: str) -> bool:
    return same_secret(given, request.app[SETTINGS].admin.token.get_secret_value())


def csrf_matches(session: ConsoleSession, given: str | None) -> bool:
    return same_secret(given, session.csrf)


def session_of(request: web.Request) -> ConsoleSession | None:
    return request.app[SESSIONS].find(request.cookies.get(COOKIE))


def start_session(request: web.Request, response: web.StreamResponse) -> None:
    session_id, _ = request.app[SESSIONS].create()
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=SESSION_SECONDS,
        path=COOKIE_PATH,
        httponly=True,
        samesite="Strict",
        secure=str(request.app[SETTINGS].server.public_url).startswith("https:"),
    )


def end_session(request: web.Request, response: web.StreamResponse) -> None:
    request.app[SESSIONS].end(request.cookies.get(COOKIE))
    response.del_cookie(COOKIE, path=COOKIE_PATH)


def failed_sign_in(request: web.Request) -> None:
    # Where from, never what was typed: a near miss would be most of the token.
    log.warning("console.sign_in_failed", remote=request.remote)
