"""`messenger-bridge migrate-to-postgres --from PATH`: copy a SQLite file into the PostgreSQL
database of `[storage]` (storage.copy does the copy), with progress on stderr and a summary
on stdout.

Exit codes: 0 when every table has as many rows in PostgreSQL as in the file; 2 when what was
given cannot be used (the configuration, the file, a schema version on either side); 1 when
the copy could not finish (the file in use by a running bridge, the server, a refused row, a
count that differs). Running it again after 1 goes on from where it stopped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bridge.settings import Settings

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
PROGRESS_EVERY = 1.0  # seconds between progress lines of one table


def migrate_to_postgres(settings: Settings, source: str, batch: int, pause: float) -> int:
    storage = settings.storage
    if storage.backend != "postgres":
        print(
            f'storage.backend: "{storage.backend}"; migrate-to-postgres copies into the'
            ' PostgreSQL database of [storage]: set backend = "postgres" and its dsn',
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if storage.dsn is None or not storage.dsn.get_secret_value().strip():
        print('storage.dsn: required with backend = "postgres"', file=sys.stderr)
        return EXIT_CONFIG
    if batch < 1 or pause < 0:
        print("--batch must be at least 1 and --pause not negative", file=sys.stderr)
        return EXIT_CONFIG
    try:
        from storage import copy
        from storage.pg_dsn import describe
    except ImportError:
        print(
            'storage.backend: "postgres" needs the PostgreSQL driver: pip install'
            " 'messenger-bridge[postgres]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    dsn = storage.dsn.get_secret_value().strip()
    shown: dict[str, float] = {}

    def report(step: copy.Progress) -> None:
        now = time.monotonic()
        if step.copied >= step.total or now - shown.get(step.table, 0.0) >= PROGRESS_EVERY:
            shown[step.table] = now
            print(f"{step.table}: {step.copied}/{step.total} rows", file=sys.stderr, flush=True)

    print(f"copying {source} into {describe(dsn)}", file=sys.stderr, flush=True)
    try:
        counts = copy.copy_to_postgres(Path(source), dsn, batch=batch, pause=pause, progress=report)
    except copy.Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except copy.CannotCopy as exc:
        print(f"failed: {exc}; run the same command again once that is fixed", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: run the same command again to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    width = max(len(c.table) for c in counts)
    print(f"{'TABLE'.ljust(width)}  {'SQLITE':>10}  {'POSTGRESQL':>10}  {'COPIED NOW':>10}")
    for c in counts:
        mark = "" if c.matches else "  DIFFERS"
        print(
            f"{c.table.ljust(width)}  {c.sqlite_rows:>10}  {c.postgres_rows:>10}"
            f"  {c.inserted:>10}{mark}"
        )
    differing = [c.table for c in counts if not c.matches]
    if differing:
        print(
            f"failed: row counts differ in {', '.join(differing)}: the PostgreSQL database"
            " holds rows that are not from this file (copy into an empty database)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"every table matches: {source} is copied; switch [storage] to it and start")
    return 0
