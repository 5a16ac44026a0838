"""The one place a store is built from settings: which backend, with what."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, cast

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

    @property
    def backend(self) -> str: ...  # "sqlite" | "postgres"

    @property
    def dsn(self) -> Any: ...  # PostgreSQL: a SecretStr (its get_secret_value())

    @property
    def pool_min(self) -> int: ...

    @property
    def pool_max(self) -> int: ...


def build_store(config: StorageConfig) -> Store:
    """The store the serving process reads and writes through; not open yet (`Store.open`)."""
    if config.backend == "postgres":
        from storage.postgres import PostgresStore  # the driver is an optional extra

        # A cast until PostgresStore's signatures name the port's types (helper G's change).
        return cast(
            Store,
            PostgresStore(
                config.dsn.get_secret_value(), config.pool_min, config.pool_max, config.busy_timeout
            ),
        )
    return Database(config.path, config.synchronous, config.busy_timeout, config.wal_max_bytes)


def build_reader(config: StorageConfig) -> Store | None:
    """A store of its own for a delivery's reads (in the delivery process, and the serving
    process's own), opened with `Store.open_reader` once the main store is open; None when
    the main store must serve them too (an in-memory SQLite database, which a second
    connection would not see)."""
    if config.path == ":memory:" or config.backend == "postgres":
        return None
    return Database(config.path, config.synchronous)


class Listener(Protocol):
    """Notifications from other replicas, to handlers (storage/pg_listen.py)."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_listener(
    store: Store, handlers: Mapping[str, Callable[[str], None]], on_connect: Callable[[], None]
) -> Listener | None:
    """What listens for other replicas' notifications (storage/notify.py) on `store`'s
    database, not started; None for a database one process serves (SQLite)."""
    if store.dialect != "postgres":
        return None
    from storage.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    return store.listener(handlers, on_connect)
