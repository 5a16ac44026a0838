"""Deliveries shared between the delivery process and the serving process under load.

The delivery process takes every item while it keeps up, so that acks never wait behind
deliveries. With `share_after` 0 (the default) that is all. Otherwise, once it has
`share_after` items in flight it is falling behind (its in-flight
count grows with its latency), and the serving process performs items too, whichever of the two
has fewer in flight taking the next one. On a machine whose cores are not all busy the two then
both work, instead of one waiting on the other; the serving process's own items also skip the
trip through the socket. While the delivery process is not running (starting, after every start
of the service, until it says it is ready; or died and being started again), the serving
process performs everything.

Order is unaffected: the worker keeps one item in flight per lane, whoever performs it.
"""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import Counter

from bridge.delivery.calls import CallResult, LocalCaller
from bridge.delivery.child_process import ChildProcess
from storage.outbox import OutboxItem


class SplitCaller:
    def __init__(
        self, process: ChildProcess, local: LocalCaller, share_after: int, counter: Counter
    ) -> None:
        self._process = process
        self._local = local
        self._after = share_after
        self._in_process = counter.labels("delivery")
        self._in_serving = counter.labels("serving")
        self._local_inflight = 0

    def _here(self) -> bool:
        if not self._process.running:
            return True  # starting, or died and being started again: stand in
        if self._after == 0:  # never share under load: acks keep the serving loop to themselves
            return False
        remote = self._process.inflight
        return remote >= self._after and remote > self._local_inflight

    async def call(self, item: OutboxItem, active: Collection[str]) -> CallResult:
        if not self._here():
            self._in_process.inc()
            return await self._process.call(item, active)
        self._in_serving.inc()
        self._local_inflight += 1
        try:
            return await self._local.call(item, active)
        finally:
            self._local_inflight -= 1
