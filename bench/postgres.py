"""The benchmark's PostgreSQL server, run as an operator would run one for the bridge.

One server for the whole run, from the OS's binaries (tests/pgserver.py, which the tests' fixture
uses too), in a fresh cluster in a temporary folder. Unlike the tests' server, durability is on:
fsync, synchronous_commit and full_page_writes as PostgreSQL ships them, so a commit is on disk
when it returns, as with SQLite's `synchronous = "full"`. shared_buffers stays modest (128 MB,
PostgreSQL's default), everything else the defaults. Each subject gets a fresh database, and a
CHECKPOINT first, so that no subject pays for the dirty pages another left behind.

CPU is read from /proc for the postmaster and every process under it (backends, checkpointer,
WAL writer, autovacuum; those that exited included, through the postmaster's reaped-children
times), summed: what the server cost, whichever of its processes spent it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import tempfile
from pathlib import Path

from bench.procs import tree_cpu
from tests.pgserver import PgServer, find_bindir

SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "'128MB'",
    "max_connections": "100",
}


def missing() -> str | None:
    """What is missing to run PostgreSQL subjects (and how to get it), or None."""
    if importlib.util.find_spec("psycopg") is None:
        return "the PostgreSQL driver is not installed (pip install -e '.[postgres]')"
    bindir = find_bindir()
    if bindir is None or not (bindir / "pg_ctl").exists():
        return (
            "no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql, or set"
            " BRIDGE_TEST_PG_BIN to their folder"
        )
    return None


class BenchPostgres:
    """A running server: a fresh database per subject, and its processes' CPU."""

    def __init__(self) -> None:
        bindir = find_bindir()
        assert bindir is not None, "call missing() first"
        # Not under the run's temporary folder: it is private to root, and the server may run
        # as the postgres user.
        self.server = PgServer(
            bindir=bindir, root=Path(tempfile.mkdtemp(prefix="bench-pg-")), settings=SETTINGS
        )

    def start(self) -> None:
        """initdb, then start (a few seconds; blocking)."""
        self.server.init()
        self.server.start()

    @property
    def version(self) -> int:
        return self.server.version

    def fresh_database(self, name: str) -> str:
        """An empty database `name` (dropped first if it exists), after a CHECKPOINT; its DSN."""
        import psycopg

        with psycopg.connect(self.server.dsn(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"CREATE DATABASE {name} TEMPLATE template0")
            admin.execute("CHECKPOINT")
        return self.server.dsn(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.server.dsn(), autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def cpu(self) -> float:
        """CPU seconds (user + system) of the server's processes so far, summed."""
        return tree_cpu(self.server.postmaster_pid()).total

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, OSError):
            if self.server.running():
                self.server.stop("immediate")
        shutil.rmtree(self.server.root, ignore_errors=True)
