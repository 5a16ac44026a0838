"""The life cycle of each messenger channel: connecting, active, interrupted, rejected, disconnected.

States are persisted (so the CLI, the admin API and a restarted service see them) and cached in
memory for the request path. A channel that is not active holds every call to its messenger in
the outbox; becoming active releases them, in order.

Replicas sharing a PostgreSQL database (with `leases`): each change of a channel's state is
notified (storage/notify.py), and every replica reads the changed rows again into its cache
(`refresh`), besides every `REFRESH_EVERY` seconds in case a notification was lost. One replica
at a time runs a channel's reconnect attempts: the holder of its lease (bridge/leases.py); the
others' loops wait for the lease, and take over if the holder dies. Whether a change makes the
channel active, and so releases its held items, is decided on the row locked in the change's
transaction: the release happens once, whichever replica makes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Callable
from functools import partial

import structlog

from bridge.backoff import backoff
from bridge.core.model import ChannelState, Delivered, DeliveryResult, Unauthorized
from bridge.core.tasks import cancel_and_wait
from bridge.leases import Leases
from bridge.settings import Settings
from connectors.messenger import MessengerClient
from storage import channels as repo
from storage import outbox
from storage.channels import ChannelRow
from storage.leases import channel_lease
from storage.notify import CHANNELS, notify
from storage.port import Connection, StorageUnavailable, Store

log = structlog.get_logger("channels")

STATES = tuple(ChannelState)
CONNECTING, ACTIVE, INTERRUPTED, REJECTED, DISCONNECTED = STATES
NEED_AN_ADMIN = (INTERRUPTED, REJECTED)  # logged at warning when a channel enters one
RECONNECTING = (CONNECTING, INTERRUPTED)  # states a reconnect loop works on
# Replicas: seconds between reads of every channel's row when no notification came, and
# between looks at a channel's reconnect lease that another replica holds.
REFRESH_EVERY = 5.0
LEASE_POLL = 1.0


class ChannelManager:
    def __init__(
        self,
        db: Store,
        settings: Settings,
        clients: dict[str, MessengerClient],
        wake: Callable[[], None],
        clock: Callable[[], float] = time.time,
        *,
        leases: Leases | None = None,
    ) -> None:
        self._db = db
        self._leases = leases  # None: this process is the database's only one (SQLite)
        self._settings = settings
        self._wake = wake
        self._clock = clock
        self.clients = clients  # by channel id, from the process's one build_connectors
        self._rows: dict[str, ChannelRow] = {}
        self._active: frozenset[str] | None = None
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, int] = {}
        # Replicas: a refresh and a change of this replica's do not interleave (a refresh's
        # older read would undo the change in the cache).
        self._changing = asyncio.Lock()
        self._stale = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None

    # --- reading -----------------------------------------------------------------------

    def row(self, channel_id: str) -> ChannelRow:
        return self._rows[channel_id]

    def channel_ids(self) -> list[str]:
        return sorted(self._rows)

    def active_ids(self) -> frozenset[str]:
        """Asked for every delivery: rebuilt only when a state changes."""
        if self._active is None:
            self._active = frozenset(cid for cid, row in self._rows.items() if row.state == ACTIVE)
        return self._active

    def state(self, channel_id: str) -> str:
        row = self._rows.get(channel_id)
        return row.state if row else DISCONNECTED

    def webhook_url(self, channel_id: str) -> str:
        return f"{self._settings.server.public_url}/messengers/{channel_id}/webhook"

    # --- start and stop ----------------------------------------------------------------

    async def start(self) -> None:
        now = self._clock()
        for stale in await repo.all_channels(self._db):
            if stale.id not in self._settings.messengers and stale.state != DISCONNECTED:
                # Removed from the config: hold what it has queued rather than drop it.
                stale_set = partial(
                    repo.set_state,
                    channel_id=stale.id,
                    state=DISCONNECTED,
                    now=now,
                    last_error="no longer in the configuration",
                )
                await self._db.write(stale_set)
        # An empty confirmation_code is warned about with the other config warnings (app.py).
        for cid, messenger in self._settings.messengers.items():
            sync = partial(
                repo.sync_from_config, channel_id=cid, config_enabled=messenger.enabled, now=now
            )
            row = self._rows[cid] = await self._db.write(sync)
            self._active = None
            if not row.enabled:
                if row.state != DISCONNECTED:
                    await self._set(cid, DISCONNECTED, "disabled in the configuration")
            elif row.state in (CONNECTING, INTERRUPTED, DISCONNECTED):
                self._start_loop(cid)
            elif row.state == ACTIVE and row.connected_webhook != self.webhook_url(cid):
                # public_url changed since the messenger was told (or it was never recorded,
                # before this was stored): it must learn the new URL, as in a reconnect.
                log.info("channel.webhook_changed", channel=cid)
                await self._set(cid, CONNECTING, "the webhook URL changed")
                self._start_loop(cid)
            log.info("channel.loaded", channel=cid, state=self.state(cid))
        if self._leases is not None:
            self._refresher = asyncio.create_task(
                self._refresh_loop(), name="channel-refresh", context=contextvars.Context()
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._refresher, *self._loops.values())
        self._loops.clear()
        self._refresher = None

    # --- what other replicas changed ---------------------------------------------------

    def changed_elsewhere(self, _channel_id: str = "") -> None:
        """A channel's state may have changed (a notification, or listening began again after
        notifications were lost): read the rows again soon. Called on the event loop."""
        self._stale.set()

    async def _refresh_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_EVERY):
                    await self._stale.wait()
            self._stale.clear()
            try:
                await self.refresh()
            except Exception:  # storage down: the next round tries again
                log.exception("channel.refresh_failed")

    async def refresh(self) -> None:
        """Bring the cache up to date with the database (another replica's changes), and act
        on a changed state as if it were this replica's: a channel that became active wakes
        the worker; a channel no longer reconnecting stops this replica's loop; one that is
        reconnecting gets a loop here too, which waits for the lease and takes over from a
        replica that died."""
        async with self._changing:
            rows = {row.id: row for row in await repo.all_channels(self._db)}
            for cid, old in list(self._rows.items()):
                new = rows.get(cid)
                if new is None or new == old:
                    continue
                self._rows[cid] = new
                self._active = None
                if new.state == old.state:
                    continue
                log.info("channel.state_seen", channel=cid, state=new.state, previous=old.state)
                if new.state == ACTIVE:
                    self._failures[cid] = 0
                    self._wake()
                if new.state not in RECONNECTING:
                    self._cancel_loop(cid)
                elif new.enabled and cid not in self._loops:
                    self._start_loop(cid)

    # --- admin actions ------------------------------------------------------------------

    async def connect(self, channel_id: str, *, force: bool = False) -> ChannelRow:
        """Enable the channel and send `connect`; `force` resends it to an active channel.

        Waits for the first attempt so the admin sees its outcome; later attempts go on in
        the background under back-off.
        """
        if self.state(channel_id) == ACTIVE and not force:
            return self.row(channel_id)
        await self._set(channel_id, CONNECTING, None, enabled=True)
        # An admin's connect is made now, by this replica, whichever was trying before.
        first = self._start_loop(channel_id, steal=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.delivery.request_timeout + 1):
                await asyncio.shield(first)
        return self.row(channel_id)

    async def disconnect(self, channel_id: str, *, by_messenger: bool = False) -> ChannelRow:
        self._cancel_loop(channel_id)
        reason = "disconnected by the messenger" if by_messenger else "disconnected by an admin"
        await self._set(channel_id, DISCONNECTED, reason, enabled=False)
        if not by_messenger:
            # Best effort, once: the messenger is told, but its answer cannot undo the disconnect.
            result = await self.clients[channel_id].disconnect()
            if not isinstance(result, Delivered):
                log.warning(
                    "channel.disconnect_not_acknowledged", channel=channel_id, error=_err(result)
                )
        return self.row(channel_id)

    # --- what deliveries tell us -------------------------------------------------------

    async def record_delivery(self, channel_id: str, result: DeliveryResult) -> None:
        if channel_id not in self._rows:
            return
        if isinstance(result, Delivered):
            self._failures[channel_id] = 0
            return
        if isinstance(result, Unauthorized):
            self._cancel_loop(channel_id)
            await self._set(channel_id, REJECTED, result.error)
            return
        failures = self._failures[channel_id] = self._failures.get(channel_id, 0) + 1
        threshold = self._settings.delivery.failures_before_interrupted
        if failures >= threshold and self.state(channel_id) == ACTIVE:
            await self._set(
                channel_id, INTERRUPTED, f"{failures} deliveries failed: {_err(result)}"
            )
            self._start_loop(channel_id, first_delay=True)

    # --- internals ----------------------------------------------------------------------

    async def _set(
        self,
        channel_id: str,
        state: str,
        error: str | None,
        *,
        enabled: bool | None = None,
        webhook: str | None = None,
    ) -> None:
        """`webhook`: the URL a `connect` the messenger accepted gave it (with ACTIVE)."""
        async with self._changing:
            await self._change(channel_id, state, error, enabled, webhook)

    async def _change(
        self,
        channel_id: str,
        state: str,
        error: str | None,
        enabled: bool | None,
        webhook: str | None,
    ) -> None:
        now = self._clock()

        def work(conn: Connection) -> tuple[bool, int]:
            # Decided on the row as stored (another replica may have changed it), locked.
            became_active = state == ACTIVE and repo.state_for_update(conn, channel_id) != ACTIVE
            released = 0
            repo.set_state(
                conn,
                channel_id,
                state,
                now,
                last_error=error,
                enabled=enabled,
                connected_webhook=webhook,
            )
            if became_active:
                released = outbox.release_channel(conn, channel_id, now)
            notify(conn, CHANNELS, channel_id)  # other replicas refresh their caches
            return became_active, released

        became_active, released = await self._db.write(work)
        old = self._rows[channel_id]
        self._rows[channel_id] = ChannelRow(
            channel_id,
            state,
            now if state != old.state else old.since,
            error,
            old.enabled if enabled is None else enabled,
            old.connected_webhook if webhook is None else webhook,
        )
        self._active = None
        if state != old.state:
            # Rejected and interrupted need an admin (or at least a look): louder than the rest.
            level = log.warning if state in NEED_AN_ADMIN else log.info
            level("channel.state", channel=channel_id, state=state, previous=old.state, error=error)
        if became_active:
            self._failures[channel_id] = 0
            if released:
                log.info("channel.held_released", channel=channel_id, held=released)
            self._wake()

    def _start_loop(
        self, channel_id: str, *, first_delay: bool = False, steal: bool = False
    ) -> asyncio.Future[None]:
        self._cancel_loop(channel_id)
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A fresh context: the loop may be started from a delivery whose ids are bound.
        self._loops[channel_id] = asyncio.create_task(
            self._connect_loop(channel_id, first, first_delay, steal),
            name=f"connect-{channel_id}",
            context=contextvars.Context(),
        )
        return first

    def _cancel_loop(self, channel_id: str) -> None:
        task = self._loops.pop(channel_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _turn(self, channel_id: str, steal: bool) -> bool:
        """Wait until this replica holds the channel's reconnect lease (True), or until the
        channel no longer needs reconnecting (False: another replica connected it, or an admin
        changed it). Without leases (one process): True at once."""
        if self._leases is None:
            return True
        name = channel_lease(channel_id)
        while True:
            try:
                if await self._leases.acquire(name, steal=steal):
                    return True
            except StorageUnavailable as exc:
                log.error("channel.lease_failed", channel=channel_id, error=str(exc))
            if self.state(channel_id) not in RECONNECTING:
                return False
            await asyncio.sleep(min(LEASE_POLL, self._leases.renew_every))

    async def _pause(self, channel_id: str, delay: float) -> None:
        """Sleep `delay` seconds between attempts, renewing the reconnect lease meanwhile."""
        leases = self._leases
        end = time.monotonic() + delay
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(left if leases is None else min(left, leases.renew_every))
            if leases is not None and end - time.monotonic() > 0:
                with contextlib.suppress(StorageUnavailable):  # _turn tries again after
                    await leases.acquire(channel_lease(channel_id))

    async def _connect_loop(
        self, channel_id: str, first: asyncio.Future[None], first_delay: bool, steal: bool
    ) -> None:
        delivery = self._settings.delivery
        attempt = 1 if first_delay else 0  # the back-off's step
        tries = 0  # the connects this loop sent
        try:
            while True:
                if attempt:
                    delay = backoff(attempt, delivery.retry_base, delivery.retry_cap)
                    # Each reconnect is announced with why the last try failed: the log shows
                    # a channel that keeps failing, and when it tries next.
                    log.info(
                        "channel.reconnect",
                        channel=channel_id,
                        attempt=tries + 1,
                        next_try_in=round(delay, 2),
                        last_error=self.row(channel_id).last_error,
                    )
                    await self._pause(channel_id, delay)
                if not await self._turn(channel_id, steal):
                    return
                steal = False
                attempt += 1
                tries += 1
                try:
                    webhook = self.webhook_url(channel_id)
                    result = await self.clients[channel_id].connect(webhook)
                    if isinstance(result, Delivered):
                        await self._set(channel_id, ACTIVE, None, webhook=webhook)
                        return
                    if isinstance(result, Unauthorized):  # a 401 or a 404: see the connector
                        await self._set(channel_id, REJECTED, result.error)
                        return
                    await self._set(channel_id, INTERRUPTED, f"connect failed: {_err(result)}")
                except Exception:  # a storage hiccup must not end the reconnect loop
                    log.exception("channel.connect_loop_error", channel=channel_id)
                finally:
                    if not first.done():
                        first.set_result(None)
        finally:
            if self._loops.get(channel_id) is asyncio.current_task():
                del self._loops[channel_id]
            if not first.done():
                first.set_result(None)
            # The next loop, here or on another replica, may start at once (unless this one
            # was replaced by a new loop here, which holds the lease now).
            if self._leases is not None and channel_id not in self._loops:
                with contextlib.suppress(Exception):
                    await self._leases.release(channel_lease(channel_id))


def _err(result: DeliveryResult) -> str:
    return getattr(result, "error", "") or type(result).__name__
