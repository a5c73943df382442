"""The reserved-queue policy: what happens to a task's work message when the task ends."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from weft import queues

if TYPE_CHECKING:
    from weft.broker import Broker

POLICIES = ("keep", "requeue", "clear")


def max_requeues() -> int:
    import os

    return int(os.environ.get("WEFT_MAX_REQUEUES", "3"))


def effective_policy(broker: Broker, tid: str, policy: str) -> str:
    """``requeue`` gives up after ``WEFT_MAX_REQUEUES`` (default 3) earlier requeues of
    the same task, and keeps the message instead: a task that always fails must not loop."""
    if policy != "requeue":
        return policy
    from weft import events

    done = sum(1 for e in events.events_for(broker, tid) if e.get("requeued"))
    return "requeue" if done < max_requeues() else "keep"


def apply_reserved_policy(
    broker: Broker, tid: str, policy: str, *, success: bool, inputs: Sequence[str] = ()
) -> None:
    """Success always deletes the work message. On failure or stop: ``keep`` leaves it in
    ``T{tid}.reserved`` for inspection, ``clear`` deletes it, and ``requeue`` hands it back
    to ``weft.spawn.requests`` (the move keeps the message ID, so it runs again as the same
    TID).

    Only the spawn request (ID = TID) goes back there. A queue-fed task that died mid-item
    also holds that item here: it returns to the task's input queue (``inputs``, when there
    is exactly one), else stays here; taken for a spawn request it would be lost."""
    reserved = queues.reserved(tid)
    if success or policy == "clear":
        broker.delete_queue(reserved)
    elif policy == "requeue":
        broker.move_one(reserved, queues.SPAWN_REQUESTS, message_id=int(tid))
        if len(inputs) == 1:
            broker.move_all(reserved, inputs[0])
