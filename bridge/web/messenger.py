"""`POST /messengers/{channel_id}/webhook`: everything a messenger sends the bridge.

A `message` (shared/protocols/messenger.md, "Messenger → bridge") is answered 200 once it is
on disk with its outbox item, or when it truly repeats one stored under the same
`externalMessageId` on this channel that is in flight or delivered; a resend of one whose
delivery failed for good (the messenger was told `success: false`) is queued again and
answered 200. A repeat that differs from the stored message (another `externalChatId`, other
text or files) is answered 409 `conflicting_duplicate`: a 200 would tell the messenger its
message was taken, which it was not, and the 409 lets it see the clash (it should send the
message under a new id). It is logged as a warning naming both chats, ids only, and counted
in `bridge_inbound_conflicts_total{channel}`. See docs/decisions.md.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from bridge.channels import DISCONNECTED
from bridge.core.model import MessengerDisconnect, UserInfoQuery, UserMessage, UserRead
from bridge.errors import Conflict, NotFound, Unauthenticated
from bridge.keys import CHANNELS, METRICS, RELAY, SETTINGS
from bridge.logs import debug_enabled
from bridge.relay import Conflicting
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
        if isinstance(accepted, Conflicting):
            # Ids only: a message's text never reaches a log line.
            log.warning(
                "messenger.conflicting_duplicate",
                message=accepted.uid,
                external_message=req.external_message_id,
                stored_chat=accepted.stored_chat,
                chat=req.external_chat_id,
                differs=list(accepted.differs),
            )
            request.app[METRICS].inbound_conflicts.labels(channel_id).inc()
            raise Conflict(
                "conflicting_duplicate",
                "this externalMessageId is already stored on this channel for a message that"
                f" differs in {', '.join(accepted.differs)}: a retry must repeat it exactly,"
                " another message needs an id of its own",
            )
        # The hot path logs at debug (every message is counted in /metrics); a duplicate, a
        # sender's retry, is worth a line at info, and so is a resend queued again.
        louder = accepted.duplicate or accepted.requeued
        if louder or debug_enabled():
            (log.info if louder else log.debug)(
                "messenger.message_accepted",
                session=accepted.session_id,
                message=accepted.uid,
                external_message=req.external_message_id,
                duplicate=accepted.duplicate,
                requeued=accepted.requeued,
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
