"""Dead letters: an admin retries or purges dead outbox items, one or a scope at a time.

A retried item is pending again with a fresh count of attempts and a fresh give-up horizon, at
the end of its lane (`storage.outbox.requeue`); it refers to the same message or event, so what
the receiver sees keeps its stable id (the message uid as the live chat's `id` and the
messenger's `messageId`, the event's `webhook-id`) and a repeat is still dropped. An operator's
reply kept because no chat was linked (`KEPT_REPLY`) is routed again instead: queued for its
chat's messenger if one is linked now, else dead again with the reason.

Both actions are idempotent: they only ever touch items that are dead when they run. They run
in batches of `retention.batch` items, each its own short write.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import structlog

from bridge.core.outbox_kinds import MESSAGE_DELIVERIES
from bridge.relay import Relay
from storage import messages, outbox
from storage.outbox import Scope
from storage.port import Connection, Store

log = structlog.get_logger("deadletters")

MAX_LISTED = 100  # items named in an answer; the counts cover all of them

Result = Literal["retried", "adopted", "dead", "purged", "skipped"]


@dataclass(frozen=True, slots=True)
class Done:
    """What became of one item."""

    id: int
    kind: str
    result: Result
    new_id: int | None = None
    error: str | None = None


@dataclass
class Report:
    """What an action did: counts, and the first `MAX_LISTED` items with what became of each
    (`new_id`: the retried item's id in the outbox now)."""

    action: str
    matched: int = 0
    retried: int = 0
    adopted: int = 0
    dead: int = 0
    purged: int = 0
    skipped: int = 0
    items: list[dict[str, Any]] = field(default_factory=list)

    def add(self, done: Done) -> None:
        self.matched += 1
        setattr(self, done.result, getattr(self, done.result) + 1)
        if len(self.items) < MAX_LISTED:
            self.items.append(
                {
                    "id": done.id,
                    "kind": done.kind,
                    "result": done.result,
                    "new_id": done.new_id,
                    "error": done.error,
                }
            )

    def counts(self) -> dict[str, int]:
        return {
            k: getattr(self, k)
            for k in ("matched", "retried", "adopted", "dead", "purged", "skipped")
        }


class UnknownItem(Exception):
    """No outbox item has this id (delivered items are deleted)."""


class DeadLetters:
    def __init__(
        self,
        db: Store,
        relay: Relay,
        wake: Callable[[], None],
        batch: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._relay = relay
        self._wake = wake
        self._batch = batch
        self._clock = clock

    async def retry(self, scope: Scope) -> Report:
        def work(conn: Connection, after: int) -> list[Done]:
            now, done = self._clock(), []
            for item, _ in outbox.dead_items(conn, scope, after, self._batch):
                if item.kind == outbox.KEPT_REPLY:
                    reason = self._relay.route_kept_reply(conn, item.payload)
                    if reason is None:
                        conn.execute("DELETE FROM outbox WHERE id = ?", (item.id,))
                        done.append(Done(item.id, item.kind, "adopted"))
                    else:
                        outbox.still_dead(conn, item.id, error=f"{reason} (retried)", now=now)
                        done.append(Done(item.id, item.kind, "dead", error=reason))
                    continue
                new_id = outbox.requeue(conn, item, now)
                if item.kind in MESSAGE_DELIVERIES and item.ref_id:
                    messages.set_status(conn, item.ref_id, "pending")
                done.append(Done(item.id, item.kind, "retried", new_id=new_id))
            return done

        report = await self._batches(Report("retry"), scope, work)
        if report.retried or report.adopted:
            self._wake()
        return report

    async def purge(self, scope: Scope) -> Report:
        def work(conn: Connection, after: int) -> list[Done]:
            found = [item for item, _ in outbox.dead_items(conn, scope, after, self._batch)]
            outbox.purge(conn, [item.id for item in found])
            return [Done(item.id, item.kind, "purged") for item in found]

        return await self._batches(Report("purge"), scope, work)

    async def _batches(
        self,
        report: Report,
        scope: Scope,
        work: Callable[..., list[Done]],
    ) -> Report:
        """Run `work` batch after batch, each its own write, until a batch comes back short.
        What a batch did is counted only once it is committed: a work may run twice when
        the write it shared with others failed, and is retried alone."""
        if scope.item_id is not None:
            item_id = scope.item_id

            def status(conn: Connection) -> str | None:
                return outbox.status_of(conn, item_id)

            found = await self._db.write(status)
            if found is None:
                raise UnknownItem(item_id)
            if found != "dead":  # pending already: nothing to do
                report.matched, report.skipped = 1, 1
                self._log(scope, report)
                return report
        after = 0
        while True:
            done = await self._db.write(partial(work, after=after))
            for d in done:
                report.add(d)
            if len(done) < self._batch:
                break
            after = done[-1].id
            await asyncio.sleep(0)  # let acks queued meanwhile have the writer
        self._log(scope, report)
        return report

    @staticmethod
    def _log(scope: Scope, report: Report) -> None:
        log.info(
            f"outbox.{report.action}",
            item=scope.item_id,
            channel=scope.channel,
            livechat=scope.livechat,
            **report.counts(),
        )
