"""The contract every live-chat kind fulfils: its settings model and its connector.

A live chat is reached in two ways: its hooks arrive at the bridge (`parse_hook`), and the bridge
delivers messenger users' messages to it (`deliver`). Everything else is the bridge's business.
A kind is one module in connectors/ (settings model, wire models, connector) and one entry in
connectors/registry.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from pydantic import SecretStr

from bridge.core.config import Section
from bridge.core.model import CrmAnswer, Customer, DeliveryResult, LiveChatEvent, OutgoingMessage


class LiveChatSettingsBase(Section):
    """What the bridge asks of every kind's settings model (`[livechats.<id>]`), besides the
    keys each kind declares itself (`kind`, `hook_token`: declared there so that each kind's
    config errors keep its own key order)."""

    if TYPE_CHECKING:
        kind: str
        hook_token: SecretStr

    def named_secrets(self) -> list[tuple[str, SecretStr]]:
        """Each secret key of the section as (key, value), for the config warnings."""
        return [("hook_token", self.hook_token)]

    def secret_values(self) -> list[str]:
        """Every secret value, for the log redactor (more than `named_secrets` when a part of
        one is a secret of its own)."""
        return [secret.get_secret_value() for _, secret in self.named_secrets()]

    def phone_region(self) -> str | None:
        """ISO 3166 alpha-2 region that phone numbers without "+" are read in when linking
        this live chat's events to chats; None: they are read as international."""
        return None


class LiveChatConnector(Protocol):
    livechat_id: str
    kind: str

    def parse_hook(self, body: bytes) -> list[LiveChatEvent]:
        """The events in one hook request. Raises bridge.core.errors.InvalidInput for an
        unreadable body."""
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
