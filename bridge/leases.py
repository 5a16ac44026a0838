"""This replica's leases on a shared PostgreSQL database (storage/leases.py).

Several replicas of the service may share one PostgreSQL database; a lease makes one of them at
a time work on something: a lane's head item in flight (the outbox worker), a channel's
reconnect attempts (bridge/channels.py). A lease lasts `delivery.lease_seconds` and is renewed
while its work goes on (every third of that); a replica that dies (kill -9, a lost machine)
stops renewing, and another takes over once the lease has expired.

On SQLite there is one process, and no `Leases` (None where one is expected): its in-memory
bookkeeping already makes one worker of each lane and one loop of each channel.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Collection
from functools import partial

from storage import leases as repo
from storage.port import Store


def replica_id() -> str:
    """A name for this replica, unique among those sharing a database (and among restarts):
    `host:pid:random`, as seen by the operators in the `leases` table."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Leases:
    """Takes, renews and gives up this replica's leases. Raises StorageUnavailable as any
    write does."""

    def __init__(self, db: Store, holder: str, seconds: float) -> None:
        self.holder = holder  # this replica's id (`replica_id()`)
        self.seconds = seconds  # how long a lease lasts unless renewed
        self._db = db

    @property
    def renew_every(self) -> float:
        """Seconds between renewals: a third of a lease, so two can fail before it expires."""
        return self.seconds / 3

    async def acquire(self, name: str, *, steal: bool = False) -> bool:
        """Take or extend `name`'s lease; False when another replica holds it (unless
        `steal`: an admin's action, which the holder notices at its next renewal)."""
        taken = await self._db.write(
            partial(
                repo.acquire, names=(name,), holder=self.holder, seconds=self.seconds, steal=steal
            )
        )
        return name in taken

    async def renew(self, names: Collection[str]) -> set[str]:
        """Extend the leases of `names`; return those that were lost (expired and taken by
        another replica, or stolen)."""
        if not names:
            return set()
        kept = await self._db.write(
            partial(repo.renew, names=names, holder=self.holder, seconds=self.seconds)
        )
        return set(names) - kept

    async def release(self, name: str) -> None:
        await self._db.write(partial(repo.release, names=(name,), holder=self.holder))

    async def release_all(self) -> int:
        """Give up every lease of this replica (stopping): others take over at once."""
        return await self._db.write(partial(repo.release_all, holder=self.holder))
