"""The admin console: server-rendered pages at `/admin/` for people with the admin token.

Same process as the service, no build step: Jinja2 templates (autoescaped), one stylesheet, no
script. Paths: `/admin/` (overview), `/admin/login`, `/admin/logout`, and the pages and actions
under `/admin/ui/`; the JSON admin API keeps its own paths (`/admin/channels`, ...).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from bridge.console import actions, pages
from bridge.console.auth import SESSIONS, Sessions
from bridge.console.guard import console_gate
from bridge.console.render import setup_templates
from bridge.settings import Settings

STATIC = Path(__file__).parent / "static"


def setup_console(app: web.Application, settings: Settings) -> None:
    """Register the console's routes, templates and gate on `app` (before it starts)."""
    setup_templates(app, settings.secrets())
    app[SESSIONS] = Sessions()
    app.middlewares.append(console_gate)
    app.add_routes(pages.routes)
    app.add_routes(actions.routes)
    app.router.add_static("/admin/ui/static", STATIC, name="console.public.static")
