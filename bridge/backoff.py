"""Exponential back-off with jitter and a cap, shared by deliveries and reconnects."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1 = the first retry).

    "Equal jitter": half the exponential delay is fixed, half random, so retries of many items
    that failed together spread out, yet none comes back sooner than half its step.
    """
    step = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 32))
    jitter: float = (rng or random).uniform(0, step / 2)
    return step / 2 + jitter
