"""The delivery process: `python -m bridge.deliverer <fd> <event loop>`, started by `bridge.remote` only.

Reads the settings, then items, from the socket it was handed; performs each item in its own
task (the serving process sends a lane's next item only after the last one settled, so order
holds); answers with what each attempt did. It only reads the database. It exits when the
socket closes: the serving process stopped or died.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Collection
from typing import Any

import structlog

from bridge.dispatch import Performed, Performer
from bridge.logs import configure_logging
from bridge.loop import new_event_loop
from bridge.model import Retry
from bridge.remote import Link, connect
from bridge.settings import Settings
from connectors import http as outside
from storage.database import Database
from storage.outbox import OutboxItem

log = structlog.get_logger("delivery.process")


class Deliverer:
    """Takes the serving process's messages: the settings first, then items and the set of
    active channels. Items that arrive before the settings are set up wait for them."""

    def __init__(self) -> None:
        self.settings: asyncio.Future[Settings] = asyncio.get_running_loop().create_future()
        self.link: Link | None = None
        self.performer: Performer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self._active: Collection[str] = frozenset()
        self._waiting: list[tuple[int, OutboxItem]] = []

    def received(self, message: Any) -> None:
        if isinstance(message, Settings):
            self.settings.set_result(message)
        elif message[0] == "active":
            self._active = message[1]
        elif self.performer is None:
            self._waiting.append((message[1], message[2]))
        else:
            self._start(message[1], message[2])

    def ready(self, performer: Performer) -> None:
        self.performer = performer
        waiting, self._waiting = self._waiting, []
        for seq, item in waiting:
            self._start(seq, item)

    def _start(self, seq: int, item: OutboxItem) -> None:
        task = asyncio.create_task(self._one(seq, item, self._active))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _one(self, seq: int, item: OutboxItem, active: Collection[str]) -> None:
        assert self.performer is not None and self.link is not None
        try:
            done = await self.performer.perform(item, active)
        except Exception as exc:
            log.exception("delivery.attempt_crashed", item=item.id, kind=item.kind)
            done = Performed(Retry(f"internal error: {type(exc).__name__}"))
        # Dropped if the serving process is gone: the item stays in its outbox, to be sent again.
        self.link.send((seq, done))


async def serve(sock: socket.socket) -> None:
    deliverer = Deliverer()
    link = deliverer.link = await connect(sock, deliverer.received)
    settings = await deliverer.settings
    configure_logging(settings.logging, settings.secrets())
    db = Database(settings.storage.path, settings.storage.synchronous)
    await db.open_reader()
    try:
        async with outside.session(settings.delivery) as http:
            deliverer.ready(Performer(db, settings, http))
            try:
                await link.closed
            finally:  # before the session closes under them
                for task in list(deliverer.tasks):
                    task.cancel()
                await asyncio.gather(*deliverer.tasks, return_exceptions=True)
    finally:
        await db.close()


def main() -> None:
    # Ctrl-C and a service manager's SIGTERM reach the whole process group: the serving
    # process handles them, and closing the socket is what stops this one, after in-flight
    # answers were sent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))
    loop = new_event_loop(sys.argv[2])
    try:
        loop.run_until_complete(serve(sock))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
