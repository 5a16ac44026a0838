"""`POST /messengers/{channel_id}/webhook`: everything a messenger sends the bridge."""

from __future__ import annotations

import structlog
from aiohttp import web

from bridge.channels import DISCONNECTED
from bridge.errors import Conflict, NotFound, Unauthenticated
from bridge.keys import CHANNELS, RELAY, SETTINGS
from bridge.model import MessengerDisconnect, UserInfoQuery, UserMessage, UserRead
from bridge.secrets import same_secret
from bridge.web.common import ok, read_body
from connectors import messenger as wire

routes = web.RouteTableDef()
log = structlog.get_logger("messenger")


@routes.post("/messengers/{channel_id}/webhook")
async def messenger_webhook(request: web.Request) -> web.Response:
    channel_id = request.match_info["channel_id"]
    structlog.contextvars.bind_contextvars(channel=channel_id)
    settings = request.app[SETTINGS].messengers.get(channel_id)
    if settings is None:
        raise NotFound("unknown_channel", "no messenger channel with this id")
    envelope = wire.parse_envelope(await read_body(request))
    code = settings.confirmation_code.get_secret_value()
    if code and not same_secret(envelope.token, code):
        raise Unauthenticated("bad_token", "the token does not match the confirmation code")
    req = wire.parse_request(envelope)
    channels, relay = request.app[CHANNELS], request.app[RELAY]

    if isinstance(req, UserMessage):
        if channels.state(channel_id) == DISCONNECTED:
            raise Conflict(
                "channel_disconnected",
                "the channel is disconnected; keep the message and send it after reconnecting",
            )
        accepted = await relay.accept_user_message(channel_id, req)
        # The hot path logs at debug (every message is counted in /metrics); a duplicate, a
        # sender's retry, is worth a line at info.
        (log.info if accepted.duplicate else log.debug)(
            "messenger.message_accepted",
            session=accepted.session_id,
            message=accepted.uid,
            external_message=req.external_message_id,
            duplicate=accepted.duplicate,
        )
        return ok()
    if isinstance(req, UserInfoQuery):
        profile = await relay.known_profile(channel_id, req.user_id)
        if profile is None:
            raise NotFound("unknown_user", "the bridge knows no user with this id on this channel")
        return web.json_response(wire.profile_body(profile))
    if isinstance(req, MessengerDisconnect):
        await channels.disconnect(channel_id, by_messenger=True)
        return ok()
    if isinstance(req, UserRead):
        await relay.user_read(channel_id, req.message_id)
        return ok()
    raise AssertionError(f"unhandled request {req!r}")
