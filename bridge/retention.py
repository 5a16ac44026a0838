"""The pruner: applies `[retention]` in the background, in small batches.

Every batch is its own short write through `Store.write`, with a pause after it, so an
ack queued meanwhile waits for one batch at most, never for a whole pass. A pass runs shortly
after start-up and then every `PASS_EVERY` seconds; `prune_once` runs one at once (tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial

import structlog

from bridge.core.tasks import cancel_and_wait
from bridge.metrics import Metrics
from bridge.relay import Relay
from bridge.settings import RetentionSettings
from storage import retention
from storage.port import Connection, StorageUnavailable, Store

log = structlog.get_logger("retention")

DAY = 86_400.0
HOUR = 3_600.0
FIRST_PASS_AFTER = 30.0  # seconds after start-up: out of the way of start-up's own work
PASS_EVERY = 600.0

Step = Callable[..., tuple[int, int | None]]


class Pruner:
    def __init__(
        self,
        db: Store,
        settings: RetentionSettings,
        relay: Relay,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._settings = settings
        self._relay = relay
        self._metrics = metrics
        self._clock = clock
        self._lock = asyncio.Lock()  # one pass at a time
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    async def _run(self) -> None:
        await asyncio.sleep(FIRST_PASS_AFTER)
        while True:
            try:
                await self.prune_once()
            except StorageUnavailable as exc:  # the next pass tries again
                log.error("retention.storage_unavailable", error=str(exc))
            except Exception:
                log.exception("retention.pass_failed")
            await asyncio.sleep(PASS_EVERY)

    def _steps(self) -> list[tuple[str, float, Step]]:
        s = self._settings
        return [
            ("orphans", s.orphan_after * HOUR, self._bury_orphans),
            # Whole rows first: no body is blanked in a row about to go.
            ("closed_sessions", s.closed_sessions * DAY, retention.prune_sessions),
            ("messages", s.messages * DAY, retention.prune_messages),
            ("message_bodies", s.message_bodies * DAY, retention.prune_bodies),
            ("events", s.events * DAY, retention.prune_events),
        ]

    async def prune_once(self, now: float | None = None) -> dict[str, int]:
        """One whole pass as of `now` (default: the clock); rows pruned per step. A step whose
        age is 0 (keep forever) is skipped."""
        now = self._clock() if now is None else now
        counts: dict[str, int] = {}
        async with self._lock:
            for name, age, step in self._steps():
                if age <= 0:
                    continue
                counts[name] = await self._step(step, now - age)
                if counts[name]:
                    self._metrics.pruned.labels(name).inc(counts[name])
        if any(counts.values()):
            log.info("retention.pruned", **counts)
        return counts

    async def _step(self, step: Step, cutoff: float) -> int:
        total, after = 0, 0
        while True:
            work = partial(step, cutoff=cutoff, after=after, limit=self._settings.batch)
            pruned, cursor = await self._db.write(work)
            total += pruned
            if cursor is None:
                return total
            after = cursor
            await asyncio.sleep(self._settings.pause)

    def _bury_orphans(
        self, conn: Connection, *, cutoff: float, after: int, limit: int
    ) -> tuple[int, int | None]:
        buried = self._relay.bury_orphans(conn, cutoff, limit)
        return buried, after if buried == limit else None
