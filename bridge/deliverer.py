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

import structlog

from bridge.dispatch import Performed, Performer
from bridge.logs import configure_logging
from bridge.loop import new_event_loop
from bridge.model import Retry
from bridge.remote import read_frame, write_frame
from bridge.settings import Settings
from connectors import http as outside
from storage.database import Database
from storage.outbox import OutboxItem

log = structlog.get_logger("delivery.process")


async def serve(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    settings: Settings = await read_frame(reader)
    configure_logging(settings.logging, settings.secrets())
    db = Database(settings.storage.path, settings.storage.synchronous)
    await db.open_reader()
    tasks: set[asyncio.Task[None]] = set()
    try:
        async with outside.session(settings.delivery) as http:
            performer = Performer(db, settings, http)

            async def one(seq: int, item: OutboxItem, active: Collection[str]) -> None:
                try:
                    done = await performer.perform(item, active)
                except Exception as exc:
                    log.exception("delivery.attempt_crashed", item=item.id, kind=item.kind)
                    done = Performed(Retry(f"internal error: {type(exc).__name__}"))
                if not writer.is_closing():  # else the serving process is gone: the item
                    write_frame(writer, (seq, done))  # stays in its outbox, to be sent again

            try:
                while True:
                    seq, item, active = await read_frame(reader)
                    task = asyncio.create_task(one(seq, item, active))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            except EOFError:
                pass
            finally:  # before the session closes under them
                for task in list(tasks):
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
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
