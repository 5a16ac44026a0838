"""What an attempt's outcome changes in our database, committed with the item's settle.

Built in the serving process from `CallResult` (plain data): the database has one writer, and
the delivery process (when there is one) only reads and calls out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bridge import relay
from bridge.core import outbox_kinds
from bridge.core.model import Delivered, DeliveryResult, Failed, Retry
from bridge.core.outbox_kinds import messenger_lane
from bridge.delivery.calls import CallResult, MessageFacts
from storage import chats, messages, outbox
from storage.outbox import OutboxItem
from storage.port import Connection

Work = Callable[[Connection], object]


@dataclass(frozen=True, slots=True)
class Settlement:
    result: DeliveryResult
    on_delivered: Work | None = None  # committed with the item's completion
    on_dead: Work | None = None  # committed when the item is given up
    always: Work | None = None  # committed with the settle, whatever it is
    channel_id: str | None = None  # the messenger channel whose health this result speaks of
    notified: bool = False  # the messenger already has this message's outcome


@dataclass(frozen=True, slots=True)
class FollowUp:
    """What follows an item's outcome, by kind (see `FOLLOW_UPS`)."""

    on_delivered: Work | None = None  # committed with the item's completion
    on_dead: Work | None = None  # committed when the item is given up


NO_FOLLOW_UP = FollowUp()


class Settler:
    def __init__(self, relay_: relay.Relay, clock: Callable[[], float]) -> None:
        self._relay = relay_
        self._clock = clock

    def plan(self, item: OutboxItem, done: CallResult) -> Settlement:
        follow_up = FOLLOW_UPS.get(item.kind)
        follow = NO_FOLLOW_UP if follow_up is None else follow_up(self, done)
        return Settlement(
            done.result,
            on_delivered=follow.on_delivered,
            on_dead=follow.on_dead,
            always=_both(
                _both(self._save_profile(done), _progress(item, done.result)),
                self._customer_learnt(done),
            ),
            channel_id=done.channel_id,
            notified=done.notified,
        )

    def after_livechat(self, done: CallResult) -> FollowUp:
        """A user's message reached the live chat, or never will: its status, the customer
        the live chat named, and its outcome to the messenger."""
        if done.message is None:
            return NO_FOLLOW_UP
        return FollowUp(
            on_delivered=self._outcome(
                done.message, done.result, success=True, queue=not done.notified
            ),
            on_dead=self._outcome(done.message, done.result, success=False),
        )

    def after_messenger(self, done: CallResult) -> FollowUp:
        """An operator's reply reached the messenger, or never will: its status."""
        if done.message is None:
            return NO_FOLLOW_UP
        return FollowUp(
            on_delivered=_status(done.message.id, "delivered"),
            on_dead=_status(done.message.id, "failed"),
        )

    def nothing(self, done: CallResult) -> FollowUp:
        """A notice or an event: nothing of ours changes with its outcome."""
        return NO_FOLLOW_UP

    def _outcome(
        self, msg: MessageFacts, result: DeliveryResult, *, success: bool, queue: bool = True
    ) -> Work:
        """The message reached the live chat (or never will): tell the messenger, unless that
        was done already (`queue` false)."""

        def work(conn: Connection) -> None:
            if isinstance(result, Delivered):
                messages.set_status(conn, msg.id, "delivered", result.remote_id)
                if _news(result.customer_id, msg.customer_id) or _news(
                    result.customer_tag, msg.customer_tag
                ):
                    chats.set_customer(conn, msg.chat_id, result.customer_id, result.customer_tag)
                if result.customer_id and result.customer_id != msg.customer_id:
                    self._relay.adopt_orphans(conn, msg.chat_id)
            else:
                messages.set_status(conn, msg.id, "failed")
            if not queue:
                return
            outbox.enqueue(
                conn,
                kind=outbox_kinds.OUTCOME.name,
                lane=messenger_lane(msg.chat_id),
                channel_id=msg.channel_id,
                ref_id=msg.id,
                payload={"external_id": msg.external_id, "success": success},
                now=self._clock(),
            )

        return work

    def _customer_learnt(self, done: CallResult) -> Work | None:
        """A failed attempt that still got the live chat's customer id (see `Retry`): stored,
        and the operator replies already kept for that customer delivered."""
        result, msg = done.result, done.message
        if not isinstance(result, Retry | Failed) or msg is None or result.customer_id is None:
            return None
        if not (
            _news(result.customer_id, msg.customer_id)
            or _news(result.customer_tag, msg.customer_tag)
        ):
            return None
        customer_id, tag = result.customer_id, result.customer_tag

        def work(conn: Connection) -> None:
            chats.set_customer(conn, msg.chat_id, customer_id, tag)
            if customer_id != msg.customer_id:
                self._relay.adopt_orphans(conn, msg.chat_id)

        return work

    def _save_profile(self, done: CallResult) -> Work | None:
        fetch = done.profile
        if fetch is None:
            return None

        def work(conn: Connection) -> None:
            if fetch.profile is not None:
                self._relay.save_profile(conn, fetch.channel_id, fetch.profile, fetch.at)
            else:
                chats.mark_profile_tried(conn, fetch.channel_id, fetch.user_id, fetch.at)

        return work


# What follows each performed kind's outcome in our database, committed with the item's settle
# (its call: `bridge.delivery.calls.CALLS`). A kind with none has nothing to follow.
FOLLOW_UPS: dict[str, Callable[[Settler, CallResult], FollowUp]] = {
    outbox_kinds.TO_LIVECHAT.name: Settler.after_livechat,
    outbox_kinds.TO_MESSENGER.name: Settler.after_messenger,
    outbox_kinds.OUTCOME.name: Settler.nothing,
    outbox_kinds.READ.name: Settler.nothing,
    outbox_kinds.TO_SUBSCRIBER.name: Settler.nothing,
}


def _news(found: str | None, known: str | None) -> bool:
    """The live chat named something we did not hold (None: it named nothing)."""
    return found is not None and found != known


def _status(message_id: int, value: str) -> Work:
    def work(conn: Connection) -> None:
        messages.set_status(conn, message_id, value)

    return work


def _progress(item: OutboxItem, result: DeliveryResult) -> Work | None:
    """A message sent as several calls failed part way: its next attempt (or an admin's retry
    of the dead item) starts at the first part not delivered, rather than sending the
    delivered ones again for the receiver to drop."""
    parts_done = result.parts_done if isinstance(result, Retry | Failed) else None
    if parts_done is None or parts_done == item.payload.get("parts_done", 0):
        return None

    def work(conn: Connection) -> None:
        outbox.record_parts_done(conn, item.id, parts_done)

    return work


def _both(first: Work | None, second: Work | None) -> Work | None:
    if first is None or second is None:
        return first or second

    def work(conn: Connection) -> None:
        first(conn)
        second(conn)

    return work
