"""Event subscribers, per the Standard Webhooks scheme (https://www.standardwebhooks.com).

Each delivery is a POST of the normalised event JSON with `webhook-id` (the same on every retry
of one event to one subscriber, so receivers can drop repeats), `webhook-timestamp` (seconds)
and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the
base64-decoded part of the `whsec_` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bridge.core.model import DeliveryResult, Failed, Retry
from connectors import http as outside


@dataclass(frozen=True, slots=True)
class EventNotice:
    """One recorded live-chat event, as subscribers see it."""

    uid: str
    name: str
    livechat_id: str
    livechat_kind: str
    received_at: float
    payload: dict[str, Any]
    session_id: int | None = None
    channel_id: str | None = None
    external_chat_id: str | None = None


def body(notice: EventNotice) -> bytes:
    doc = {
        "type": notice.name,
        "timestamp": datetime.fromtimestamp(notice.received_at, UTC).isoformat(),
        "data": {
            "event_id": notice.uid,
            "livechat": notice.livechat_id,
            "livechat_kind": notice.livechat_kind,
            "session_id": notice.session_id,
            "messenger": notice.channel_id,
            "chat_id": notice.external_chat_id,
            "payload": notice.payload,
        },
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def sign(secret: str, msg_id: str, timestamp: int, payload: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


async def deliver(
    http: outside.Client, url: str, secret: str, msg_id: str, payload: bytes
) -> DeliveryResult:
    timestamp = int(time.time())
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, payload),
    }
    outcome = await outside.request(http, "POST", url, headers=headers, raw=payload)
    # Receivers answer 2xx when done; 410 Gone says "stop sending"; anything else is retried.
    if isinstance(outcome, outside.Response) and outcome.status == 410:
        return Failed("the subscriber answered 410 Gone")
    result = outside.classify(outcome)
    return Retry(result.error) if isinstance(result, Failed) else result
