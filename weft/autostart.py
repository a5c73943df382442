"""Autostart: ``.weft/autostart/*.json`` templates that the manager submits when it starts.

A template is the seed's TaskSpec format (name, spec, io, metadata). Each submitted copy
is tagged ``metadata.autostart = <file stem>`` so a template never runs twice at once.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from weft import events, queues

if TYPE_CHECKING:
    from weft.broker import Broker
    from weft.context import WeftContext

log = logging.getLogger("weft.autostart")


def launch_templates(
    ctx: WeftContext, broker: Broker, records: dict[str, events.TaskRecord]
) -> list[str]:
    directory = ctx.autostart_dir
    if not directory.is_dir():
        return []
    from weft.taskspec import parse_taskspec

    running = {
        r.autostart for r in records.values() if r.autostart and r.status in events.ACTIVE_STATUSES
    }
    pending = set()
    for message in broker.peek_many(queues.SPAWN_REQUESTS, 10_000):
        try:
            pending.add(json.loads(message.body).get("metadata", {}).get("autostart"))
        except (json.JSONDecodeError, AttributeError):
            continue
    launched = []
    for path in sorted(directory.glob("*.json")):
        key = path.stem
        if key in running or key in pending:
            continue
        try:
            spec = parse_taskspec(path.read_text(encoding="utf-8"), source=str(path))
        except Exception as exc:
            log.error("autostart template %s skipped: %s", path, exc)
            continue
        spec.metadata.autostart = key  # type: ignore[attr-defined]
        body = spec.model_dump_json(exclude={"state", "tid"})
        launched.append(str(broker.write(queues.SPAWN_REQUESTS, body)))
        log.info("autostart %s submitted as %s", key, launched[-1])
    return launched
