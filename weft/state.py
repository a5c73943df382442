"""Task records without re-reading the whole log: a snapshot plus the events after it.

``weft.tasks.log`` only grows, so folding it from the start on every ``weft status`` would
cost more with every task ever run. A snapshot in ``weft.state.snapshot`` holds every
task's folded record and the log cursor it covers; a reader folds only the events after the
cursor, and refreshes the snapshot when that tail has grown long. Snapshots are derived
data: deleting them loses nothing (the next reader rebuilds from the log).
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from weft import events, queues

if TYPE_CHECKING:
    from weft.broker import Broker

REFRESH_AFTER = 200  # events past the snapshot before a reader writes a new one
_FIELDS = {f.name for f in fields(events.TaskRecord)}


def _record_from_dict(data: dict[str, Any]) -> events.TaskRecord:
    return events.TaskRecord(**{k: v for k, v in data.items() if k in _FIELDS})


def _latest_snapshot(broker: Broker) -> tuple[int | None, dict[str, events.TaskRecord], list[int]]:
    """(cursor, records, ids of every snapshot message) from the newest readable snapshot."""
    best: tuple[int | None, dict[str, Any]] = (None, {})
    ids = []
    for message in broker.peek_many(queues.STATE_SNAPSHOT, 100):
        ids.append(message.id)
        try:
            data = json.loads(message.body)
            cursor = int(data["cursor"])
        except (ValueError, KeyError, TypeError):
            continue
        if best[0] is None or cursor > best[0]:
            best = (cursor, data.get("records") or {})
    records = {tid: _record_from_dict(rec) for tid, rec in best[1].items()}
    return best[0], records, ids


def fold_current(
    broker: Broker,
) -> tuple[dict[str, events.TaskRecord], int | None, list[int]]:
    """(records, cursor of the last event folded, ids of the snapshot messages read)."""
    cursor, records, old_ids = _latest_snapshot(broker)
    folded = 0
    for message_id, event in events.read_events(broker, after=cursor):
        tid = str(event.get("tid", ""))
        record = records.get(tid)
        if record is None:
            record = records[tid] = events.TaskRecord(tid=tid)
        events.apply(record, event)
        cursor = message_id
        folded += 1
    if folded >= REFRESH_AFTER and cursor is not None:
        write_snapshot(broker, cursor, records, old_ids)
        old_ids = []
    return records, cursor, old_ids


def current_records(broker: Broker) -> dict[str, events.TaskRecord]:
    """Every task's record as the log says now."""
    return fold_current(broker)[0]


def write_snapshot(
    broker: Broker, cursor: int, records: dict[str, events.TaskRecord], old_ids: list[int]
) -> None:
    body = json.dumps(
        {"cursor": cursor, "records": {tid: r.to_dict() for tid, r in records.items()}},
        separators=(",", ":"),
    )
    broker.write(queues.STATE_SNAPSHOT, body)
    for message_id in old_ids:
        broker.delete(queues.STATE_SNAPSHOT, message_id)
    if old_ids:
        return
    # A refresh by fold_current: remove every older snapshot, whoever wrote it.
    for message in broker.peek_many(queues.STATE_SNAPSHOT, 100):
        if json.loads(message.body).get("cursor", 0) < cursor:
            broker.delete(queues.STATE_SNAPSHOT, message.id)


def forget(broker: Broker, tids: set[str]) -> None:
    """Drop tasks from the snapshot (after their events were pruned from the log)."""
    records, cursor, old_ids = fold_current(broker)
    if cursor is None:
        return
    remaining = {tid: r for tid, r in records.items() if tid not in tids}
    write_snapshot(broker, cursor, remaining, old_ids)
