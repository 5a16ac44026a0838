"""The contract every live-chat connector fulfils, and the registry from config `kind` to class.

A live chat is reached in two ways: its hooks arrive at the bridge (`parse_hook`), and the bridge
delivers messenger users' messages to it (`deliver`). Everything else is the bridge's business.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp

from bridge.core.model import CrmAnswer, Customer, DeliveryResult, LiveChatEvent, OutgoingMessage
from bridge.settings import ChatvisorSettings, LiveChatSettings


class LiveChatConnector(Protocol):
    livechat_id: str
    kind: str

    def parse_hook(self, body: bytes) -> list[LiveChatEvent]:
        """The events in one hook request. Raises bridge.errors.BadRequest for an unreadable body."""
        ...

    async def deliver(self, customer: Customer, message: OutgoingMessage) -> DeliveryResult:
        """Post one messenger user's message. Must be idempotent on `message.uid`."""
        ...

    def hook_reply(self, answers: list[CrmAnswer]) -> dict[str, Any]:
        """The body that answers a hook request, carrying what the relay had to say."""
        ...

    async def readiness(self) -> dict[str, Any]:
        """Facts for /readyz about this live chat; informative, never a failure."""
        ...


def build_livechat(
    livechat_id: str, settings: LiveChatSettings, http: aiohttp.ClientSession
) -> LiveChatConnector:
    # Imported here so that adding a kind touches this function and its own module only.
    from connectors.chatvisor import ChatvisorConnector
    from connectors.jivochat import JivochatConnector

    if isinstance(settings, ChatvisorSettings):
        return ChatvisorConnector(livechat_id, settings, http)
    return JivochatConnector(livechat_id, settings, http)
