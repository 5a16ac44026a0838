"""`POST /livechats/{livechat_id}/webhook/{hook_token}`: everything a live chat sends the bridge."""

from __future__ import annotations

import structlog
from aiohttp import web

from bridge.errors import NotFound, Unauthenticated
from bridge.keys import LIVECHATS, RELAY, SETTINGS
from bridge.secrets import same_secret
from bridge.web.common import read_body

routes = web.RouteTableDef()


@routes.post("/livechats/{livechat_id}/webhook/{hook_token}")
async def livechat_webhook(request: web.Request) -> web.Response:
    livechat_id = request.match_info["livechat_id"]
    structlog.contextvars.bind_contextvars(livechat=livechat_id)
    settings = request.app[SETTINGS].livechats.get(livechat_id)
    if settings is None:
        raise NotFound("unknown_livechat", "no live chat with this id")
    if not same_secret(request.match_info["hook_token"], settings.hook_token.get_secret_value()):
        raise Unauthenticated("bad_token", "the hook token does not match")
    connector = request.app[LIVECHATS][livechat_id]
    events = connector.parse_hook(await read_body(request))
    answers = await request.app[RELAY].accept_livechat_events(livechat_id, events)
    return web.json_response(connector.hook_reply(answers))


@routes.get(r"/c/{key}")
async def chat_link(request: web.Request) -> web.Response:
    """The chat URL handed to JivoChat as `sender.url` (bridge/chat_links.py). It names a chat
    for linking only and opens nothing: the same 404 whether or not the key is a chat's, so
    the URL tells a visitor of it nothing."""
    raise NotFound("not_found", "this URL names a chat to the live chat; there is no page here")
