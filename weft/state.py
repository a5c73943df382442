"""Task records without re-reading the whole log: a snapshot plus the events after it.

``weft.tasks.log`` only grows, so folding it from the start on every ``weft status`` would
cost more with every task ever run. Readers fold only the events after a snapshot, and
refresh the snapshot when that tail has grown long. A snapshot has two parts with the same
log cursor:

- ``weft.state.snapshot``: the records of active tasks and the final status of every
  finished one: all that ``weft status`` needs, small even with many finished tasks;
- ``weft.state.archive``: the full records of finished tasks, read only by callers that
  list them (``status --all``, ``list_tasks``, prune, recovery).

Both are derived data: deleting them loses nothing (the next reader rebuilds from the log).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from weft import events, queues

if TYPE_CHECKING:
    from weft.broker import Broker

REFRESH_AFTER = 200  # events past the snapshot before a reader writes a new one
_FIELDS = {f.name for f in fields(events.TaskRecord)}


def _record_from_dict(data: dict[str, Any]) -> events.TaskRecord:
    return events.TaskRecord(**{k: v for k, v in data.items() if k in _FIELDS})


@dataclass
class _Snapshot:
    cursor: int | None
    active: dict[str, events.TaskRecord]
    final: dict[str, str]  # tid -> final status
    ids: list[int]  # every snapshot message read (to replace them)


def _newest(broker: Broker, queue: str) -> tuple[dict[str, Any] | None, list[int]]:
    best: dict[str, Any] | None = None
    ids = []
    for message in broker.peek_many(queue, 100):
        ids.append(message.id)
        try:
            data = json.loads(message.body)
            cursor = int(data["cursor"])
        except (ValueError, KeyError, TypeError):
            continue
        if best is None or cursor > int(best["cursor"]):
            best = data
    return best, ids


def _load_snapshot(broker: Broker) -> _Snapshot:
    data, ids = _newest(broker, queues.STATE_SNAPSHOT)
    if data is None:
        return _Snapshot(None, {}, {}, ids)
    active = {tid: _record_from_dict(rec) for tid, rec in (data.get("active") or {}).items()}
    return _Snapshot(int(data["cursor"]), active, dict(data.get("final") or {}), ids)


def _load_archive(broker: Broker, cursor: int | None) -> dict[str, events.TaskRecord]:
    """Finished records as of ``cursor`` (the archive written with that snapshot)."""
    if cursor is None:
        return {}
    for message in broker.peek_many(queues.STATE_ARCHIVE, 100):
        try:
            data = json.loads(message.body)
        except ValueError:
            continue
        if data.get("cursor") == cursor:
            return {tid: _record_from_dict(r) for tid, r in (data.get("records") or {}).items()}
    return {}


def fold_current(
    broker: Broker,
) -> tuple[dict[str, events.TaskRecord], int | None, list[int]]:
    """(every record, cursor of the last event folded, ids of the snapshot messages read)."""
    snap = _load_snapshot(broker)
    records = _load_archive(broker, snap.cursor)
    if len(records) < len(snap.final):  # archive missing: rebuild everything from the log
        snap = _Snapshot(None, {}, {}, snap.ids)
        records = {}
    records.update(snap.active)
    cursor, folded = _fold_tail(broker, snap.cursor, records)
    if folded >= REFRESH_AFTER and cursor is not None:
        write_snapshot(broker, cursor, records, snap.ids)
        snap.ids = []
    return records, cursor, snap.ids


def _fold_tail(
    broker: Broker, cursor: int | None, records: dict[str, events.TaskRecord]
) -> tuple[int | None, int]:
    folded = 0
    for message_id, event in events.read_events(broker, after=cursor):
        tid = str(event.get("tid", ""))
        record = records.get(tid)
        if record is None:
            record = records[tid] = events.TaskRecord(tid=tid)
        events.apply(record, event)
        cursor = message_id
        folded += 1
    return cursor, folded


def current_records(broker: Broker) -> dict[str, events.TaskRecord]:
    """Every task's record as the log says now."""
    return fold_current(broker)[0]


def summary(broker: Broker) -> tuple[dict[str, int], dict[str, events.TaskRecord]]:
    """(task count by status, records of the tasks not finished): no finished record read."""
    snap = _load_snapshot(broker)
    final = dict(snap.final)
    active = dict(snap.active)
    tail = 0
    for _, event in events.read_events(broker, after=snap.cursor):
        tail += 1
        tid = str(event.get("tid", ""))
        record = active.get(tid)
        if record is None:
            if tid in final:  # a finished task came back (a requeue): rebuild its record
                del final[tid]
                record = events.fold(events.events_for(broker, tid)).get(tid)
                if record is not None:
                    active[tid] = record
                continue
            record = active[tid] = events.TaskRecord(tid=tid)
        events.apply(record, event)
    if tail >= REFRESH_AFTER:
        fold_current(broker)  # writes a fresh snapshot for the next reader
    counts: dict[str, int] = {}
    for status in final.values():
        counts[status] = counts.get(status, 0) + 1
    for tid, record in list(active.items()):
        counts[record.status] = counts.get(record.status, 0) + 1
        if record.is_final:
            del active[tid]
    return counts, active


def tids_ending_with(broker: Broker, suffix: str) -> set[str]:
    """Every task the log knows whose TID ends with ``suffix``: from the snapshot and the
    events after it, never a scan of the whole log."""
    snap = _load_snapshot(broker)
    found = {tid for tid in (*snap.final, *snap.active) if tid.endswith(suffix)}
    for _, event in events.read_events(broker, after=snap.cursor):
        tid = str(event.get("tid", ""))
        if tid.endswith(suffix):
            found.add(tid)
    return found


def write_snapshot(
    broker: Broker, cursor: int, records: dict[str, events.TaskRecord], old_ids: list[int]
) -> None:
    finished = {tid: r for tid, r in records.items() if r.is_final}
    active = {tid: r.to_dict() for tid, r in records.items() if not r.is_final}
    archive = {"cursor": cursor, "records": {tid: r.to_dict() for tid, r in finished.items()}}
    snapshot = {
        "cursor": cursor,
        "active": active,
        "final": {tid: r.status for tid, r in finished.items()},
    }
    # The archive first: a reader that finds the snapshot finds its archive too.
    archive_id = broker.write(queues.STATE_ARCHIVE, json.dumps(archive, separators=(",", ":")))
    broker.write(queues.STATE_SNAPSHOT, json.dumps(snapshot, separators=(",", ":")))
    for message in broker.peek_many(queues.STATE_ARCHIVE, 100):
        if message.id != archive_id and message.id < archive_id:
            broker.delete(queues.STATE_ARCHIVE, message.id)
    stale = set(old_ids)
    for message in broker.peek_many(queues.STATE_SNAPSHOT, 100):
        try:
            older = int(json.loads(message.body).get("cursor", 0)) < cursor
        except (ValueError, TypeError):
            older = True
        if message.id in stale or older:
            broker.delete(queues.STATE_SNAPSHOT, message.id)


def forget(broker: Broker, tids: set[str]) -> None:
    """Drop tasks from the snapshot (after their events were pruned from the log)."""
    records, cursor, old_ids = fold_current(broker)
    if cursor is None:
        return
    remaining = {tid: r for tid, r in records.items() if tid not in tids}
    write_snapshot(broker, cursor, remaining, old_ids)
