"""The one place a store is built from settings: which backend, with what."""

from __future__ import annotations

from typing import Protocol

from storage.database import Database
from storage.port import Store


class StorageConfig(Protocol):
    """What building a store reads of `[storage]` (bridge.settings.StorageSettings)."""

    @property
    def path(self) -> str: ...  # the SQLite file; ":memory:" for a private in-memory one

    @property
    def synchronous(self) -> str: ...  # SQLite: "normal" | "full"

    @property
    def busy_timeout(self) -> float: ...  # s a write waits for a lock held by another

    @property
    def wal_max_bytes(self) -> int: ...  # SQLite: the WAL file's bound


def build_store(config: StorageConfig) -> Store:
    """The store the serving process reads and writes through; not open yet (`Store.open`)."""
    return Database(config.path, config.synchronous, config.busy_timeout, config.wal_max_bytes)


def build_reader(config: StorageConfig) -> Store | None:
    """A store of its own for a delivery's reads (in the delivery process, and the serving
    process's own), opened with `Store.open_reader` once the main store is open; None when
    the main store must serve them too (an in-memory SQLite database, which a second
    connection would not see)."""
    if config.path == ":memory:":
        return None
    return Database(config.path, config.synchronous)
