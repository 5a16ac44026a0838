"""The one gate in front of every console route: who may see it, what each answer carries.

Routes are named `console.public.*` (the sign-in page, the stylesheet), `console.page.*` (a GET
for a signed-in admin; otherwise a redirect to the sign-in page) or `console.action.*` (a POST
from a signed-in admin whose form carries the session's CSRF token; otherwise 403). Every
console answer gets the security headers; an error is an HTML page, not the JSON API's body.
"""

from __future__ import annotations

from aiohttp import web

from bridge.console.auth import CSRF_FIELD, csrf_matches, session_of
from bridge.console.render import render
from bridge.core.errors import InvalidInput
from bridge.errors import ApiError, answer_for
from bridge.web.common import Handler

PUBLIC, PAGE, ACTION = "console.public.", "console.page.", "console.action."
SIGN_IN = "/admin/login"

SECURITY_HEADERS = {
    # No script at all: the console is plain forms and links.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


def _kind(request: web.Request) -> str | None:
    name = request.match_info.route.name or ""
    for kind in (PUBLIC, PAGE, ACTION):
        if name.startswith(kind):
            return kind
    return None


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    context = {"title": f"Error {status}", "status": status, "message": message}
    return render(request, "error.html", context, status=status)


@web.middleware
async def console_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    kind = _kind(request)
    if kind is None:  # not the console's: the JSON API, webhooks, probes
        return await handler(request)
    response = await _guarded(request, handler, kind)
    response.headers.update(SECURITY_HEADERS)
    if kind != PUBLIC or request.method == "POST":
        response.headers["Cache-Control"] = "no-store"
    return response


async def _guarded(request: web.Request, handler: Handler, kind: str) -> web.StreamResponse:
    session = session_of(request)
    if kind == PAGE and session is None:
        return web.Response(status=303, headers={"Location": SIGN_IN})
    if kind == ACTION:
        if session is None:
            return _refuse(request, 403, "You are signed out: sign in again, then retry.")
        form = await request.post()
        given = form.get(CSRF_FIELD)
        if not csrf_matches(session, given if isinstance(given, str) else None):
            return _refuse(request, 403, "This form has expired: reload the page and retry.")
    try:
        return await handler(request)
    except ApiError as exc:
        return _refuse(request, exc.status, exc.message)
    except InvalidInput as exc:
        return _refuse(request, answer_for(exc).status, exc.message)
