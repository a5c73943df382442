"""The state log: one JSON event per transition on ``weft.tasks.log``.

Every event carries the seed's fields (event, tid, tid_short, status, timestamp, taskspec,
task_pid, return_code) plus optional detail (error, reason, metrics, host). A task's status
is a fold over its events (``fold``), so anything that shows status derives it from here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from weft import queues
from weft.tid import short

if TYPE_CHECKING:
    from weft.broker import Broker

# Event names (the seed's) and the status each one leaves the task in.
TASK_INITIALIZED = "task_initialized"
WORK_STARTED = "work_started"
WORK_COMPLETED = "work_completed"
WORK_FAILED = "work_failed"
WORK_TIMEOUT = "work_timeout"
WORK_LIMIT_VIOLATION = "work_limit_violation"
CONTROL_PREFIX = "control_"
CONTROL_COMMANDS = ("STOP", "KILL", "PAUSE", "RESUME", "STATUS", "PING")

PENDING = "pending"
RUNNING = "running"
PAUSED = "paused"
COMPLETED = "completed"
FAILED = "failed"
TIMEOUT = "timeout"
KILLED = "killed"
STOPPED = "stopped"
FINAL_STATUSES = frozenset({COMPLETED, FAILED, TIMEOUT, KILLED, STOPPED})
ACTIVE_STATUSES = frozenset({PENDING, RUNNING, PAUSED})


def make_event(
    event: str,
    tid: str,
    status: str,
    *,
    taskspec: dict[str, Any] | None = None,
    task_pid: int | None = None,
    return_code: int | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """Build an event with the seed's fields first, in a fixed order."""
    record: dict[str, Any] = {
        "event": event,
        "tid": tid,
        "tid_short": short(tid),
        "status": status,
        "timestamp": time.time_ns(),
        "taskspec": taskspec,
        "task_pid": task_pid,
        "return_code": return_code,
    }
    record.update({k: v for k, v in detail.items() if v is not None})
    return record


def log_event(broker: Broker, event: dict[str, Any]) -> int:
    return broker.write(queues.TASKS_LOG, json.dumps(event, separators=(",", ":")))


def read_events(
    broker: Broker, *, after: int | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(message id, event) pairs in log order, optionally after a cursor."""
    for message in broker.peek_all(queues.TASKS_LOG, after=after):
        try:
            event = json.loads(message.body)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "tid" in event:
            yield message.id, event


def events_for(broker: Broker, tid: str) -> list[dict[str, Any]]:
    """One task's events, found by a body search of the log from the task's submission on
    (its TID is the ID of its spawn request, so every event of it has a larger ID)."""
    after = int(tid) - 1 if tid.isdigit() else None
    ids = broker.find_ids(queues.TASKS_LOG, f'"tid":"{tid}"', limit=1000, after=after)
    out = []
    for message_id in sorted(ids):
        message = broker.peek_one(queues.TASKS_LOG, message_id=message_id)
        if message is not None:
            out.append(json.loads(message.body))
    return out


@dataclass
class TaskRecord:
    """What the log says about one task."""

    tid: str
    status: str = PENDING
    name: str = ""
    command: str = ""
    task_pid: int | None = None
    return_code: int | None = None
    created_at: int | None = None
    started_at: int | None = None
    finished_at: int | None = None
    last_event: str = ""
    error: str | None = None
    host: str | None = None
    limits: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    autostart: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def tid_short(self) -> str:
        return short(self.tid)

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tid_short"] = self.tid_short
        return data


def apply(record: TaskRecord, event: dict[str, Any]) -> TaskRecord:
    """Fold one event into a task's record."""
    name = event.get("event", "")
    record.last_event = name
    record.status = event.get("status") or record.status
    ts = event.get("timestamp")
    spec = event.get("taskspec")
    if isinstance(spec, dict):
        record.name = spec.get("name") or record.name
        inner = spec.get("spec") or {}
        if inner.get("type") == "function":
            record.command = str(inner.get("function_target") or "")
        elif inner.get("process_target"):
            import shlex

            record.command = shlex.join(inner["process_target"])
        limits = inner.get("limits") or {}
        record.limits = {k: v for k, v in limits.items() if v is not None}
        metadata = spec.get("metadata") or {}
        record.tags = list(metadata.get("tags") or [])
        record.autostart = metadata.get("autostart")
    if event.get("task_pid") is not None:
        record.task_pid = event["task_pid"]
    if name == TASK_INITIALIZED:
        record.created_at = ts
    elif name == WORK_STARTED:
        record.started_at = ts
    if record.status in FINAL_STATUSES:
        record.finished_at = ts
        record.return_code = event.get("return_code")
        record.error = event.get("error")
    if event.get("host"):
        record.host = event["host"]
    if isinstance(event.get("metrics"), dict):
        record.metrics = event["metrics"]
    return record


def fold(events: Iterable[dict[str, Any]]) -> dict[str, TaskRecord]:
    """Every task's record, rebuilt from events alone."""
    records: dict[str, TaskRecord] = {}
    for event in events:
        tid = str(event.get("tid", ""))
        if not tid:
            continue
        record = records.get(tid)
        if record is None:
            record = records[tid] = TaskRecord(tid=tid)
        apply(record, event)
    return records
