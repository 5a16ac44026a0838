"""What the overview page shows beyond the database's counts: call times from the metrics, and
the geometry of the hourly chart (an inline SVG drawn on the server, no script)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client import Histogram

from storage.stats import HourCounts


@dataclass(frozen=True, slots=True)
class CallTimes:
    target: str  # livechat, messenger or subscriber
    count: int  # calls since the process started
    p50: float | None  # seconds, estimated from the histogram's buckets
    p95: float | None


def call_times(histogram: Histogram) -> list[CallTimes]:
    """Per target, the outside calls' count and estimated median and 95th percentile, from
    `bridge_delivery_duration_seconds` (since this process started)."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_bucket"):
                upper = float(sample.labels["le"])
                buckets.setdefault(sample.labels["target"], []).append((upper, sample.value))
    times = []
    for target, cumulative in sorted(buckets.items()):
        cumulative.sort()
        total = int(cumulative[-1][1]) if cumulative else 0
        times.append(
            CallTimes(target, total, _quantile(cumulative, 0.5), _quantile(cumulative, 0.95))
        )
    return times


def _quantile(cumulative: list[tuple[float, float]], q: float) -> float | None:
    """Linear within the bucket the rank falls in, as Prometheus' histogram_quantile does."""
    total = cumulative[-1][1] if cumulative else 0
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower_bound  # above the largest finite bucket: its bound is all we know
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (upper - lower_bound) * share
        lower_bound, lower_count = upper, count
    return lower_bound


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    height: float
    label: str  # the tooltip: the hour and its counts


@dataclass(frozen=True, slots=True)
class Chart:
    width: int
    height: int
    bar_width: float
    delivered: list[Bar]
    failed: list[Bar]
    ticks: list[tuple[float, str]]  # (x, "HH:00") under every sixth hour
    peak: int  # the value the chart's full height stands for


def hourly_chart(hours: list[HourCounts], width: int = 720, height: int = 160) -> Chart:
    """Two bars per hour, delivered beside failed, scaled to the busiest hour."""
    peak = max([1, *(max(h.delivered, h.failed) for h in hours)])
    slot = width / max(1, len(hours))
    bar = slot * 0.4
    delivered: list[Bar] = []
    failed: list[Bar] = []
    ticks: list[tuple[float, str]] = []
    for i, h in enumerate(hours):
        x = i * slot + slot * 0.1
        hour = _hour(h.start)
        label = f"{hour}: {h.delivered} delivered, {h.failed} failed"
        for value, bars, offset in ((h.delivered, delivered, 0.0), (h.failed, failed, bar)):
            size = height * value / peak
            bars.append(Bar(round(x + offset, 1), round(height - size, 1), round(size, 1), label))
        if i % 6 == 0:
            ticks.append((round(x, 1), hour))
    return Chart(width, height, round(bar, 1), delivered, failed, ticks, peak)


def _hour(ts: float) -> str:
    return f"{int(ts // 3600 % 24):02d}:00"
