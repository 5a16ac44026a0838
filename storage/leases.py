"""Leases: what one replica of several works on at a time, until the lease expires.

A lease is a row of `leases` (step 8): a name (`lane_lease(lane)`, `channel_lease(id)`), its
holder (a replica's id, bridge/leases.py) and when it expires, in seconds since the epoch by
the database server's clock (replicas' clocks may differ; the server's is the one they share).
Taking one is a single `INSERT ... ON CONFLICT DO UPDATE ... WHERE` that succeeds only when the
name is free, expired, or already the taker's: under PostgreSQL's READ COMMITTED the conflicting
row is locked and the condition re-checked on its newest version, so two replicas racing for a
name never both get it.

Only replicas sharing a PostgreSQL database take leases; a SQLite database has one process,
whose in-memory bookkeeping is enough (bridge/leases.py does not call these there). The SQL
works on both all the same.
"""

from __future__ import annotations

from collections.abc import Collection

from storage.port import Connection, Dialect

LANE = "lane:"  # a lane lease's name: this and the lane
CHANNEL = "channel:"  # a channel lease's name: this and the channel's id


def lane_lease(lane: str) -> str:
    """The name of the lease on an outbox lane's head (the one item of the lane in flight)."""
    return LANE + lane


def channel_lease(channel_id: str) -> str:
    """The name of the lease on a messenger channel's reconnect attempts."""
    return CHANNEL + channel_id


def server_now(dialect: Dialect) -> str:
    """An SQL expression: the database server's time now, in seconds since the epoch (REAL)."""
    if dialect == "postgres":
        return "CAST(extract(epoch FROM clock_timestamp()) AS DOUBLE PRECISION)"
    return "((julianday('now') - 2440587.5) * 86400.0)"


def _marks(names: Collection[str]) -> str:
    return ", ".join("?" * len(names))


def acquire(
    conn: Connection, names: Collection[str], holder: str, seconds: float, *, steal: bool = False
) -> dict[str, str | None]:
    """Take (or extend) the leases of `names` for `seconds`; return the names taken, each with
    the holder it was taken from: another replica whose lease had expired (a takeover: it died
    or stalled, and what it had in flight under that name is done again), or None (the name was
    free or already `holder`'s). A name held by another holder, unexpired, is not taken unless
    `steal` (an admin's explicit action; its previous holder is returned likewise)."""
    if not names:
        return {}
    now = server_now(conn.dialect)
    free = "" if steal else f" WHERE leases.holder = excluded.holder OR leases.expires_at <= {now}"
    upsert = f"""ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                     expires_at = excluded.expires_at{free}
                 RETURNING name"""
    if conn.dialect == "postgres":  # one statement for a claim's whole batch
        # `before` reads the statement's snapshot, the upsert the newest version of each row it
        # locks: a row another replica changed in between is re-checked by the upsert, and
        # only taken if that one's lease had expired too (or is ours), so a name taken with a
        # `before` row of another holder was taken from a lease that had run out (or stolen).
        # A row a replica settled or stopped is deleted, not left to expire: no takeover.
        rows = conn.execute(
            f"""WITH before AS (SELECT name, holder FROM leases
                                WHERE name = ANY(CAST(? AS TEXT[]))),
                     taken AS (INSERT INTO leases (name, holder, expires_at)
                               SELECT n, ?, {now} + ? FROM unnest(CAST(? AS TEXT[])) AS n
                               {upsert})
                SELECT taken.name, before.holder AS previous
                FROM taken LEFT JOIN before ON before.name = taken.name""",  # noqa: S608 (constants)
            (list(names), holder, seconds, list(names)),
        ).fetchall()
        return {row["name"]: _other(row["previous"], holder) for row in rows}
    taken: dict[str, str | None] = {}
    for name in names:
        before = conn.execute("SELECT holder FROM leases WHERE name = ?", (name,)).fetchone()
        row = conn.execute(
            f"INSERT INTO leases (name, holder, expires_at) VALUES (?, ?, {now} + ?) {upsert}",  # noqa: S608 (constants)
            (name, holder, seconds),
        ).fetchone()
        if row is not None:
            taken[row["name"]] = _other(before["holder"] if before else None, holder)
    return taken


def _other(previous: str | None, holder: str) -> str | None:
    return previous if previous is not None and previous != holder else None


def renew(conn: Connection, names: Collection[str], holder: str, seconds: float) -> set[str]:
    """Extend those of `names` that `holder` still holds by `seconds` from now; return them (a
    name missing from the answer was lost: it expired and another replica took it)."""
    if not names:
        return set()
    rows = conn.execute(
        f"""UPDATE leases SET expires_at = {server_now(conn.dialect)} + ?
            WHERE holder = ? AND name IN ({_marks(names)}) RETURNING name""",  # noqa: S608 (placeholders only)
        (seconds, holder, *names),
    ).fetchall()
    return {row["name"] for row in rows}


def release(conn: Connection, names: Collection[str], holder: str) -> None:
    """Give up those of `names` that `holder` holds (another's are left alone)."""
    if names:
        conn.execute(
            f"DELETE FROM leases WHERE holder = ? AND name IN ({_marks(names)})",  # noqa: S608 (placeholders only)
            (holder, *names),
        )


def release_all(conn: Connection, holder: str) -> int:
    """Give up every lease `holder` holds (a replica stopping); return how many."""
    return conn.execute("DELETE FROM leases WHERE holder = ?", (holder,)).rowcount


def holders(conn: Connection, names: Collection[str]) -> dict[str, str]:
    """Who holds each of `names` now (unexpired leases only)."""
    if not names:
        return {}
    rows = conn.execute(
        f"""SELECT name, holder FROM leases WHERE expires_at > {server_now(conn.dialect)}
            AND name IN ({_marks(names)})""",  # noqa: S608 (placeholders only)
        tuple(names),
    ).fetchall()
    return {row["name"]: row["holder"] for row in rows}
