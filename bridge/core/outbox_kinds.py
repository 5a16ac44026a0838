"""The outbox kinds: what each kind of outbox item is, one entry per kind.

An entry says where the item goes (its target, which is also the `target` label of the
delivery metrics), which lane orders it, and which row its `ref_id` names. The groups the rest
of the project asks about (kinds whose `ref_id` names a message, an event; kinds that deliver a
message itself) are derived here from the entries, never listed elsewhere. How a kind is
performed and what follows its outcome are bound to the same names in
`bridge.delivery.calls.CALLS` and `bridge.delivery.settle.FOLLOW_UPS`; this module stays at the
bottom layer so that storage can use it.

Adding a kind: an entry here, its call (a `LocalCaller` method, named in `CALLS`) and its
follow-up (a `Settler` method, named in `FOLLOW_UPS`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# The outside party an item's call goes to.
Target = Literal["livechat", "messenger", "subscriber"]
# The table an item's `ref_id` names (None: the item carries what it needs in its payload).
Refers = Literal["message", "event"]


# Lanes: items of one lane are delivered one after another, in id order.
def livechat_lane(chat_id: int) -> str:
    """A chat's messages to its live chat."""
    return f"lc:{chat_id}"


def messenger_lane(chat_id: int) -> str:
    """A chat's replies, outcomes and read receipts to its messenger."""
    return f"ms:{chat_id}"


def subscriber_lane(subscription: str) -> str:
    """One subscription's events (`subscriptions[].key`)."""
    return f"sub:{subscription}"


def kept_reply_lane(livechat_id: str, chat_key: str | None) -> str:
    """The dead letters keeping one chat's undeliverable operator replies (`chat_key`: the
    chat's client key, or else the live chat's customer id)."""
    return f"reply:{livechat_id}:{chat_key}"


@dataclass(frozen=True, slots=True)
class OutboxKind:
    """One kind of outbox item.

    `target` None: never performed (a kept reply is only ever dead, and an admin's retry routes
    it again). `delivers_message`: the item carries the message itself, whose status follows
    the item (pending while it waits, delivered or failed once settled), as opposed to a notice
    about a message (an outcome, a read receipt). Items going to a messenger are enqueued with
    its channel id and held while that channel is not active."""

    name: str
    target: Target | None
    lane: Callable[..., str]
    refers_to: Refers | None = None
    delivers_message: bool = False

    @property
    def held_per_channel(self) -> bool:
        return self.target == "messenger"


TO_LIVECHAT = OutboxKind(
    "livechat.message", "livechat", livechat_lane, "message", delivers_message=True
)
TO_MESSENGER = OutboxKind(
    "messenger.message", "messenger", messenger_lane, "message", delivers_message=True
)
# payload: {"external_id", "success"}
OUTCOME = OutboxKind("messenger.outcome", "messenger", messenger_lane, "message")
# payload: {"external_id"}
READ = OutboxKind("messenger.read", "messenger", messenger_lane, "message")
# payload: {"subscription"}
TO_SUBSCRIBER = OutboxKind("subscriber.event", "subscriber", subscriber_lane, "event")
# An operator's reply that no chat could be found for: only ever dead, its text in the payload
# (see `Relay.bury_reply`); a retry routes it again instead of calling out.
KEPT_REPLY = OutboxKind("operator.reply", None, kept_reply_lane)

KINDS: dict[str, OutboxKind] = {
    k.name: k for k in (TO_LIVECHAT, TO_MESSENGER, OUTCOME, READ, TO_SUBSCRIBER, KEPT_REPLY)
}

# Kinds whose `ref_id` names a message, or an event: retention keeps that row while such an
# item is in the outbox, pending or dead.
MESSAGE_KINDS = tuple(k.name for k in KINDS.values() if k.refers_to == "message")
EVENT_KINDS = tuple(k.name for k in KINDS.values() if k.refers_to == "event")
# Kinds that deliver a message itself: an admin's retry sets the message pending again.
MESSAGE_DELIVERIES = tuple(k.name for k in KINDS.values() if k.delivers_message)


def target_of(kind: str) -> str:
    """The outside party a kind goes to (the metrics' `target` label). A kind not in `KINDS`
    (stored by another release) is named by its first dotted part."""
    known = KINDS.get(kind)
    return known.target if known is not None and known.target else kind.split(".", 1)[0]
