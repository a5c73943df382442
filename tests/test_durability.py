"""Durability under faults: managers and task processes killed at the worst moments, many
clients at once. Every claim in docs/reliability.md points at a test here.

The Python API runs in fresh interpreters (``_python``) with the same environment as the CLI,
so every process a test starts belongs to the test's project and is ended by its fixtures.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Weft
from tests.helpers import log_events, queue_bodies, wait_for

# Submits the specs in argv[1] without starting a manager, then (unless argv[2] is "null")
# starts one with the extra environment in argv[2]. Prints the TIDs and the manager's PID.
SUBMIT = """
import json, sys
from weft.client import WeftClient
with WeftClient.open(".") as c:
    tids = [c.submit(spec, ensure_manager=False) for spec in json.loads(sys.argv[1])]
    env = json.loads(sys.argv[2])
    pid = None if env is None else c.ensure_manager(env=env)
print(json.dumps({"tids": tids, "manager": pid}))
"""

# Waits for (and consumes) the result of every TID in argv[1]; prints them by TID.
RESULTS = """
import json, sys
from weft.client import WeftClient
with WeftClient.open(".") as c:
    out = {tid: c.result(tid, timeout=float(sys.argv[2])) for tid in json.loads(sys.argv[1])}
print(json.dumps(out))
"""

# One of many concurrent clients: submits argv[1] `true` tasks as fast as it can.
SUBMIT_MANY = """
import json, sys
from weft.client import WeftClient
with WeftClient.open(".") as c:
    tids = [c.submit({"spec": {"type": "command", "process_target": ["true"]}})
            for _ in range(int(sys.argv[1]))]
print(json.dumps(tids))
"""

# One of several processes sharing one queue: after a start barrier, writes argv[2]
# messages named argv[1]-N, reading one after each write, then drains the queue.
QUEUE_WORKER = """
import json, os, sys, time
from weft.client import WeftClient
from weft.errors import EmptyQueueError
me, count = sys.argv[1], int(sys.argv[2])
got = []
with WeftClient.open(".") as c:
    q = c.queue
    open(f"ready-{me}", "w").close()
    deadline = time.monotonic() + 30
    while not os.path.exists("go") and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(count):
        q.write("shared", f"{me}-{i}")
        try:
            got.extend(m.body for m in q.read("shared"))
        except EmptyQueueError:
            pass
    while True:
        try:
            got.extend(m.body for m in q.read("shared", all=True))
        except EmptyQueueError:
            break
print(json.dumps(got))
"""


def _python(weft: Weft, code: str, *args: str, timeout: float = 60) -> Any:
    """Run ``code`` (which prints one JSON value) with the CLI's environment; its value."""
    r = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=weft.cwd,
        env=weft.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _spec(*argv: str, **options: Any) -> dict[str, Any]:
    return {"spec": {"type": "command", "process_target": list(argv), **options}}


def _gone(pid: int) -> bool:
    """Not running any more (exited; a zombie nobody reaped counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _event(root: Path, tid: str, name: str) -> dict[str, Any] | None:
    found = [e for e in log_events(root, tid) if e["event"] == name]
    return found[0] if found else None


def _final(root: Path, tid: str) -> bool:
    statuses = {"completed", "failed", "timeout", "killed", "stopped"}
    history = log_events(root, tid)
    return bool(history) and history[-1]["status"] in statuses


def _registry(root: Path) -> list[dict[str, Any]]:
    entries = [json.loads(body) for body in queue_bodies(root, "weft.workers.registry")]
    return [e for e in entries if "manager_id" in e]


def _live_managers(root: Path) -> list[int]:
    """Manager processes of this project (by their working directory: every test's
    project is called ``proj``, so titles alone do not tell them apart)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            title = " ".join(proc.info["cmdline"] or [])
            if ":manager:" in title and proc.info["cwd"] == str(root.resolve()):
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def targets_of(tid: str) -> list[psutil.Process]:
    """Live processes a task's target started (they carry WEFT_TID in their environment)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.environ().get("WEFT_TID") == tid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _claimed(root: Path) -> list[tuple[str, int]]:
    """(claim queue, message ID) of every spawn request a manager has claimed."""
    db = sqlite3.connect(root / ".weft" / "broker.db")
    try:
        rows = db.execute(
            "SELECT queue, ts FROM messages WHERE queue LIKE 'weft.spawn.claimed.%' "
            "AND claimed = 0 ORDER BY ts"
        ).fetchall()
    finally:
        db.close()
    return [(str(q), int(ts)) for q, ts in rows]


def _count_events(root: Path, name: str) -> int:
    db = sqlite3.connect(root / ".weft" / "broker.db")
    try:
        (n,) = db.execute(
            "SELECT count(*) FROM messages WHERE queue = 'weft.tasks.log' AND body LIKE ?",
            (f'{{"event":"{name}"%',),
        ).fetchone()
    finally:
        db.close()
    return int(n)


def assert_integrity(weft: Weft, root: Path) -> None:
    """The database survived: SQLite's own check passes and ``weft dump`` reads it all."""
    db = sqlite3.connect(root / ".weft" / "broker.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        (stored,) = db.execute("SELECT count(*) FROM messages WHERE claimed = 0").fetchone()
    finally:
        db.close()
    out = root.parent / "integrity-dump.jsonl"
    r = weft("dump", "-o", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert lines[0]["type"] == "header"
    assert sum(1 for line in lines if line["type"] == "message") == stored
    out.unlink()


# -- 1. the manager dies while tasks run -------------------------------------------------


def test_manager_sigkill_while_20_tasks_run(weft: Weft, project: Path) -> None:
    specs = [_spec("sleep", "2") for _ in range(18)] + [_spec("sleep", "60")] * 2
    first = _python(weft, SUBMIT, json.dumps(specs), "{}")
    tids, manager = first["tids"], first["manager"]
    survivors, lost, adopted = tids[:-2], tids[-2], tids[-1]

    def all_started() -> dict[str, dict[str, Any]] | None:
        found = {e["tid"]: e for e in log_events(project) if e["event"] == "work_started"}
        return found if len(found) == len(tids) else None

    started = wait_for(all_started, 30, "all 20 tasks to start")
    os.kill(manager, signal.SIGKILL)
    wait_for(lambda: _gone(manager), 10, "the manager to die")
    lost_pid, orphan = started[lost]["task_pid"], started[lost]["target_pid"]
    os.kill(lost_pid, signal.SIGKILL)  # one task process dies too, while no manager lives
    wait_for(lambda: _gone(lost_pid), 10, "the task process to die")
    assert not _gone(orphan)  # its target runs on, orphaned

    # More work arrives while no manager lives: it waits in weft.spawn.requests.
    late_specs = [_spec("echo", f"late {i}") for i in range(5)]
    late = _python(weft, SUBMIT, json.dumps(late_specs), "null")["tids"]
    assert len(queue_bodies(project, "weft.spawn.requests")) == 5

    # The surviving tasks finish on their own; their results land.
    wait_for(lambda: all(_final(project, t) for t in survivors), 30, "the survivors to finish")
    for tid in survivors:
        assert log_events(project, tid)[-1]["event"] == "work_completed"
        assert len(queue_bodies(project, f"T{tid}.outbox")) == 1
    assert not _live_managers(project)
    assert [e["pid"] for e in _registry(project)] == [manager]  # the dead one's stale entry

    # The next client starts a new manager, which takes over.
    r = weft("run", "echo", "ok")
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    entries = _registry(project)
    assert len(entries) == 1 and entries[0]["pid"] != manager
    assert _live_managers(project) == [entries[0]["pid"]]
    failed = wait_for(lambda: _event(project, lost, "work_failed"), 10, "the lost task settled")
    assert failed["status"] == "failed" and failed["error"] == f"task process {lost_pid} vanished"
    wait_for(lambda: _gone(orphan), 10, "the orphaned target to be ended")
    # The task still running was adopted, not settled; the new manager watches it.
    assert log_events(project, adopted)[-1]["event"] == "work_started"
    adopted_pid = started[adopted]["task_pid"]
    os.kill(adopted_pid, signal.SIGKILL)
    failed = wait_for(
        lambda: _event(project, adopted, "work_failed"), 5, "the adopted task settled"
    )
    assert failed["error"] == f"task process {adopted_pid} vanished"
    wait_for(lambda: _gone(started[adopted]["target_pid"]), 10, "its target to be ended")

    got = _python(weft, RESULTS, json.dumps(tids + late), "30")
    assert {t: got[t]["status"] for t in survivors} == dict.fromkeys(survivors, "completed")
    for tid in (lost, adopted):
        assert got[tid]["status"] == "failed" and "vanished" in got[tid]["error"]
    assert [got[t]["output"] for t in late] == [f"late {i}\n" for i in range(5)]
    # Nothing lost, nothing ran twice.
    initialized = Counter(e["tid"] for e in log_events(project) if e["event"] == "task_initialized")
    assert all(initialized[t] == 1 for t in tids + late), initialized
    assert queue_bodies(project, "weft.spawn.requests") == [] and _claimed(project) == []
    assert_integrity(weft, project)


# -- 2. the manager dies between claiming a request and starting its task ---------------


def test_manager_dies_between_claim_and_start(weft: Weft, project: Path) -> None:
    fault = json.dumps({"WEFT_TEST_FAULT": "crash_after_claim"})  # this manager only
    first = _python(weft, SUBMIT, json.dumps([_spec("echo", "once")]), fault)
    (tid,), manager = first["tids"], first["manager"]
    wait_for(lambda: _gone(manager), 15, "the faulty manager to die")
    (dead,) = _registry(project)
    assert _claimed(project) == [(f"weft.spawn.claimed.{dead['manager_id']}", int(tid))]
    assert queue_bodies(project, "weft.spawn.requests") == []
    assert log_events(project, tid) == []

    # A client waiting for the result starts a new manager, which gives the claim back.
    r = weft("result", tid, "--timeout", "30")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["status"] == "completed" and data["output"] == "once\n"
    names = [e["event"] for e in log_events(project, tid)]
    assert names == ["task_initialized", "work_started", "work_completed"]  # exactly once
    assert _claimed(project) == []
    assert dead["manager_id"] not in {e["manager_id"] for e in _registry(project)}
    assert_integrity(weft, project)


# -- 3. a task process dies mid-work -----------------------------------------------------


@pytest.mark.parametrize("policy", ["keep", "requeue"])
def test_task_process_sigkill_mid_work(weft: Weft, project: Path, policy: str) -> None:
    marker = project / "marker"
    script = f'if [ -e "{marker}" ]; then echo second; else touch "{marker}"; exec sleep 60; fi'
    r = weft("run", "--no-wait", "--reserved-policy", policy, "sh", "-c", script)
    tid = r.stdout.strip()
    started = wait_for(lambda: _event(project, tid, "work_started"), 30, "the task to start")
    wait_for(marker.exists, 10, "the first attempt to mark its start")
    killed_at = time.time_ns()
    os.kill(started["task_pid"], signal.SIGKILL)
    failed = wait_for(lambda: _event(project, tid, "work_failed"), 5, "the failure to be logged")
    assert failed["timestamp"] - killed_at < 2e9, failed
    assert failed["error"] == "task process killed by SIGKILL", failed
    wait_for(lambda: _gone(started["target_pid"]), 5, "the orphaned target to be ended")

    began = time.monotonic()
    r = weft("result", tid, "--timeout", "30")
    assert time.monotonic() - began < 15
    assert r.stdout, (r.returncode, r.stderr, log_events(project, tid))
    data = json.loads(r.stdout)
    names = [e["event"] for e in log_events(project, tid)]
    if policy == "keep":
        assert r.returncode == 1 and data["status"] == "failed", (data, names)
        assert "SIGKILL" in data["error"]
        (kept,) = queue_bodies(project, f"T{tid}.reserved")  # kept for inspection
        assert json.loads(kept)["spec"]["process_target"] == ["sh", "-c", script]
        assert names == ["task_initialized", "work_started", "work_failed"], names
    else:
        assert r.returncode == 0 and data["output"] == "second\n"
        assert failed["requeued"] is True
        assert names.count("task_initialized") == 2 and names[-1] == "work_completed"
        assert queue_bodies(project, f"T{tid}.reserved") == []
    assert weft("run", "echo", "ok").stdout == "ok\n"
    assert_integrity(weft, project)


def test_queue_fed_task_killed_mid_item_requeues_the_item(weft: Weft, project: Path) -> None:
    """A serving task's in-flight input goes back to its input queue, not to the spawn queue."""
    marker = project / "marker"
    script = (
        f'read x; if [ -e "{marker}" ]; then echo "done $x"; else touch "{marker}"; sleep 60; fi'
    )
    spec = {
        "name": "server",
        "spec": {"process_target": ["sh", "-c", script], "reserved_policy": "requeue"},
        "io": {"inputs": {"in": "jobs.in"}, "outputs": {"out": "jobs.out"}},
    }
    (project / "server.json").write_text(json.dumps(spec))
    tid = weft("run", "--no-wait", "--spec", "server.json").stdout.strip()
    assert weft("queue", "write", "jobs.in", "a").returncode == 0
    started = wait_for(lambda: _event(project, tid, "work_started"), 30, "the server to start")
    wait_for(marker.exists, 15, "the first attempt at the item")
    os.kill(started["task_pid"], signal.SIGKILL)
    wait_for(lambda: queue_bodies(project, "jobs.out"), 15, "the item to be served again")
    assert queue_bodies(project, "jobs.out") == ["done a"]
    assert queue_bodies(project, "jobs.in") == []
    tids = {e["tid"] for e in log_events(project)}
    assert tids == {tid}  # the item was never taken for a spawn request
    assert not targets_of(tid)  # the first attempt's orphaned target was ended
    assert weft("task", "stop", tid).returncode == 0
    assert json.loads(weft("result", tid, "--timeout", "30").stdout)["status"] == "stopped"
    assert_integrity(weft, project)


# -- 4. many clients at once -------------------------------------------------------------


@pytest.mark.timeout(300)
def test_800_tasks_from_8_concurrent_clients(weft: Weft, project: Path) -> None:
    began = time.monotonic()
    clients = [weft.start("-c", SUBMIT_MANY, "100", cwd=project) for _ in range(8)]
    tids: list[str] = []
    try:
        for proc in clients:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            tids.extend(json.loads(out))
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
    submitted = time.monotonic() - began
    assert len(tids) == 800 and len(set(tids)) == 800
    wait_for(lambda: _count_events(project, "work_completed") >= 800, 240, "800 tasks to complete")
    ran = time.monotonic() - began
    got = _python(weft, RESULTS, json.dumps(tids), "30", timeout=120)
    assert set(got) == set(tids)
    assert all(result["status"] == "completed" for result in got.values())
    events = log_events(project)
    initialized = Counter(e["tid"] for e in events if e["event"] == "task_initialized")
    assert set(initialized) == set(tids) and set(initialized.values()) == {1}
    assert Counter(e["event"] for e in events)["work_completed"] == 800
    assert queue_bodies(project, "weft.spawn.requests") == [] and _claimed(project) == []
    assert len(_registry(project)) == 1  # one manager survived the race of 8 clients
    print(f"\n800 tasks: submitted in {submitted:.1f}s, all completed after {ran:.1f}s")
    assert_integrity(weft, project)


def test_four_processes_share_one_queue(weft: Weft, project: Path) -> None:
    count = 500
    workers = [weft.start("-c", QUEUE_WORKER, str(n), str(count), cwd=project) for n in range(4)]
    got: list[str] = []
    try:
        wait_for(lambda: all((project / f"ready-{n}").exists() for n in range(4)), 30, "ready")
        (project / "go").touch()  # all four start writing and reading at once
        for proc in workers:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
            got.extend(json.loads(out))
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
    expected = [f"{n}-{i}" for n in range(4) for i in range(count)]
    assert len(got) == len(expected)  # no duplicate delivery ...
    assert sorted(got) == sorted(expected)  # ... and nothing lost
    assert queue_bodies(project, "shared") == []
    assert_integrity(weft, project)
