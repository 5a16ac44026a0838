"""`messenger-bridge` (also `python -m bridge`): serve, check-config, the channel commands and
link-event.

The channel commands and link-event talk to the running service's admin API, so what they
change is what the service does, at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from bridge.app import create_app
from bridge.logs import configure_logging
from bridge.loop import new_event_loop
from bridge.settings import ConfigError, Settings, load_settings, resolve_config_path
from storage.database import DatabaseInUse
from storage.migrations import SchemaTooNew

EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    config_help = (
        "TOML file (default: $BRIDGE_CONFIG, else ./config.toml, else config.example.toml)"
    )
    parser = argparse.ArgumentParser(prog="messenger-bridge", description=__doc__)
    parser.add_argument("--config", help=config_help)
    # `--config` is also taken after the command (`messenger-bridge serve --config x.toml`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help=config_help, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the service")
    sub.add_parser("check-config", parents=[common], help="validate the configuration and exit")
    admin_args = argparse.ArgumentParser(add_help=False, parents=[common])
    admin_args.add_argument("--url", help="admin API base URL (default: from [server])")
    sub.add_parser("channels", parents=[admin_args], help="list messenger channels and states")
    for action in ("connect", "disconnect", "reconnect"):
        cmd = sub.add_parser(action, parents=[admin_args], help=f"{action} a messenger channel")
        cmd.add_argument("channel_id")
    link = sub.add_parser(
        "link-event",
        parents=[admin_args],
        help="link an unlinked live-chat event (and its JivoChat chat id) to a session",
    )
    link.add_argument("event_id", type=int)
    link.add_argument("session_id", type=int)
    args = parser.parse_args(argv)

    path = resolve_config_path(args.config)
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG

    if args.command == "check-config":
        print(
            f"{path}: OK ({len(settings.livechats)} live chats, {len(settings.messengers)} messengers)"
        )
        return 0
    if args.command == "serve":
        return serve(settings)
    if args.command == "link-event":
        return asyncio.run(link_event(settings, args.event_id, args.session_id, args.url))
    return asyncio.run(
        admin_command(settings, args.command, getattr(args, "channel_id", None), args.url)
    )


def serve(settings: Settings) -> int:
    configure_logging(settings.logging, settings.secrets())
    log = structlog.get_logger("bridge")
    loop = new_event_loop(settings.server.event_loop)
    log.info("bridge.starting", event_loop=type(loop).__module__.split(".")[0])
    try:
        web.run_app(
            create_app(settings),
            loop=loop,
            host=settings.server.host,
            port=settings.server.port,
            access_log=None,
            print=None,
            shutdown_timeout=5,
            handle_signals=True,
        )
    except (DatabaseInUse, SchemaTooNew, OSError) as exc:
        log.error("bridge.cannot_start", error=str(exc))
        return 1
    return 0


def _admin_base(settings: Settings) -> str:
    host = settings.server.host
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 (reaching a wildcard bind locally)
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.server.port}"


async def _call_admin(
    settings: Settings, url: str | None, method: str, path: str, body: Any = None
) -> Any:
    """The admin API's answer to one call, or None (what went wrong is printed)."""
    base = (url or _admin_base(settings)).rstrip("/")
    headers = {"Authorization": f"Bearer {settings.admin.token.get_secret_value()}"}
    timeout = aiohttp.ClientTimeout(total=settings.delivery.request_timeout + 5)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.request(method, base + path, headers=headers, json=body) as resp,
        ):
            answer: Any = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        print(f"cannot reach the bridge at {base}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    if status != 200:
        message = answer.get("error", answer) if isinstance(answer, dict) else answer
        print(f"error ({status}): {message}", file=sys.stderr)
        return None
    return answer


async def admin_command(
    settings: Settings, command: str, channel_id: str | None, url: str | None
) -> int:
    if command == "channels":
        method, path = "GET", "/admin/channels"
    else:
        method, path = "POST", f"/admin/messengers/{channel_id}/{command}"
    body = await _call_admin(settings, url, method, path)
    if body is None:
        return 1
    rows = body["channels"] if command == "channels" else [body]
    _print_channels(rows)
    return 0


async def link_event(settings: Settings, event_id: int, session_id: int, url: str | None) -> int:
    body = await _call_admin(
        settings, url, "POST", f"/admin/events/{event_id}/link", {"session_id": session_id}
    )
    if body is None:
        return 1
    linked = ", ".join(str(e) for e in body["events"])
    remote = body.get("remote_chat_id")
    tail = f"; later events of live-chat chat {remote} link to it too" if remote else ""
    print(f"linked event(s) {linked} to session {body['session_id']}{tail}")
    return 0


def _print_channels(rows: list[dict[str, Any]]) -> None:
    columns = ("id", "name", "livechat", "state", "since", "held_messages", "last_error")
    table = [[str(r.get(c) if r.get(c) is not None else "") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print(json.dumps({"channels": []}))


if __name__ == "__main__":
    sys.exit(main())
