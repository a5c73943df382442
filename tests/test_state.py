"""Status from a snapshot plus the log's tail, and pruning finished tasks."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Weft
from tests.helpers import log_events, queue_bodies, wait_for
from weft import events, queues, state
from weft.client import WeftClient


def _raw_fold(project: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for event in log_events(project):
        out[event["tid"]] = event["status"]
    return out


def test_snapshot_agrees_with_the_log(project: Path) -> None:
    with WeftClient.open(project) as client:
        for i in range(state.REFRESH_AFTER + 50):
            tid = str(1_000_000_000_000_000_000 + i)
            status = events.COMPLETED if i % 3 else events.RUNNING
            name = events.WORK_COMPLETED if i % 3 else events.WORK_STARTED
            events.log_event(client.broker, events.make_event(name, tid, status))
        first = {t: r.status for t, r in client.tasks().items()}
        assert first == _raw_fold(project)
        assert len(queue_bodies(project, queues.STATE_SNAPSHOT)) == 1
        # Later events are folded on top of the snapshot.
        events.log_event(
            client.broker,
            events.make_event(events.WORK_FAILED, "1000000000000000000", events.FAILED),
        )
        second = {t: r.status for t, r in client.tasks().items()}
        assert second == _raw_fold(project)
        assert second["1000000000000000000"] == "failed"
        raw_counts: dict[str, int] = {}
        for status in second.values():
            raw_counts[status] = raw_counts.get(status, 0) + 1
        # The default status reads only the small part of the snapshot; it must agree.
        assert client.status()["counts"] == raw_counts
        assert client.status(include_finished=True)["counts"] == raw_counts
        active = {t["tid"] for t in client.status()["tasks"]}
        assert active == {t for t, s in second.items() if s == "running"}
        assert len(queue_bodies(project, queues.STATE_ARCHIVE)) == 1


def test_prune_keeps_unread_and_running(weft: Weft, project: Path) -> None:
    assert weft("run", "echo", "read").returncode == 0  # its result was read by run
    unread = weft("run", "--no-wait", "echo", "unread").stdout.strip()
    running = weft("run", "--no-wait", "sleep", "30").stdout.strip()
    wait_for(lambda: any(e["status"] == "completed" for e in log_events(project, unread)))
    wait_for(lambda: any(e["event"] == "work_started" for e in log_events(project, running)))
    r = weft("system", "prune", "--older-than", "0", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"pruned_tasks": 1, "pruned_events": 3, "kept_unread": 1}
    status = json.loads(weft("status", "--all", "--json").stdout)
    assert {t["tid"] for t in status["tasks"]} == {unread, running}
    assert json.loads(weft("result", unread).stdout)["output"] == "unread\n"
    weft("task", "kill", running)
    wait_for(lambda: any(e["status"] == "killed" for e in log_events(project, running)))
    r = weft("system", "prune", "--older-than", "0", "--include-unread", "--json")
    assert json.loads(r.stdout)["pruned_tasks"] == 2
    assert log_events(project) == []
    assert json.loads(weft("status", "--all", "--json").stdout)["total"] == 0
    bad = weft("system", "prune", "--older-than", "soon")
    assert bad.returncode == 2 and "invalid duration" in bad.stderr
