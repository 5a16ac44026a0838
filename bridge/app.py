"""`create_app(settings)`: the only place the application is assembled; tests use it too."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web

from bridge.channels import ChannelManager
from bridge.console import setup_console
from bridge.deadletters import DeadLetters
from bridge.delivery.calls import LocalCaller
from bridge.delivery.child_process import ChildProcess
from bridge.delivery.settle import Settler
from bridge.delivery.split import SplitCaller
from bridge.delivery.worker import OutboxWorker
from bridge.keys import (
    CHANNELS,
    DATABASE,
    DEAD_LETTERS,
    DELIVERY_PROCESS,
    HTTP,
    LIVECHATS,
    METRICS,
    PRUNER,
    RELAY,
    SETTINGS,
    WORKER,
)
from bridge.leases import Leases, replica_id
from bridge.metrics import Metrics
from bridge.relay import Relay
from bridge.retention import Pruner
from bridge.settings import Settings, config_warnings
from bridge.web import admin, health, livechat, messenger, metrics, openapi
from bridge.web.common import error_middleware
from connectors import http as outside
from connectors.registry import build_connectors
from storage import notify
from storage.open import build_listener, build_reader, build_store
from storage.port import StorageUnavailable

log = structlog.get_logger("bridge")


def create_app(settings: Settings, *, clock: Callable[[], float] = time.time) -> web.Application:
    app = web.Application(
        client_max_size=settings.server.max_body_bytes,
        middlewares=[error_middleware],
        # Bodies are decompressed by `read_body`, bounded and with errors in the bridge's terms.
        handler_args={"auto_decompress": False},
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()

    async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
        db = build_store(settings.storage)
        await db.open()
        app[DATABASE] = db
        yield
        await db.close()

    async def http_ctx(app: web.Application) -> AsyncIterator[None]:
        async with outside.session(settings.delivery) as http:
            app[HTTP] = http
            yield

    async def services_ctx(app: web.Application) -> AsyncIterator[None]:
        db, http = app[DATABASE], app[HTTP]
        # What works but should not stay so (`check-config` prints the same), at every start.
        for warning in config_warnings(settings):
            log.warning("config.warning", warning=warning)

        def wake() -> None:
            worker.wake()

        # The serving process's connectors, built once: the channel life cycle, the deliveries
        # it performs itself and the readiness check share them.
        connectors = build_connectors(settings.livechats, settings.messengers, http)
        livechats = connectors.livechats
        # Replicas sharing the database (PostgreSQL) take leases; one process (SQLite) needs none.
        leases = (
            Leases(db, replica_id(), settings.delivery.lease_seconds)
            if db.dialect == "postgres"
            else None
        )
        channels = ChannelManager(db, settings, connectors.messengers, wake, clock, leases=leases)
        relay = app[RELAY] = Relay(db, settings, wake, clock)
        await relay.key_old_contacts()  # once after an upgrade; then an index lookup
        # A delivery's reads run on the loop, on a connection of their own: they are point
        # lookups, which under WAL never wait for the writer, and a hop to aiosqlite's thread
        # and back costs more than the lookups themselves.
        reads = build_reader(settings.storage) or db
        if reads is not db:
            await reads.open_reader()
        local = LocalCaller(reads, settings, http, connectors, clock)
        caller: LocalCaller | SplitCaller = local
        process: ChildProcess | None = None
        if settings.delivery.worker == "process" and reads is not db:
            process = app[DELIVERY_PROCESS] = ChildProcess(settings, app[METRICS])
            await process.start()
            caller = SplitCaller(
                process, local, settings.delivery.share_after, app[METRICS].performed
            )
        settler = Settler(relay, clock)
        worker = OutboxWorker(
            db,
            settings.delivery,
            caller,
            settler,
            channels,
            app[METRICS],
            clock,
            secrets=settings.secrets(),
            leases=leases,
        )
        app[LIVECHATS], app[CHANNELS], app[WORKER] = livechats, channels, worker
        app[DEAD_LETTERS] = DeadLetters(db, relay, wake, settings.retention.batch, clock)
        pruner = app[PRUNER] = Pruner(db, settings.retention, relay, app[METRICS], clock)

        def listening_again() -> None:  # notifications may have been lost meanwhile
            channels.changed_elsewhere()
            worker.wake()

        listener = build_listener(
            db,
            {notify.OUTBOX: lambda _: worker.wake(), notify.CHANNELS: channels.changed_elsewhere},
            listening_again,
        )
        await channels.start()
        worker.start()
        pruner.start()
        if listener is not None:
            listener.start()
        yield
        if listener is not None:
            await listener.stop()
        await pruner.stop()
        await worker.stop()
        if process is not None:
            await process.stop()
        await channels.stop()
        if leases is not None:  # other replicas take over what this one had at once
            with contextlib.suppress(StorageUnavailable):
                await leases.release_all()
        if reads is not db:
            await reads.close()

    app.cleanup_ctx.extend([storage_ctx, http_ctx, services_ctx])
    for module in (messenger, livechat, admin, health, metrics, openapi):
        app.add_routes(module.routes)
    setup_console(app, settings)
    return app
