"""Live tasks through the real CLI: control, streaming, interactive, queue-fed, autostart, spill."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

from tests.conftest import Weft
from tests.helpers import log_events, queue_bodies, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples" / "chain"


def _started(project: Path, tid: str) -> dict:
    found = wait_for(
        lambda: [e for e in log_events(project, tid) if e["event"] == "work_started"],
        20,
        "work_started",
    )
    return found[0]


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_pause_resume_stop_and_ctrl_queues(weft: Weft, project: Path) -> None:
    ticks = project / "ticks"
    script = f"while true; do echo x >> {ticks}; sleep 0.05; done"
    tid = weft("run", "--no-wait", "sh", "-c", script).stdout.strip()
    target_pid = _started(project, tid)["target_pid"]
    wait_for(lambda: ticks.exists() and ticks.stat().st_size > 0, 10, "ticks")

    r = weft("task", "pause", tid, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "paused"
    wait_for(
        lambda: all(p.status() == psutil.STATUS_STOPPED for p in _tree(target_pid)), 5, "stopped"
    )
    size = ticks.stat().st_size
    status = json.loads(weft("status", tid, "--json").stdout)
    assert status["status"] == "paused"
    assert ticks.stat().st_size == size  # nothing ran while paused

    assert json.loads(weft("task", "resume", tid, "--json").stdout)["status"] == "running"
    wait_for(lambda: ticks.stat().st_size > size, 10, "ticks after resume")

    # The same through the queues: a JSON message in, the answer on ctrl_out.
    assert weft("queue", "write", f"T{tid}.ctrl_in", '{"command": "PING"}').returncode == 0
    reply = wait_for(lambda: queue_bodies(project, f"T{tid}.ctrl_out"), 10, "PING reply")
    assert json.loads(reply[0])["command"] == "PING" and json.loads(reply[0])["ok"] is True

    assert weft("task", "stop", tid).returncode == 0
    result = json.loads(weft("result", tid, "--timeout", "15").stdout)
    assert result["status"] == "stopped"
    wait_for(
        lambda: (
            not psutil.pid_exists(target_pid)
            or psutil.Process(target_pid).status() == psutil.STATUS_ZOMBIE
        ),
        10,
    )
    names = [e["event"] for e in log_events(project, tid)]
    for name in ("control_pause", "control_resume", "control_ping", "control_stop"):
        assert name in names


def test_kill_is_immediate_and_stop_is_graceful(weft: Weft, project: Path) -> None:
    graceful = "trap 'echo cleaned up; exit 0' TERM; while true; do sleep 0.1; done"
    tid = weft("run", "--no-wait", "sh", "-c", graceful).stdout.strip()
    _started(project, tid)
    weft("task", "stop", tid)
    result = json.loads(weft("result", tid, "--timeout", "15").stdout)
    assert result["status"] == "stopped" and "cleaned up" in result["output"]

    stubborn = "trap '' TERM; while true; do sleep 0.1; done"
    tid = weft("run", "--no-wait", "sh", "-c", stubborn).stdout.strip()
    _started(project, tid)
    weft("task", "kill", tid)
    result = json.loads(weft("result", tid, "--timeout", "15").stdout)
    assert result["status"] == "killed" and result["return_code"] == 137
    assert weft("task", "ping", tid).returncode == 2  # no longer running


def test_stream_output_arrives_while_running(weft: Weft, project: Path) -> None:
    script = "for i in 1 2 3; do date +%s.%N; sleep 1; done"
    proc = weft.start("-m", "weft", "run", "--stream-output", "sh", "-c", script, cwd=project)
    assert proc.stdout is not None
    lags = []
    for _ in range(3):
        line = proc.stdout.readline()
        lags.append(time.time() - float(line))
    assert proc.wait(timeout=30) == 0
    # Each line reaches the terminal soon after the task printed it (target: 0.5 s; the
    # margin allows for a loaded shared machine).
    assert max(lags) < 1.0, lags


def test_result_stream(weft: Weft, project: Path) -> None:
    tid = weft(
        "run", "--no-wait", "--stream-output", "sh", "-c", "echo one; sleep 0.5; echo two"
    ).stdout.strip()
    r = weft("result", tid, "--stream", "--timeout", "30")
    assert r.returncode == 0 and r.stdout == "one\ntwo\n"


def test_interactive_line_by_line(weft: Weft, project: Path) -> None:
    r = weft("run", "-i", "cat", input="hello\nworld\n")
    assert r.returncode == 0 and r.stdout == "hello\nworld\n"
    script = "read a; echo got $a; read b || echo eof-seen"
    r = weft("run", "-i", "sh", "-c", script, input="first\n")
    assert r.stdout == "got first\neof-seen\n"


def test_extract_transform_load_chain(weft: Weft, project: Path) -> None:
    for name in ("extract.json", "transform.json", "load.json"):
        shutil.copy(EXAMPLES / name, project / name)
    transform = weft("run", "--spec", "transform.json", "--no-wait").stdout.strip()
    load = weft("run", "--spec", "load.json", "--no-wait").stdout.strip()
    r = weft("run", "--spec", "extract.json")
    assert r.returncode == 0, r.stderr
    loaded = project / "loaded.txt"
    wait_for(lambda: loaded.exists() and loaded.read_text().count("\n") >= 3, 30, "the chain")
    assert loaded.read_text().split() == ["ALPHA", "BETA", "GAMMA"]
    for tid in (transform, load):
        assert weft("task", "stop", tid).returncode == 0
        result = json.loads(weft("result", tid, "--timeout", "15").stdout)
        assert result["status"] == "stopped" and "served 3 message(s), 0 failed" in result["output"]
        assert queue_bodies(project, f"T{tid}.reserved") == []


def test_queue_fed_function_and_failed_item_policy(weft: Weft, project: Path) -> None:
    (project / "svc.py").write_text(
        "def double(text):\n"
        "    if text == 'bad':\n"
        "        raise ValueError('bad input')\n"
        "    return int(text) * 2\n"
    )
    spec = {
        "spec": {"type": "function", "function_target": "svc:double", "reserved_policy": "keep"},
        "io": {"inputs": {"n": "numbers"}, "outputs": {"out": "doubled"}},
    }
    (project / "svc.json").write_text(json.dumps(spec))
    tid = weft("run", "--spec", "svc.json", "--no-wait").stdout.strip()
    for body in ("1", "bad", "21"):
        weft("queue", "write", "numbers", body)
    wait_for(lambda: len(queue_bodies(project, "doubled")) == 2, 30, "two results")
    assert queue_bodies(project, "doubled") == ["2", "42"]
    assert queue_bodies(project, f"T{tid}.reserved")[-1] == "bad"  # keep: left for inspection
    weft("task", "stop", tid)
    result = json.loads(weft("result", tid, "--timeout", "15").stdout)
    assert "served 2 message(s), 1 failed" in result["output"]


def test_autostart_once_and_switches(weft: Weft, project: Path) -> None:
    template = {
        "name": "heartbeat",
        "spec": {"type": "command", "process_target": ["sleep", "60"], "timeout": None},
    }
    (project / ".weft" / "autostart" / "heartbeat.json").write_text(json.dumps(template))

    def running_copies() -> list[dict]:
        data = json.loads(weft("status", "--json").stdout)
        return [t for t in data["tasks"] if t["name"] == "heartbeat" and t["status"] == "running"]

    assert weft("run", "--no-autostart", "echo", "a").returncode == 0
    assert running_copies() == []
    weft("manager", "stop")
    assert weft("run", "echo", "b", env={"WEFT_AUTOSTART_TASKS": "false"}).returncode == 0
    assert running_copies() == []
    weft("manager", "stop")
    assert weft("run", "echo", "c").returncode == 0
    first = wait_for(running_copies, 20, "the autostart task")
    # A second manager start (after a stop that leaves the task running) must not start it twice.
    weft("manager", "stop", "--timeout", "1")
    assert weft("run", "echo", "d").returncode == 0
    assert [t["tid"] for t in running_copies()] == [first[0]["tid"]] or len(running_copies()) == 1
    weft("task", "kill", running_copies()[0]["tid"])


def test_large_output_spills_and_round_trips(weft: Weft, project: Path) -> None:
    size = 50 * 1024 * 1024
    make = f"import sys; sys.stdout.write(('0123456789abcdef' * 4 + '\\n') * ({size} // 65))"
    expected = ("0123456789abcdef" * 4 + "\n") * (size // 65)
    r = subprocess.run(
        [sys.executable, "-m", "weft", "run", sys.executable, "-c", make],
        cwd=project,
        env=weft.env,
        capture_output=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-500:]
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(expected.encode()).hexdigest()
    assert list((project / ".weft" / "outputs").iterdir()) == []  # read once, then removed
    tid = weft("run", "--no-wait", sys.executable, "-c", make).stdout.strip()
    peek = subprocess.run(
        [sys.executable, "-m", "weft", "result", tid, "--timeout", "60", "--peek"],
        cwd=project,
        env=weft.env,
        capture_output=True,
        timeout=120,
        text=True,
    )
    data = json.loads(peek.stdout)
    assert data["output"] == expected and data["output_bytes"] == len(expected)
    assert len(list((project / ".weft" / "outputs").iterdir())) == 1
    outbox = queue_bodies(project, f"T{tid}.outbox")
    assert len(outbox) == 1 and len(outbox[0]) < 10_000  # the outbox holds a reference


def test_queue_fed_pause_and_clean_stop(weft: Weft, project: Path) -> None:
    spec = {
        "spec": {"type": "command", "process_target": ["cat"]},
        "io": {"inputs": {"in": "p.in"}, "outputs": {"out": "p.out"}},
    }
    (project / "p.json").write_text(json.dumps(spec))
    tid = weft("run", "--spec", "p.json", "--no-wait").stdout.strip()
    _started(project, tid)
    assert json.loads(weft("task", "pause", tid, "--json").stdout)["status"] == "paused"
    weft("queue", "write", "p.in", "held")
    ping = json.loads(weft("task", "ping", tid, "--json").stdout)  # a full loop has run since
    assert ping["status"] == "paused"
    assert queue_bodies(project, "p.in") == ["held"] and queue_bodies(project, "p.out") == []
    weft("task", "resume", tid)
    wait_for(lambda: queue_bodies(project, "p.out") == ["held"], 15, "the held message")
    weft("task", "stop", tid)
    r = weft("result", tid, "--timeout", "15")
    assert r.returncode == 0 and json.loads(r.stdout)["return_code"] == 0


def test_result_stream_of_a_task_that_did_not_stream(weft: Weft, project: Path) -> None:
    tid = weft("run", "--no-wait", "echo", "plain").stdout.strip()
    r = weft("result", tid, "--stream", "--timeout", "30")
    assert r.returncode == 0 and r.stdout == "plain\n"
    slow = weft("run", "--no-wait", "--stream-output", "sleep", "10").stdout.strip()
    r = weft("result", slow, "--stream", "--timeout", "0.5")
    assert r.returncode == 124
    weft("task", "kill", slow)
