"""Notifications between replicas sharing a PostgreSQL database (LISTEN/NOTIFY).

A write that queues outbox work, or changes a channel's state, notifies in its own transaction:
PostgreSQL delivers the notification to every listening replica (storage/pg_listen.py) when,
and only if, the transaction commits. On SQLite (one process, which wakes its worker directly)
nothing is sent.
"""

from __future__ import annotations

from storage.port import Connection

OUTBOX = "bridge_outbox"  # outbox work was queued or released; payload ''
CHANNELS = "bridge_channels"  # a channel's state changed; payload: the channel's id


def notify(conn: Connection, channel: str, payload: str = "") -> None:
    """Notify `channel` when the transaction commits (PostgreSQL; nothing on SQLite). Repeats
    of one channel and payload within a transaction are delivered once."""
    if conn.dialect == "postgres":
        conn.execute("SELECT pg_notify(?, ?)", (channel, payload))
