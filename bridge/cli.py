"""`messenger-bridge` (also `python -m bridge`): serve, check-config, the channel commands and
the dead-letter commands and link-event; migrate-to-postgres (bridge/to_postgres.py).

The channel commands, the dead-letter commands and link-event talk to the running service's
admin API, so what they
change is what the service does, at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import structlog
from aiohttp import web

from bridge.app import create_app
from bridge.core.model import ChannelState
from bridge.keys import CHANNELS
from bridge.listen import listening_sockets
from bridge.logs import configure_logging
from bridge.loop import new_event_loop
from bridge.settings import (
    ConfigError,
    Settings,
    config_warnings,
    load_settings,
    resolve_config_path,
)
from bridge.to_postgres import migrate_to_postgres
from bridge.version import version
from connectors import http as outside
from storage.migrations import SchemaTooNew
from storage.port import CannotOpen, DatabaseInUse

EXIT_FAILED = 1
EXIT_CONFIG = 2
CHECK_TIMEOUT = 5.0  # seconds check-config waits for PostgreSQL


def main(argv: Sequence[str] | None = None) -> int:
    config_help = (
        "TOML file (default: $BRIDGE_CONFIG, else ./config.toml, else config.example.toml)"
    )
    parser = argparse.ArgumentParser(prog="messenger-bridge", description=__doc__)
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    # `--config` is also taken after the command (`messenger-bridge serve --config x.toml`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help=config_help, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the service")
    check = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate the configuration (and reach PostgreSQL, if that is the backend) and exit",
    )
    check.add_argument(
        "--offline", action="store_true", help="the file only: do not connect to PostgreSQL"
    )
    admin_args = argparse.ArgumentParser(add_help=False, parents=[common])
    admin_args.add_argument("--url", help="admin API base URL (default: from [server])")
    sub.add_parser("channels", parents=[admin_args], help="list messenger channels and states")
    for action in ("connect", "disconnect", "reconnect"):
        cmd = sub.add_parser(action, parents=[admin_args], help=f"{action} a messenger channel")
        cmd.add_argument("channel_id")
    scope_args = argparse.ArgumentParser(add_help=False, parents=[admin_args])
    scope_args.add_argument("--channel", help="only this messenger channel's dead items")
    scope_args.add_argument("--livechat", help="only this live chat's dead items")
    listing = sub.add_parser("dead-letters", parents=[scope_args], help="list dead items")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (1-1000)")
    for action, what in (("retry", "make pending again"), ("purge", "delete")):
        cmd = sub.add_parser(
            action,
            parents=[scope_args],
            help=f"{what}: one dead item, those of --channel and/or --livechat, or --all",
        )
        cmd.add_argument("item_id", nargs="?", type=int, help="the dead item's id")
        cmd.add_argument("--all", action="store_true", help="every dead item")
    link = sub.add_parser(
        "link-event",
        parents=[admin_args],
        help="link an unlinked live-chat event (and its JivoChat chat id) to a session",
    )
    link.add_argument("event_id", type=int)
    link.add_argument("session_id", type=int)
    to_pg = sub.add_parser(
        "migrate-to-postgres",
        parents=[common],
        help="copy a SQLite database into the PostgreSQL one of [storage] (the service stopped)",
    )
    to_pg.add_argument("--from", dest="source", required=True, metavar="PATH", help="the file")
    to_pg.add_argument("--batch", type=int, default=1000, help="rows per transaction")
    to_pg.add_argument("--pause", type=float, default=0.0, help="seconds between batches")
    args = parser.parse_args(argv)
    if args.command in ("retry", "purge"):
        scoped = args.channel is not None or args.livechat is not None
        if [args.item_id is not None, scoped, args.all].count(True) != 1:
            parser.error(f"{args.command}: give an item id, --channel/--livechat, or --all")

    path = resolve_config_path(args.config)
    if args.config is None and not os.environ.get("BRIDGE_CONFIG") and not path.exists():
        print(
            f"no configuration: neither ./config.toml nor config.example.toml in {Path.cwd()};"
            " give --config PATH or set BRIDGE_CONFIG",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG

    if args.command == "check-config":
        return check_config(settings, path, offline=args.offline)
    if args.command == "serve":
        return serve(settings, path)
    if args.command in ("dead-letters", "retry", "purge"):
        return asyncio.run(dead_letter_command(settings, args))
    if args.command == "migrate-to-postgres":
        return migrate_to_postgres(settings, args.source, args.batch, args.pause)
    if args.command == "link-event":
        return asyncio.run(link_event(settings, args.event_id, args.session_id, args.url))
    return asyncio.run(
        admin_command(settings, args.command, getattr(args, "channel_id", None), args.url)
    )


def check_config(settings: Settings, path: Path, *, offline: bool = False) -> int:
    """`check-config`: the file's warnings; then, with `storage.backend = "postgres"` and not
    `offline`, whether the database takes us (within CHECK_TIMEOUT seconds), the server's
    version and the schema's. 0 when all is well; 1 when the database cannot be reached or
    `serve` would refuse it, as `serve` exits then (2, a mistake in the file, comes before)."""
    for warning in config_warnings(settings):
        print(f"warning: {warning}", file=sys.stderr)
    if settings.storage.backend == "postgres" and not offline:
        from storage.pg_probe import probe  # psycopg: the `postgres` extra, which settings check

        dsn = settings.storage.dsn.get_secret_value() if settings.storage.dsn else ""
        try:
            found = probe(dsn, CHECK_TIMEOUT)
        except CannotOpen as exc:  # the message masks the DSN's password
            print(f"storage.dsn: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if found.too_new:
            print(
                f"storage.dsn: the database {found.where} is at schema version"
                f" {found.schema_version}, newer than this code knows ({found.code_version}):"
                " `serve` refuses it; upgrade the bridge",
                file=sys.stderr,
            )
            return EXIT_FAILED
        if found.schema_version == 0:
            schema = f"no schema yet (`serve` creates it, version {found.code_version})"
        elif found.schema_version < found.code_version:
            schema = (
                f"schema version {found.schema_version}, this code's {found.code_version}"
                " (`serve` upgrades it at start)"
            )
        else:
            schema = f"schema version {found.schema_version}, this code's too"
        print(
            f"storage.dsn: reachable, PostgreSQL {found.server_version} at {found.where}; {schema}"
        )
    print(
        f"{path}: OK ({len(settings.livechats)} live chats, {len(settings.messengers)} messengers)"
    )
    return 0


def serve(settings: Settings, config_path: Path | None = None) -> int:
    """Run the service until SIGTERM or SIGINT: 0 after a clean stop, 1 when it cannot start.

    The log tells an operator what runs: `bridge.starting` (version, config file), then
    (from start-up) each config warning, `bridge.started` (the addresses it listens on, each channel's state) and
    `bridge.stopped` (how long it ran, in seconds)."""
    configure_logging(settings.logging, settings.secrets())
    log = structlog.get_logger("bridge")
    loop = new_event_loop(settings.server.event_loop)
    config = str(config_path.resolve()) if config_path is not None else None
    log.info(
        "bridge.starting",
        version=version(),
        config=config,
        event_loop=type(loop).__module__.split(".")[0],
    )
    sockets: list[socket.socket] = []
    began = time.monotonic()
    try:
        # Listening before start-up, which tells the messengers our URL (see bridge.listen).
        sockets = listening_sockets(settings.server.host, settings.server.port)
        app = create_app(settings)

        async def started(app: web.Application) -> None:
            # After every start-up context (on_startup runs them first): the channels are loaded.
            channels = app[CHANNELS]
            log.info(
                "bridge.started",
                version=version(),
                config=config,
                listening=[_address(sock) for sock in sockets],
                public_url=settings.server.public_url,
                channels={cid: channels.state(cid) for cid in channels.channel_ids()},
            )

        app.on_startup.append(started)
        web.run_app(
            app,
            loop=loop,
            sock=sockets,
            access_log=None,
            print=None,
            shutdown_timeout=5,
            handle_signals=True,
        )
    except (DatabaseInUse, SchemaTooNew, CannotOpen, OSError) as exc:
        log.error("bridge.cannot_start", error=str(exc))
        return 1
    finally:
        for sock in sockets:
            sock.close()
    log.info("bridge.stopped", version=version(), ran_for=round(time.monotonic() - began, 1))
    return 0


def _address(sock: socket.socket) -> str:
    """`http://host:port` of a listening socket (an IPv6 host in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _admin_base(settings: Settings) -> str:
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (reaching a wildcard bind locally)
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


async def _call_admin(
    settings: Settings,
    url: str | None,
    method: str,
    path: str,
    params: dict[str, str] | None = None,
    body: Any = None,
) -> Any:
    """The admin API's JSON answer to one call, or None (what went wrong is printed).

    Through the bridge's own HTTP client: a redirect is not followed (it would carry the
    admin token elsewhere)."""
    base = (url or _admin_base(settings)).rstrip("/")
    target = base + path + (f"?{urlencode(params)}" if params else "")
    headers = {"Authorization": f"Bearer {settings.admin.token.get_secret_value()}"}
    seconds = settings.delivery.request_timeout + 5
    async with outside.Client(seconds, seconds, limit=4) as http:
        answer = await outside.request(http, method, target, body, headers=headers)
    if isinstance(answer, outside.NoResponse):
        print(f"cannot reach the bridge at {base}: {answer.error}", file=sys.stderr)
        return None
    found: Any = answer.json()
    if answer.status != 200 or not isinstance(found, dict):
        message = found.get("error", found) if isinstance(found, dict) else outside.describe(answer)
        print(f"error ({answer.status}): {message}", file=sys.stderr)
        return None
    return found


async def admin_command(
    settings: Settings, command: str, channel_id: str | None, url: str | None
) -> int:
    """`channels`, `connect`, `disconnect`, `reconnect`: the channels' table after the action;
    exit code 1 when a connect was not taken by the messenger."""
    if command == "channels":
        method, path = "GET", "/admin/channels"
    else:
        method, path = "POST", f"/admin/messengers/{channel_id}/{command}"
    body = await _call_admin(settings, url, method, path)
    if body is None:
        return 1
    rows = body["channels"] if command == "channels" else [body]
    _print_table(rows, ("id", "name", "livechat", "state", "since", "held_messages", "last_error"))
    if command in ("connect", "reconnect") and body.get("state") != ChannelState.ACTIVE:
        # The admin API answers 200 once it has tried; the messenger may still refuse.
        print(
            f"{channel_id} is {body.get('state')}: {body.get('last_error') or 'not connected'}",
            file=sys.stderr,
        )
        return 1
    return 0


async def link_event(settings: Settings, event_id: int, session_id: int, url: str | None) -> int:
    body = await _call_admin(
        settings, url, "POST", f"/admin/events/{event_id}/link", body={"session_id": session_id}
    )
    if body is None:
        return 1
    linked = ", ".join(str(e) for e in body["events"])
    remote = body.get("remote_chat_id")
    tail = f"; later events of live-chat chat {remote} link to it too" if remote else ""
    print(f"linked event(s) {linked} to session {body['session_id']}{tail}")
    return 0


async def dead_letter_command(settings: Settings, args: argparse.Namespace) -> int:
    """`dead-letters` lists dead items; `retry` and `purge` act on them and print the counts,
    then what became of each item (the first 100)."""
    params = {k: v for k, v in (("channel", args.channel), ("livechat", args.livechat)) if v}
    if args.command == "dead-letters":
        params |= {"status": "dead", "limit": str(args.limit)}
        body = await _call_admin(settings, args.url, "GET", "/admin/outbox", params)
        if body is None:
            return 1
        rows = [{**r, "text": (r["payload"].get("text") or "")[:60]} for r in body["items"]]
        columns = ("id", "kind", "channel", "livechat", "attempts", "updated_at", "last_error")
        _print_table(rows, (*columns, "text"))
        print(f"{body['depth']['dead']} dead, {body['depth']['pending']} pending")
        return 0
    if args.item_id is not None:
        path = f"/admin/outbox/{args.item_id}/{args.command}"
    else:
        path = f"/admin/outbox/{args.command}"
        if args.all:
            params["all"] = "1"
    body = await _call_admin(settings, args.url, "POST", path, params)
    if body is None:
        return 1
    counts = ("matched", "retried", "adopted", "dead", "purged", "skipped")
    print(", ".join(f"{key} {body[key]}" for key in counts))
    _print_table(body["items"], ("id", "kind", "result", "new_id", "error"))
    return 0


def _print_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    table = [[str(r.get(c) if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in table)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


if __name__ == "__main__":
    sys.exit(main())
