"""Task processes kept warm between tasks (``weft/task_pool.py``): reused for the next task,
retired when idle, replaced when they die, and switched off with a setting."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Weft
from tests.helpers import log_events, queue_bodies, wait_for

pytestmark = pytest.mark.timeout(120)

JOBS = """
def post(queue, text):
    from weft.client import WeftClient

    with WeftClient.open() as client:
        client.queue.write(queue, text)
    return text
"""


def _titled(project: Path, suffix: str) -> list[psutil.Process]:
    """This project's processes whose title ends with ``suffix`` (e.g. ``:task:idle``)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            title = " ".join(proc.info["cmdline"] or []).rstrip()  # titles are padded
            ours = title.startswith(f"weft-{project.name}-") and title.endswith(suffix)
            if ours and proc.cwd() == str(project.resolve()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _run(weft: Weft, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    r = weft("run", "--json", *args, env=env)
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    assert result["status"] == "completed", result
    return result


def _task_pid(project: Path, tid: str) -> int:
    started = [e for e in log_events(project, tid) if e["event"] == "work_started"]
    return int(started[0]["task_pid"])


def _wait_idle(project: Path, tid: str) -> psutil.Process:
    found = wait_for(
        lambda: _titled(project, f"{tid[-10:]}:task:idle"), 15, "the task process to go idle"
    )
    return found[0]


def test_a_finished_task_process_runs_the_next_task(weft: Weft, project: Path) -> None:
    (project / "jobs.py").write_text(textwrap.dedent(JOBS))
    first = _run(weft, "echo", "one")
    idle = _wait_idle(project, first["tid"])
    assert idle.pid == _task_pid(project, first["tid"])
    second = _run(weft, "echo", "two")
    assert second["output"] == "two\n"
    assert _task_pid(project, second["tid"]) == idle.pid
    # A function after a command: the process closes its broker connection before it forks
    # its function helper, so the function can use Weft itself; a second function reuses it.
    _wait_idle(project, second["tid"])
    third = _run(weft, "--function", "jobs:post", "--arg", "notes", "--arg", "warm")
    assert third["output"] == "warm"
    _wait_idle(project, third["tid"])
    fourth = _run(weft, "--function", "jobs:post", "--arg", "notes", "--arg", "again")
    assert fourth["output"] == "again"
    assert {_task_pid(project, t["tid"]) for t in (third, fourth)} == {idle.pid}
    assert queue_bodies(project, "notes") == ["warm", "again"]


def test_zero_warm_processes_means_a_process_per_task(weft: Weft, project: Path) -> None:
    env = {"WEFT_WARM_TASK_PROCESSES": "0"}
    first = _run(weft, "echo", "one", env=env)
    second = _run(weft, "echo", "two", env=env)
    assert _task_pid(project, first["tid"]) != _task_pid(project, second["tid"])
    wait_for(lambda: not _titled(project, ":task:idle"), 15, "no task process left waiting")


def test_idle_task_processes_are_retired(weft: Weft, project: Path) -> None:
    env = {"WEFT_WARM_TASK_IDLE_SECONDS": "0.5"}
    done = _run(weft, "echo", "one", env=env)
    pid = _task_pid(project, done["tid"])
    wait_for(lambda: not psutil.pid_exists(pid), 15, "the idle task process to be retired")
    assert _titled(project, ":manager:idle"), "the manager itself stays"
    assert _run(weft, "echo", "two", env=env)["output"] == "two\n"


def test_a_dead_idle_task_process_is_replaced(weft: Weft, project: Path) -> None:
    first = _run(weft, "echo", "one")
    idle = _wait_idle(project, first["tid"])
    os.kill(idle.pid, signal.SIGKILL)
    second = _run(weft, "echo", "two")
    assert second["output"] == "two\n"
    assert _task_pid(project, second["tid"]) != idle.pid


def test_a_dead_function_helper_is_replaced(weft: Weft, project: Path) -> None:
    (project / "jobs.py").write_text(textwrap.dedent(JOBS))
    first = _run(weft, "--function", "jobs:post", "--arg", "notes", "--arg", "one")
    idle = _wait_idle(project, first["tid"])
    helpers = [p for p in _titled(project, ":task:functions") if p.ppid() == idle.pid]
    assert len(helpers) == 1
    helper = helpers[0]
    helper.kill()
    # Not our child: it stays a zombie until the task process next looks at it.
    wait_for(lambda: helper.status() == psutil.STATUS_ZOMBIE, 10, "the helper to die")
    for text in ("two", "three"):
        done = _run(weft, "--function", "jobs:post", "--arg", "notes", "--arg", text)
        assert done["output"] == text
        assert _task_pid(project, done["tid"]) == idle.pid
        _wait_idle(project, done["tid"])
    assert queue_bodies(project, "notes") == ["one", "two", "three"]
    assert [p for p in _titled(project, ":task:functions") if p.ppid() == idle.pid]
