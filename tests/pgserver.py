"""A real PostgreSQL server from the OS's binaries, in a folder of its own: `initdb` once, then
`pg_ctl start` and `stop`. Shared by the tests' fixtures (tests/pg.py) and the benchmark
(bench/postgres.py), so it imports nothing of either: the standard library only.

The server listens on 127.0.0.1 at a free port and on a unix socket in its folder; TCP
connections need the superuser's password (scram-sha-256), so a wrong password is refused as in
production. As root (CI, the development VM), the server runs as the `postgres` system user
(initdb refuses root), which the Debian package `postgresql` creates; its folder must then not
be under a folder private to root (tempfile.mkdtemp's own folder is fine).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

SUPERUSER = "postgres"
RUN_AS = "postgres"  # the system user the server runs as when started by root
COMMON_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "log_min_messages": "warning",
}


def find_bindir() -> Path | None:
    """The folder of initdb and pg_ctl: $BRIDGE_TEST_PG_BIN, else on PATH, else the newest of
    the usual install folders (Debian's /usr/lib/postgresql/N/bin, RHEL's /usr/pgsql-N/bin)."""
    if env := os.environ.get("BRIDGE_TEST_PG_BIN"):
        return Path(env)
    if (initdb := shutil.which("initdb")) and (Path(initdb).parent / "pg_ctl").exists():
        return Path(initdb).parent
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb") + glob.glob("/usr/pgsql-*/bin/initdb")
    found += glob.glob("/usr/local/pgsql/bin/initdb")

    def version(path: str) -> int:
        match = re.search(r"(\d+)", path)
        return int(match.group(1)) if match else 0

    return Path(max(found, key=version)).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """A cluster in `root`. `settings` go to postgresql.conf (values quoted as the file wants
    them: "'100ms'", "off"), besides the address, port and socket folder set at each start.
    `dsn(dbname)` connects to a database over TCP as the superuser."""

    bindir: Path
    root: Path  # holds the data folder, the log, the socket
    settings: dict[str, str] = field(default_factory=dict)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    port: int = 0
    version: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def _as_server_user(self) -> list[str]:
        return ["runuser", "-u", RUN_AS, "--"] if os.geteuid() == 0 else []

    def _run(self, tool: str, *args: str) -> None:
        command = [*self._as_server_user(), str(self.bindir / tool), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(
                f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}\n{log}"
            )

    def init(self) -> None:
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise RuntimeError(
                    f"as root the server must run as the system user {RUN_AS!r}"
                    " (initdb refuses root), which does not exist: install the OS package"
                    " postgresql, which creates it"
                ) from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pwd.getpwnam(RUN_AS).pw_uid, -1)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",  # initdb's own files only: the server's settings decide its durability
        )
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("include = 'bridge-test.conf'\n")  # written at each start
        self.version = int((self.data / "PG_VERSION").read_text().strip())

    def start(self) -> None:
        """Start on the same port as before (a free one the first time): DSNs stay valid."""
        self.port = self.port or _free_port()
        settings = {
            **COMMON_SETTINGS,
            **self.settings,
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
        }
        (self.data / "bridge-test.conf").write_text(
            "".join(f"{key} = {value}\n" for key, value in settings.items())
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def postmaster_pid(self) -> int:
        """The server's main process (the parent of every backend), from postmaster.pid."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def dsn(self, dbname: str = "postgres", password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{SUPERUSER}:{secret}@127.0.0.1:{self.port}/{dbname}"
