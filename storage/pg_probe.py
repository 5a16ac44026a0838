"""What `check-config` asks a PostgreSQL server before `serve` would: does it take us, which
release it runs, and which schema version the database is at.

Read only (`default_transaction_read_only`): a check never creates or migrates anything, and
is bounded in time (libpq's `connect_timeout`, the server's `statement_timeout`). Errors name
the database with its password masked (storage/pg_dsn.py), as the store's do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import psycopg
from psycopg.rows import tuple_row

from storage.pg_dsn import describe, error_line
from storage.port import CannotOpen
from storage.postgres_migrations import LATEST


@dataclass(frozen=True)
class Probe:
    where: str  # the DSN, its password masked
    server_version: str  # the server's `server_version`, e.g. "15.4 (Debian 15.4-1)"
    schema_version: int  # the database's (0: none yet, `serve` creates it)
    code_version: int = LATEST  # the newest this code knows (storage/postgres_migrations.py)

    @property
    def too_new(self) -> bool:
        """The database is newer than this code: `serve` refuses it (SchemaTooNew)."""
        return self.schema_version > self.code_version


def probe(dsn: str, timeout: float = 5.0) -> Probe:
    """Connect to `dsn` within about `timeout` seconds (libpq counts whole seconds, at least
    2) and read the server's version and the schema version. Raises CannotOpen, its message
    `cannot connect to PostgreSQL <dsn masked>: <the driver's first line>` (or, connected,
    that the schema version could not be read, and why)."""
    where = describe(dsn)
    options = f"-c statement_timeout={int(timeout * 1000)} -c default_transaction_read_only=on"
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            row_factory=tuple_row,
            application_name="messenger-bridge check-config",
            connect_timeout=max(2, math.ceil(timeout)),
            options=options,
        )
    except psycopg.Error as exc:
        raise CannotOpen(f"cannot connect to PostgreSQL {where}: {error_line(exc, dsn)}") from None
    try:
        with conn:
            server = conn.execute("SHOW server_version").fetchone()
            # Not storage.postgres_migrations.current_version: that creates the table.
            found = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
            version = None
            if found is not None and found[0]:
                version = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    except psycopg.Error as exc:
        raise CannotOpen(
            f"connected to PostgreSQL {where}, but cannot read its schema version:"
            f" {error_line(exc, dsn)}"
        ) from None
    return Probe(
        where=where,
        server_version=str(server[0]) if server else "unknown",
        schema_version=int(version[0]) if version and version[0] is not None else 0,
    )
