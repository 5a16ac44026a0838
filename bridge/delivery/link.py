"""The socket between the serving process and the delivery process: both ends of it.

Length-prefixed pickles (both ends are this program, never anything from outside); what goes
each way is in `bridge.delivery.child_process`. A module of its own so that the delivery process
imports it without the serving process's side (its metrics, prometheus_client).
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

_HEADER = struct.Struct("!I")
READY = "ready"  # the child's first message: it can take items


class Link(asyncio.Protocol):
    """One end of the socket pair. `send` queues an object; everything queued in one turn of
    the event loop leaves as one frame (a length and a pickled list), so a round of claims, or
    of answers, costs one write and one wake-up on the other side instead of one per item.
    Each object received is handed to `on_message`, in order."""

    def __init__(self, on_message: Callable[[Any], None]) -> None:
        self._on_message = on_message
        self._transport: asyncio.Transport | None = None
        self._inbox = bytearray()
        self._outbox: list[Any] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(self, obj: Any) -> None:
        """Queue `obj`; dropped if the other side has gone (the caller learns that from
        `closed`)."""
        if not self.is_open:
            return
        self._outbox.append(obj)
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        batch, self._outbox = self._outbox, []
        if self._transport is not None and batch:
            data = pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
            self._transport.write(_HEADER.pack(len(data)) + data)

    def data_received(self, data: bytes) -> None:
        inbox = self._inbox
        inbox += data
        start = 0
        while len(inbox) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(inbox, start)
            end = start + _HEADER.size + size
            if len(inbox) < end:
                break
            batch = pickle.loads(inbox[start + _HEADER.size : end])  # noqa: S301 (our own child)
            start = end
            for obj in batch:
                self._on_message(obj)
        del inbox[:start]

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()


async def connect(sock: socket.socket, on_message: Callable[[Any], None]) -> Link:
    _, link = await asyncio.get_running_loop().create_connection(
        lambda: Link(on_message), sock=sock
    )
    return link
