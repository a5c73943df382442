"""The reserved-queue policy: what happens to a task's work message when the task ends."""

from __future__ import annotations

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


def apply_reserved_policy(broker: Broker, tid: str, policy: str, *, success: bool) -> None:
    """Success always deletes the work message. On failure or stop: ``keep`` leaves it in
    ``T{tid}.reserved`` for inspection, ``clear`` deletes it, and ``requeue`` hands it back
    to ``weft.spawn.requests`` (the move keeps the message ID, so it runs again as the same
    TID)."""
    reserved = queues.reserved(tid)
    if success or policy == "clear":
        broker.delete_queue(reserved)
    elif policy == "requeue":
        broker.move_all(reserved, queues.SPAWN_REQUESTS)
