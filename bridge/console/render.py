"""The console's templates: Jinja2 with autoescaping, strict about undefined names, and every
configured secret replaced in whatever a template prints.

Stored text (a user's message, an operator's name, an event's payload) reaches the page only
through autoescaped expressions; nothing stored is ever marked safe. Links to stored URLs go
through `href`, which keeps only http and https ones.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web

from bridge.console.auth import CSRF_FIELD, session_of
from bridge.logs import Redactor

TEMPLATES = Path(__file__).parent / "templates"


def when(ts: float | None) -> str:
    """Unix s as `2026-11-21 14:03:05 UTC`; `—` for none."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    """A span as `45 s`, `12 min`, `3 h 5 min`, `2 d 4 h`; `—` for none."""
    if seconds is None:
        return "—"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def href(url: object) -> str | None:
    """`url` if it is an absolute http(s) URL, else None: a stored `javascript:` URL must not
    become a link."""
    if not isinstance(url, str):
        return None
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError:
        return None
    return url.strip() if scheme in ("http", "https") else None


def pretty(value: object) -> str:
    """JSON, indented, as plain text (escaped like any other text where it is printed)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True)


def setup_templates(app: web.Application, secrets: list[str]) -> None:
    redactor = Redactor(secrets)
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        finalize=redactor.redact,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, duration=duration, href=href, pretty=pretty)


def render(
    request: web.Request, template: str, context: dict[str, Any], *, status: int = 200
) -> web.Response:
    """A page, with what every page needs: whether someone is signed in, the session's CSRF
    token for its forms and its flash line, the path for the menu."""
    session = session_of(request)
    base = {
        "signed_in": session is not None,
        "csrf_field": CSRF_FIELD,
        "csrf": session.csrf if session else "",
        "flash": session.take_flash() if session else None,
        "path": request.path,
    }
    return aiohttp_jinja2.render_template(template, request, {**base, **context}, status=status)
