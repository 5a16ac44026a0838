"""Every live-chat kind the bridge knows: its config `kind`, its settings model, its connector.

Adding a kind: its module in connectors/ (settings model subclassing
`connectors.base.LiveChatSettingsBase`, wire models, connector class) and one line in `KINDS`.
bridge/settings.py builds the `[livechats.<id>]` union from `KINDS`; `build_connectors` is the
one place connectors are made, in the serving process and in the delivery process alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from connectors import http as outside
from connectors.base import LiveChatConnector, LiveChatSettingsBase
from connectors.chatvisor import ChatvisorConnector, ChatvisorSettings
from connectors.jivochat import JivochatConnector, JivochatSettings
from connectors.messenger import MessengerAccount, MessengerClient


@dataclass(frozen=True, slots=True)
class Kind:
    settings: type[LiveChatSettingsBase]
    # (livechat id, its settings (an instance of `settings`), the process's HTTP client)
    connector: Callable[[str, Any, outside.Client], LiveChatConnector]


# Config `kind` -> what makes it; listed in this order in "unknown kind" config errors.
KINDS: dict[str, Kind] = {
    "chatvisor": Kind(ChatvisorSettings, ChatvisorConnector),
    "jivochat": Kind(JivochatSettings, JivochatConnector),
}


@dataclass(frozen=True, slots=True)
class Connectors:
    """One process's connectors: live chats by livechat id, messenger clients by channel id."""

    livechats: dict[str, LiveChatConnector]
    messengers: dict[str, MessengerClient]


def build_connectors(
    livechats: Mapping[str, LiveChatSettingsBase],
    messengers: Mapping[str, MessengerAccount],
    http: outside.Client,
) -> Connectors:
    """The connectors for `[livechats.*]` and `[messengers.*]`, all calling out through `http`."""
    return Connectors(
        livechats={
            lc_id: KINDS[lc.kind].connector(lc_id, lc, http) for lc_id, lc in livechats.items()
        },
        messengers={
            cid: MessengerClient(http, cid, m.webhook, m.confirmation_code.get_secret_value())
            for cid, m in messengers.items()
        },
    )
