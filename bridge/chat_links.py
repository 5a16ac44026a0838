"""The per-chat URL the bridge hands JivoChat as `sender.url`: `<public_url>/c/<opaque key>`.

JivoChat documents no key common to its Chat API and its Webhooks API. The page a Chat-API
client is on (`sender.url`) is, by inference, what a Webhooks-API event carries as `page.url`
(shared/protocols/jivochat.md, "Linking Webhooks-API events"), so a URL unique to the chat
links the event to it.

The key is an HMAC of the chat's client key under the live chat's hook token: opaque (the
messenger's chat id cannot be read from it or guessed), and deterministic, so a chat re-created
after a lost database gets the key JivoChat already holds.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

from yarl import URL

PATH = "/c/"
KEY = re.compile(r"[A-Za-z0-9_-]{24}")


def url_key(secret: str, client_key: str) -> str:
    """24 URL-safe characters (144 bits) naming the chat whose client key is `client_key`."""
    digest = hmac.new(
        secret.encode(), b"chat-url\x00" + client_key.encode(), hashlib.sha256
    ).digest()
    return base64.urlsafe_b64encode(digest[:18]).decode()


def chat_url(public_url: str, key: str) -> str:
    return f"{public_url}{PATH}{key}"


def key_in_url(url: str | None) -> str | None:
    """The key of a URL whose path ends in `/c/<key>`, whatever its host (the public URL may
    have moved since), or None."""
    if not url:
        return None
    try:
        parts = URL(url.strip()).path.rstrip("/").split("/")
    except (ValueError, TypeError):
        return None
    if len(parts) >= 3 and parts[-2] == PATH.strip("/") and KEY.fullmatch(parts[-1]):
        return parts[-1]
    return None
