"""The reserved-queue policy: what happens to a task's work message when the task ends."""

from __future__ import annotations

from typing import TYPE_CHECKING

from weft import queues

if TYPE_CHECKING:
    from weft.broker import Broker

POLICIES = ("keep", "requeue", "clear")


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
