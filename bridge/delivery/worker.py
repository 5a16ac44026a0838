"""The delivery worker: claims due outbox items, runs them concurrently, settles each outcome.

At-least-once: an item is deleted only after its call succeeded, so a crash in between means
one more call with the same ids, which the other side drops. Per-lane order comes from the
claim (only a lane's oldest pending item is claimable) plus one item in flight per lane; with
several replicas on one PostgreSQL database, plus the lane's lease (bridge/leases.py), which the
replica holding the lane's head in flight renews until it settles it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection
from typing import Protocol

import structlog

from bridge.backoff import backoff
from bridge.channels import ChannelManager
from bridge.core.model import Delivered, Failed, Retry, Unauthorized
from bridge.core.outbox_kinds import OUTCOME, target_of
from bridge.core.tasks import cancel_and_wait
from bridge.delivery.calls import CallResult
from bridge.delivery.settle import Settlement, Settler
from bridge.leases import Leases
from bridge.logs import Redactor, debug_enabled
from bridge.metrics import Metrics
from bridge.settings import DeliverySettings
from storage import leases as lease_repo
from storage import outbox
from storage.outbox import OutboxItem
from storage.port import Connection, StorageUnavailable, Store

log = structlog.get_logger("delivery")

MAX_IDLE = 1.0  # seconds between looks at the outbox when nothing wakes the worker
MIN_IDLE = 0.01
BUSY_IDLE = 0.1  # between looks while deliveries are in flight
# Longest pause between tries of a settle that could not be written (with delivery.retry_cap,
# if lower): once storage is back, an item's settle lands within about this many seconds.
SETTLE_RETRY_CAP = 10.0


class Caller(Protocol):
    """Makes an item's outside call: `calls.LocalCaller` here, or the delivery process."""

    async def call(self, item: OutboxItem, active: Collection[str]) -> CallResult: ...


class OutboxWorker:
    def __init__(
        self,
        db: Store,
        settings: DeliverySettings,
        caller: Caller,
        settler: Settler,
        channels: ChannelManager,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        *,
        secrets: Collection[str] = (),
        leases: Leases | None = None,
    ) -> None:
        self._metrics = metrics
        self._db = db
        self._settings = settings
        # Every configured secret (Settings.secrets()), kept out of the stored last_error.
        self._scrub = Redactor(secrets).redact
        self._caller = caller
        self._settler = settler
        self._channels = channels
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._claiming: asyncio.Future[outbox.LeasedClaim] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._claim_batch = max(1, settings.concurrency // 8)
        # Replicas on PostgreSQL: the lease of each item's lane, by item id, while in flight.
        self._leases = leases
        self._leased: dict[int, str] = {}
        self._renewals: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="delivery-worker")
        if self._leases is not None:
            self._renewals = asyncio.create_task(self._renew(self._leases), name="lane-leases")

    async def stop(self) -> None:
        self._stopping = True
        try:
            await cancel_and_wait(self._task, self._renewals, *self._inflight.values())
        finally:  # even when this stop is itself cancelled: the claim's leases must not outlive it
            if self._claiming is not None:  # a claim cut short: let its transaction end first
                await asyncio.wait([self._claiming])
                if not self._claiming.cancelled():
                    self._claiming.exception()  # seen: its failure is the stop's no longer
                self._claiming = None
            self._task = self._renewals = None
            self._inflight.clear()
            self._leased.clear()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except StorageUnavailable as exc:  # expected while the database is locked or full
                log.error("delivery.storage_unavailable", error=str(exc))
                await asyncio.sleep(MAX_IDLE)
            except Exception:  # anything else: keep the worker alive, look again shortly
                log.exception("delivery.round_failed")
                await asyncio.sleep(MAX_IDLE)

    async def _round(self) -> None:
        self._wakeup.clear()
        free = self._settings.concurrency - len(self._inflight)
        # A claim costs about the same for one item as for a hundred (it walks the heads of the
        # lanes): while the worker is nearly full, wait for a few more completions first.
        if free > 0 and (free >= self._claim_batch or len(self._inflight) < self._claim_batch):
            now, inflight, leases = self._clock(), self._inflight, self._leases

            def claim(conn: Connection) -> outbox.LeasedClaim:
                # `inflight` is read when the claim runs, after every settle queued before it.
                if leases is None:
                    items = outbox.claim_ready(conn, now, free, inflight, len(inflight))
                    return outbox.LeasedClaim(items, {})
                return outbox.claim_leased(
                    conn,
                    now,
                    free,
                    inflight,
                    len(inflight),
                    holder=leases.holder,
                    lease_seconds=leases.seconds,
                )

            # READ COMMITTED: the claim's rows are locked (FOR UPDATE SKIP LOCKED) and a lane's
            # lease is taken by an upsert that re-checks the holder and expiry on the row it
            # locks, so two replicas never both take a lane; SERIALIZABLE added only rollbacks.
            # Shielded and kept: a stop that cancels this round must not leave the claim's
            # transaction running on after it (its thread commits it anyway), or the lane leases
            # it takes would outlive the stop's release of them, and hold those lanes from every
            # replica until they expire. `stop` waits for it.
            self._claiming = asyncio.ensure_future(
                self._db.write(claim, isolation="read committed")
            )
            claimed = await asyncio.shield(self._claiming)
            items = claimed.items
            if claimed.taken_over:
                self._taken_over(claimed)
            for item in items:
                if leases is not None:
                    self._leased[item.id] = lease_repo.lane_lease(item.lane)
                self._inflight[item.id] = asyncio.create_task(self._deliver(item))
            if items and len(items) == free:
                return  # there may be more ready: look again at once
        if self._inflight:
            # Each completion wakes the worker: under load, no need to ask when the next
            # retry is due (a read per round); a short look-again still catches due retries.
            idle = BUSY_IDLE
        else:
            due = await outbox.next_due(self._db)
            idle = MAX_IDLE if due is None else min(MAX_IDLE, max(MIN_IDLE, due - self._clock()))
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that arrives just
        # as the event fires, and stop() would then wait forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(idle):
                await self._wakeup.wait()

    def _taken_over(self, claimed: outbox.LeasedClaim) -> None:
        """Say that this claim took lanes over from replicas whose leases had expired (each
        died, or stalled past its lease): the heads they had in flight are performed again."""
        taken_over = claimed.taken_over
        self._metrics.lane_takeovers.inc(len(taken_over))
        log.warning(
            "delivery.lanes_taken_over",
            count=len(taken_over),
            previous_holders=sorted(set(taken_over.values())),
            items=[item.id for item in claimed.items if item.lane in taken_over],
            effect="performed again, with the same ids (the receivers drop repeats)",
        )

    async def _deliver(self, item: OutboxItem) -> None:
        ids: dict[str, object] = {
            "item": item.id,
            "kind": item.kind,
            "lane": item.lane,
            "ref": item.ref_id,
        }
        try:
            target = target_of(item.kind)
            started = time.perf_counter()
            try:
                done = await self._caller.call(item, self._channels.active_ids())
            except Exception as exc:
                log.exception("delivery.attempt_crashed", **ids)
                done = CallResult(Retry(f"internal error: {type(exc).__name__}"))
            if done.message is not None:  # the ids the attempt found, for the lines below
                ids.update(done.message.log_ids())
            elif item.channel_id is not None:
                ids["channel"] = item.channel_id
            attempt = self._settler.plan(item, done)
            if done.notified and done.message is not None:
                m = self._metrics
                m.child(m.deliveries, target_of(OUTCOME.name), "delivered").inc()
                await self._channels.record_delivery(done.message.channel_id, Delivered())
            m = self._metrics
            m.child(m.delivery_seconds, target).observe(time.perf_counter() - started)
            await self._settle(item, attempt, ids)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not storage (whose failures _write_settle waits out): left pending as it
            # was, to be performed again with the same ids. Staying in flight a while keeps it
            # from being claimed again at once.
            log.exception("delivery.settle_failed", **ids)
            await asyncio.sleep(MAX_IDLE)
        finally:
            self._inflight.pop(item.id, None)
            self._leased.pop(item.id, None)
            self.wake()

    async def _settle(self, item: OutboxItem, attempt: Settlement, ids: dict[str, object]) -> None:
        # No bound logger kept: each would cost a logger's creation per delivery, for a line at
        # debug that is usually not written.
        result, now, cfg = attempt.result, self._clock(), self._settings
        if attempt.channel_id is not None:
            try:
                await self._channels.record_delivery(attempt.channel_id, result)
            except StorageUnavailable as exc:  # the channel's state waits; the item's does not
                log.error("delivery.channel_state_not_written", error=str(exc), **ids)

        follow_up = None
        target, m = target_of(item.kind), self._metrics
        # An outside party's answer can echo a secret (a token in an error text): what is kept
        # as last_error reaches the admin API, the CLI and the console.
        error = "" if isinstance(result, Delivered) else self._scrub(result.error)
        if isinstance(result, Delivered):
            m.child(m.deliveries, target, "delivered").inc()
            follow_up = attempt.on_delivered
            # The hot path logs at debug; failures log louder.
            if debug_enabled():
                log.debug(
                    "delivery.done", attempts=item.attempts + 1, notified=attempt.notified, **ids
                )

            def work(conn: Connection) -> bool:
                return outbox.complete(conn, item.id)
        elif isinstance(result, Unauthorized):
            # Not the item's fault: the channel is now rejected and holds it until an admin acts.
            m.child(m.deliveries, target, "unauthorized").inc()
            log.warning("delivery.unauthorized", error=error, **ids)
            at = now + backoff(1, cfg.retry_base, cfg.retry_cap)

            def work(conn: Connection) -> bool:
                return outbox.reschedule(
                    conn, item.id, attempts=item.attempts, at=at, error=error, now=now
                )
        else:
            attempts = item.attempts + 1
            give_up = isinstance(result, Failed) or (
                now - item.created_at >= cfg.give_up_after and attempts >= cfg.min_attempts
            )
            if give_up:
                m.child(m.deliveries, target, "dead").inc()
                follow_up = attempt.on_dead
                log.error("delivery.dead", attempts=attempts, error=error, **ids)

                def work(conn: Connection) -> bool:
                    return outbox.bury(conn, item.id, attempts=attempts, error=error, now=now)
            else:
                m.child(m.deliveries, target, "retry").inc()
                m.child(m.retries, target).inc()
                delay = backoff(attempts, cfg.retry_base, cfg.retry_cap)
                if isinstance(result, Retry) and result.after is not None:
                    delay = max(delay, min(result.after, cfg.retry_cap))
                log.warning(
                    "delivery.retry",
                    attempts=attempts,
                    error=error,
                    delay=round(delay, 3),
                    **ids,
                )

                def work(conn: Connection) -> bool:
                    return outbox.reschedule(
                        conn,
                        item.id,
                        attempts=attempts,
                        at=now + delay,
                        error=error,
                        now=now,
                    )

        always = attempt.always
        lease, holder = self._leased.get(item.id), self._leases.holder if self._leases else ""

        def settle(conn: Connection) -> None:
            if always is not None:
                always(conn)
            if work(conn) and follow_up is not None:
                follow_up(conn)
            if lease is not None:  # the lane is free for any replica once this commits
                lease_repo.release(conn, (lease,), holder)

        await self._write_settle(settle, ids)

    async def _renew(self, leases: Leases) -> None:
        """Renew the leases of the lanes in flight, a third of a lease apart, until stopped. A
        lost lease (this replica stalled past its expiry, and another took the lane over) is
        logged: that item may be performed twice, with the same ids."""
        while True:
            await asyncio.sleep(leases.renew_every)
            try:
                lost = await leases.renew(set(self._leased.values()))
            except StorageUnavailable as exc:
                log.error("delivery.lease_not_renewed", error=str(exc))
                continue
            for name in lost & set(self._leased.values()):  # not those settled meanwhile
                log.warning("delivery.lease_lost", lease=name)

    async def _write_settle(
        self, settle: Callable[[Connection], None], ids: dict[str, object]
    ) -> None:
        """Write an attempt's settle, trying again under back-off while storage refuses it
        (locked, full, read-only). The item stays in flight meanwhile, so it is not claimed
        again: the outside call, already made, is not repeated while only its settle waits.
        A settle may run more than once (a commit whose success was not seen): it re-checks
        that the item is still pending, so its follow-ups never run twice."""
        cfg = self._settings
        cap = min(cfg.retry_cap, SETTLE_RETRY_CAP)
        failures = 0
        while True:
            try:
                # SERIALIZABLE (the default), not READ COMMITTED: a settle may link a chat to
                # its live-chat customer and adopt the replies kept for it, while an operator's
                # reply, in a SERIALIZABLE work of its own, looks for that link; a READ
                # COMMITTED settle's link is invisible to the reply's conflict checks, and the
                # reply was kept as an orphan after the adoption had run (once, in the
                # three-replica kill -9 test).
                await self._db.write(settle)
            except StorageUnavailable as exc:
                failures += 1
                delay = backoff(failures, cfg.retry_base, cap)
                log.error(
                    "delivery.settle_failed",
                    error=str(exc),
                    failures=failures,
                    retry_in=round(delay, 3),
                    **ids,
                )
                await asyncio.sleep(delay)
                continue
            if failures:
                log.info("delivery.settle_written", failures=failures, **ids)
            return
