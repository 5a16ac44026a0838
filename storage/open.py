"""The one place a store is built from settings: which backend, with what."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal, Protocol

from storage.database import Database
from storage.port import Store


class Secret(Protocol):
    """A secret setting (pydantic's SecretStr): its value only when asked for."""

    def get_secret_value(self) -> str: ...


class StorageConfig(Protocol):
    """What building a store reads of `[storage]` (bridge.settings.StorageSettings)."""

    @property
    def backend(self) -> Literal["sqlite", "postgres"]: ...

    @property
    def path(self) -> str: ...  # the SQLite file; ":memory:" for a private in-memory one

    @property
    def synchronous(self) -> str: ...  # SQLite: "normal" | "full"

    @property
    def busy_timeout(
        self,
    ) -> float: ...  # s a write waits for a lock (PostgreSQL: a connection too)

    @property
    def wal_max_bytes(self) -> int: ...  # SQLite: the WAL file's bound

    @property
    def dsn(self) -> Secret | None: ...  # PostgreSQL: a libpq URI or key=value string

    @property
    def pool_min(self) -> int: ...  # PostgreSQL: connections kept open per store

    @property
    def pool_max(self) -> int: ...  # PostgreSQL: connections at most open per store


def build_store(config: StorageConfig) -> Store:
    """The store the serving process reads and writes through; not open yet (`Store.open`)."""
    if config.backend == "postgres":
        return _postgres(config, config.pool_min, config.pool_max)
    return Database(config.path, config.synchronous, config.busy_timeout, config.wal_max_bytes)


def build_reader(config: StorageConfig) -> Store | None:
    """A store of its own for a delivery's reads (in the delivery process, and the serving
    process's own), opened with `Store.open_reader` once the main store is open; None when
    the main store must serve them too (an in-memory SQLite database, which a second
    connection would not see)."""
    if config.backend == "postgres":
        # A delivery reads an item and its message or event, one query at a time: a small pool.
        return _postgres(config, 1, min(config.pool_max, 4))
    if config.path == ":memory:":
        return None
    return Database(config.path, config.synchronous)


def _postgres(config: StorageConfig, pool_min: int, pool_max: int) -> Store:
    # Imported here: psycopg is an optional dependency (the `postgres` extra), which settings
    # check for before anything is built.
    from storage.postgres import PostgresStore

    dsn = config.dsn.get_secret_value() if config.dsn is not None else ""
    return PostgresStore(dsn, pool_min, pool_max, config.busy_timeout)


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
