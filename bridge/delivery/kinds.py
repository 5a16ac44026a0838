"""How each outbox kind is performed and what follows its outcome: one entry per kind that is
performed, beside what the kind is (`bridge.core.outbox_kinds`: its name, target and lane).

`LocalCaller.call` (in the serving process or the delivery process) makes an item's call with
its entry's `call`; `Settler.plan` (in the serving process) adds its entry's `follow_up`; the
worker's metrics label it with its kind's target. A kind with no entry here (one stored by
another release, or a kept reply, which is never performed) fails as an unknown outbox kind,
with nothing to follow.

Adding a kind: its `OutboxKind` in `bridge.core.outbox_kinds`, an entry here, its call (a
`LocalCaller` method) and its follow-up (a `Settler` method).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.core import outbox_kinds as kinds
from bridge.core.outbox_kinds import OutboxKind

if TYPE_CHECKING:  # they look their entries up here: bound by name, not imported at run time
    from bridge.delivery.calls import CallResult, LocalCaller
    from bridge.delivery.settle import FollowUp, Settler
    from storage.outbox import OutboxItem

# The item's outside call; `active`: the messenger channels now active.
Call = Callable[["LocalCaller", "OutboxItem", Collection[str]], Awaitable["CallResult"]]
# What follows the call's outcome in our database, committed with the item's settle.
FollowUpOf = Callable[["Settler", "CallResult"], "FollowUp"]


@dataclass(frozen=True, slots=True)
class Handling:
    kind: OutboxKind
    call: Call
    follow_up: FollowUpOf


HANDLINGS: dict[str, Handling] = {
    h.kind.name: h
    for h in (
        Handling(
            kinds.TO_LIVECHAT,
            lambda caller, item, active: caller.to_livechat(item, active),
            lambda settler, done: settler.after_livechat(done),
        ),
        Handling(
            kinds.TO_MESSENGER,
            lambda caller, item, active: caller.to_messenger(item, active),
            lambda settler, done: settler.after_messenger(done),
        ),
        Handling(
            kinds.OUTCOME,
            lambda caller, item, active: caller.outcome(item, active),
            lambda settler, done: settler.nothing(done),
        ),
        Handling(
            kinds.READ,
            lambda caller, item, active: caller.read(item, active),
            lambda settler, done: settler.nothing(done),
        ),
        Handling(
            kinds.TO_SUBSCRIBER,
            lambda caller, item, active: caller.to_subscriber(item, active),
            lambda settler, done: settler.nothing(done),
        ),
    )
}


def handling_of(kind: str) -> Handling | None:
    """The entry of a stored item's kind; None for a kind that is never performed."""
    return HANDLINGS.get(kind)
