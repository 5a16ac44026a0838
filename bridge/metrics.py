"""Prometheus metrics, in a registry of the application's own (tests run many apps at once)."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from bridge.version import version

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


M = TypeVar("M", Counter, Gauge, Histogram)


class Metrics:
    def __init__(self) -> None:
        # Each metric's children by label values, looked up once (see `child`).
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry = CollectorRegistry()
        # bridge_build_info{version="..."} 1: which release each replica runs.
        Info("bridge_build", "The running release", registry=r).info({"version": version()})
        self.requests = Counter(
            "bridge_http_requests",
            "Inbound HTTP requests",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "bridge_http_request_duration_seconds",
            "Time to answer an inbound request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.deliveries = Counter(
            "bridge_deliveries",
            "Outside calls made by the delivery worker, by target and result",
            ["target", "result"],
            registry=r,
        )
        self.retries = Counter(
            "bridge_delivery_retries",
            "Deliveries rescheduled after a failure",
            ["target"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "bridge_delivery_duration_seconds",
            "Time one outside call took",
            ["target"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_process_starts = Counter(
            "bridge_delivery_process_starts",
            "Starts of the delivery process (more than one: it died and was restarted)",
            registry=r,
        )
        self.performed = Counter(
            "bridge_delivery_performed",
            "Deliveries made with the delivery process on, by the process that made the call "
            "(serving: it shared the load, or stood in while the delivery process was down)",
            ["process"],
            registry=r,
        )
        self.inbound_conflicts = Counter(
            "bridge_inbound_conflicts",
            "Messages answered 409 conflicting_duplicate: an externalMessageId already stored"
            " for another chat, text or files",
            ["channel"],
            registry=r,
        )
        self.pruned = Counter(
            "bridge_retention_pruned",
            "Rows pruned by retention, by step (see [retention])",
            ["step"],
            registry=r,
        )
        self.lane_takeovers = Counter(
            "bridge_lane_takeovers",
            "Outbox lanes a replica took over from another whose lease had expired (it died or"
            " stalled): their head items are performed again, with the same ids",
            registry=r,
        )
        self.outbox_pending = Gauge("bridge_outbox_pending", "Outbox items waiting", registry=r)
        self.outbox_dead = Gauge("bridge_outbox_dead", "Outbox items given up", registry=r)
        self.outbox_oldest_age = Gauge(
            "bridge_outbox_oldest_age_seconds", "Age of the oldest pending outbox item", registry=r
        )
        self.sessions_open = Gauge("bridge_sessions_open", "Open sessions", registry=r)
        self.channel_state = Gauge(
            "bridge_channel_state",
            "1 for each messenger channel's current state, 0 for the others",
            ["channel", "state"],
            registry=r,
        )

    def child(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, kept: prometheus_client validates the values and takes a
        lock on every `labels` call, which the hot paths paid several times per message (about
        2% of the serving process's CPU under load). The children are never removed from these
        metrics, so a kept one stays the one exported."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found
