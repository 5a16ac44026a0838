"""A real PostgreSQL server for the tests: the OS's server binaries, a cluster in a temporary
folder, started once per session with `pg_ctl` (tests/pgserver.py, which the benchmark uses
too); each test gets a database of its own.

TCP connections need the superuser's password (scram-sha-256), so a wrong password is refused
as in production. Durability is off (fsync, synchronous_commit): the tests measure behaviour,
not disks. As root (CI), the server runs as the `postgres` system user (initdb refuses root),
which the Debian package `postgresql` creates.

Without server binaries (the package `postgresql`; or BRIDGE_TEST_PG_BIN naming the folder of
initdb and pg_ctl) or without the driver (the `postgres` extra), these tests are skipped,
saying which is missing.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pgserver import PgServer, find_bindir

__all__ = ["PgServer", "find_bindir", "pg_dsn", "pg_server"]

# Durability is off: the tests measure behaviour, not disks.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    # Deadlocks are found after this long (default 1 s): the retry test waits for it.
    "deadlock_timeout": "'100ms'",
}


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session, or a skip saying what is missing."""
    pytest.importorskip(
        "psycopg", reason="the PostgreSQL driver is not installed (pip install -e '.[postgres]')"
    )
    bindir = find_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl): install the OS package postgresql"
            " (.ci/run does) or set BRIDGE_TEST_PG_BIN to their folder"
        )
    # Not under pytest's tmp_path: its parents are private to the user running the tests,
    # and the server may run as another.
    server = PgServer(
        bindir=bindir,
        root=Path(tempfile.mkdtemp(prefix="bridge-pg-")),
        settings=SERVER_SETTINGS,
    )
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running():
            with contextlib.suppress(RuntimeError):
                server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty database of its own for the test: its DSN (with the password)."""
    import psycopg

    name = f"test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    yield pg_server.dsn(name)
    if not pg_server.running():  # a test stopped it and failed before starting it again
        pg_server.start()
    with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
