"""Counts over recent messages for the admin console's overview, read in time bounded by the
recent rows, not by the whole table.

`messages.created_at` has no index (every ingest would pay for one), but ids are given in insert
order and `created_at` is the insert time, so the messages since a moment are the ids from the
first one at or after it, found by bisecting the ids (about 25 point reads for 10^7 rows).
A clock stepped back can put a few rows out of order; then the counts near that step are off
by those rows, which is good enough for an overview.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.port import Dialect, Store

HOUR = 3600.0
DELIVERED = ("delivered", "read")
# The whole hours since the epoch of a message's `created_at`, rounded down: SQLite's CAST
# truncates, PostgreSQL's rounds (and SQLite may be built without floor()).
_HOUR: dict[Dialect, str] = {
    "sqlite": "CAST(created_at / 3600 AS INTEGER)",
    "postgres": "CAST(floor(created_at / 3600) AS INTEGER)",
}


async def first_message_id_since(db: Store, since: float) -> int | None:
    """The smallest message id whose `created_at` >= `since` (Unix s), or None if none."""
    bounds = await db.fetch_one("SELECT min(id) AS lo, max(id) AS hi FROM messages")
    if bounds is None or bounds["lo"] is None:
        return None
    # Invariant: every row below `lo` is older than `since`; every row at or after `hi` is not.
    lo, hi = int(bounds["lo"]), int(bounds["hi"]) + 1
    while lo < hi:
        mid = (lo + hi) // 2
        # The first row at or after `mid`: ids can have gaps (rows pruned).
        row = await db.fetch_one(
            "SELECT id, created_at FROM messages WHERE id >= ? ORDER BY id LIMIT 1", (mid,)
        )
        assert row is not None  # mid < hi <= max(id) + 1
        if row["created_at"] >= since:
            hi = mid
        else:
            lo = int(row["id"]) + 1
    # `lo` may fall in a gap: the answer is the first row at or after it.
    first = await db.fetch_one("SELECT min(id) AS id FROM messages WHERE id >= ?", (lo,))
    return None if first is None or first["id"] is None else int(first["id"])


@dataclass(frozen=True, slots=True)
class HourCounts:
    start: float  # Unix s, the hour's first second
    delivered: int  # delivered or read
    failed: int  # given up (the message's outbox item is dead)


@dataclass(frozen=True, slots=True)
class Traffic:
    inbound: int  # messages from messenger users since `since`
    outbound: int  # messages from operators since `since`
    hours: list[HourCounts]  # the `hours` whole hours up to now, oldest first


async def traffic(db: Store, since: float, now: float, hours: int = 24) -> Traffic:
    """Messages in and out since `since`, and delivered / failed per hour of creation over the
    last `hours` hours (the hour `now` falls in last)."""
    last_hour = now - now % HOUR
    first_hour = last_hour - (hours - 1) * HOUR
    start = min(since, first_hour)
    first_id = await first_message_id_since(db, start)
    inbound = outbound = 0
    per_hour = {first_hour + i * HOUR: [0, 0] for i in range(hours)}
    if first_id is not None:
        rows = await db.fetch_all(
            f"""SELECT status, {_HOUR[db.dialect]} * 3600 AS hour, count(*) AS n
               FROM messages WHERE id >= ? AND created_at >= ?
               GROUP BY status, hour""",  # noqa: S608 (constants only)
            (first_id, start),
        )
        for row in rows:
            status, count = row["status"], row["n"]
            cell = per_hour.get(float(row["hour"]))
            if cell is not None:
                if status in DELIVERED:
                    cell[0] += count
                elif status == "failed":
                    cell[1] += count
        inbound, outbound = await _since(db, first_id, since)
    return Traffic(
        inbound,
        outbound,
        [HourCounts(h, d, f) for h, (d, f) in sorted(per_hour.items())],
    )


async def _since(db: Store, first_id: int, since: float) -> tuple[int, int]:
    rows = await db.fetch_all(
        """SELECT direction, count(*) AS n FROM messages WHERE id >= ? AND created_at >= ?
           GROUP BY direction""",
        (first_id, since),
    )
    counts: dict[str, int] = {r["direction"]: r["n"] for r in rows}
    return counts.get("in", 0), counts.get("out", 0)
