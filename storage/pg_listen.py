"""LISTEN on a PostgreSQL database: what other replicas notify (storage/notify.py) reaches this
one's handlers within milliseconds.

One dedicated connection (not the pool's: a listening connection must stay open and outside any
transaction), in psycopg's async mode on the event loop. A lost connection (the server
restarted, a failover, a firewall's cut) is reconnected under back-off; notifications sent
meanwhile are lost, so `on_connect` runs after each (re)connection for the handlers to catch up
(a refresh of what they cache, a look at the outbox). The callers also poll at their usual
pace: a notification only makes them act sooner.

The DSN is a secret: no message logged here contains its password.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping

import psycopg
import structlog
from psycopg import sql

from bridge.core.tasks import cancel_and_wait
from storage.pg_dsn import redact

log = structlog.get_logger("storage")

RECONNECT = (0.1, 5.0)  # seconds: first pause after a lost connection (randomised), cap
PING_EVERY = 10.0  # seconds without a notification after which the connection is checked
CONNECT_TIMEOUT = 5  # seconds (libpq: whole seconds)


class PgListener:
    """Calls `handlers[channel](payload)` for each notification on those channels, on the event
    loop (a handler is quick and does not block: it sets an event, starts a task). `on_connect`
    runs after each connection is listening, the first included."""

    def __init__(
        self,
        dsn: str,
        handlers: Mapping[str, Callable[[str], None]],
        on_connect: Callable[[], None] = lambda: None,
    ) -> None:
        self._dsn = dsn
        self._handlers = dict(handlers)
        self._on_connect = on_connect
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()  # set while listening (the tests wait for it)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listen")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                self.connected.clear()
                failures += 1
                first, cap = RECONNECT
                delay = random.uniform(0, min(cap, first * 2**failures))
                text = str(exc).strip().splitlines()
                log.warning(
                    "storage.listen_lost",
                    error=redact(text[0] if text else type(exc).__name__, self._dsn),
                    failures=failures,
                    retry_in=round(delay, 3),
                )
                await asyncio.sleep(delay)
            else:
                failures = 0

    async def _listen(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._dsn,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="messenger-bridge listen",
        )
        async with conn:
            for channel in self._handlers:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self.connected.set()
            self._on_connect()
            while True:
                async for note in conn.notifies(timeout=PING_EVERY):
                    handler = self._handlers.get(note.channel)
                    if handler is not None:
                        try:
                            handler(note.payload)
                        except Exception:  # a handler's bug must not end the listening
                            log.exception("storage.listen_handler_failed", channel=note.channel)
                # Quiet for a while: is the connection still there? (Raises if not.)
                await conn.execute("SELECT 1")
