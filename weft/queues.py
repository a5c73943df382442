"""Every queue name Weft uses, in one place.

Per-task queues are ``T{tid}.{suffix}``; global ones live under the ``weft.`` prefix.
"""

from __future__ import annotations

TASKS_LOG = "weft.tasks.log"
SPAWN_REQUESTS = "weft.spawn.requests"
WORKERS_REGISTRY = "weft.workers.registry"
STATE_SNAPSHOT = "weft.state.snapshot"
STATE_ARCHIVE = "weft.state.archive"

INBOX = "inbox"
RESERVED = "reserved"
OUTBOX = "outbox"
CTRL_IN = "ctrl_in"
CTRL_OUT = "ctrl_out"
TASK_QUEUE_SUFFIXES = (INBOX, RESERVED, OUTBOX, CTRL_IN, CTRL_OUT)


def task_queue(tid: str | int, suffix: str) -> str:
    """Name of one of a task's own queues, e.g. ``T1837025672140161024.outbox``."""
    if suffix not in TASK_QUEUE_SUFFIXES:
        raise ValueError(f"unknown task queue suffix {suffix!r}")
    return f"T{tid}.{suffix}"


def inbox(tid: str | int) -> str:
    return task_queue(tid, INBOX)


def reserved(tid: str | int) -> str:
    return task_queue(tid, RESERVED)


def outbox(tid: str | int) -> str:
    return task_queue(tid, OUTBOX)


def ctrl_in(tid: str | int) -> str:
    return task_queue(tid, CTRL_IN)


def ctrl_out(tid: str | int) -> str:
    return task_queue(tid, CTRL_OUT)


def spawn_claims(manager_id: str | int) -> str:
    """Where a manager parks the spawn requests it has claimed but not yet handed to a task.

    Keeping claims per manager lets a successor give a dead manager's claims back to
    ``weft.spawn.requests`` (the move keeps the message ID, so the TID survives).
    """
    return f"weft.spawn.claimed.{manager_id}"


def is_task_queue(name: str) -> bool:
    head, _, suffix = name.partition(".")
    return head.startswith("T") and head[1:].isdigit() and suffix in TASK_QUEUE_SUFFIXES
