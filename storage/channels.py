"""Channel rows: each messenger channel's life-cycle state and whether an admin wants it on."""

from __future__ import annotations

from dataclasses import dataclass

from storage.port import Connection, Row, Store


@dataclass(frozen=True, slots=True)
class ChannelRow:
    id: str
    state: str
    since: float
    last_error: str | None
    enabled: bool
    connected_webhook: str | None = None  # the URL the messenger accepted in its last `connect`


def _row(row: Row) -> ChannelRow:
    return ChannelRow(
        row["id"],
        row["state"],
        row["since"],
        row["last_error"],
        bool(row["enabled"]),
        row["connected_webhook"],
    )


def sync_from_config(
    conn: Connection, channel_id: str, config_enabled: bool, now: float
) -> ChannelRow:
    """Create the row, or apply the config's `enabled` if it changed since we last read it.

    The admin API changes `enabled` at run time and that survives a restart, but an admin who
    edits `enabled` in the config file means it: a changed config value wins.
    """
    conn.execute(
        """INSERT INTO channels (id, state, since, enabled, config_enabled)
           VALUES (?, CASE WHEN ? = 1 THEN 'connecting' ELSE 'disconnected' END, ?, ?, ?)
           ON CONFLICT (id) DO UPDATE SET
               enabled = CASE WHEN channels.config_enabled != excluded.config_enabled
                              THEN excluded.config_enabled ELSE channels.enabled END,
               config_enabled = excluded.config_enabled""",
        (channel_id, int(config_enabled), now, int(config_enabled), int(config_enabled)),
    )
    row = conn.execute("SELECT * FROM channels WHERE id = ?", (channel_id,)).fetchone()
    assert row is not None
    return _row(row)


def set_state(
    conn: Connection,
    channel_id: str,
    state: str,
    now: float,
    *,
    last_error: str | None = None,
    enabled: bool | None = None,
    connected_webhook: str | None = None,
) -> None:
    """`enabled` and `connected_webhook` are left as they are when None."""
    conn.execute(
        """UPDATE channels SET
               since = CASE WHEN state != ? THEN ? ELSE since END,
               state = ?, last_error = ?, enabled = coalesce(?, enabled),
               connected_webhook = coalesce(?, connected_webhook)
           WHERE id = ?""",
        (
            state,
            now,
            state,
            last_error,
            None if enabled is None else int(enabled),
            connected_webhook,
            channel_id,
        ),
    )


async def all_channels(db: Store) -> list[ChannelRow]:
    return [_row(r) for r in await db.fetch_all("SELECT * FROM channels ORDER BY id")]
