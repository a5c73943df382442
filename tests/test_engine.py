"""The execution engine through the real CLI: run, result, status, the manager, the log."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from tests.conftest import Weft
from tests.helpers import log_events, queue_bodies, wait_for

SEED_FIELDS = {
    "event",
    "tid",
    "tid_short",
    "status",
    "timestamp",
    "taskspec",
    "task_pid",
    "return_code",
}


def _manager_pids(root: Path) -> list[int]:
    """Live managers of this project (by title, and by the project in their environment)."""
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if not (cmd.startswith(f"weft-{root.name}-") and ":manager:" in cmd):
                continue
            # setproctitle overwrites /proc/PID/environ; managers run in their project dir.
            if proc.cwd() == str(root.resolve()):
                pids.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


def _titles(prefix: str) -> list[str]:
    out = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or []).strip()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if cmd.startswith(prefix):
            out.append(cmd)
    return out


def test_run_prints_output_only(weft: Weft, project: Path) -> None:
    r = weft("run", "echo", "hello world")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "hello world\n"
    assert r.stderr == ""


def test_run_passes_through_stderr_and_exit_code(weft: Weft, project: Path) -> None:
    r = weft("run", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")


def test_run_creates_project_when_none(weft: Weft, workdir: Path) -> None:
    r = weft("run", "echo", "hi")
    assert r.returncode == 0 and r.stdout == "hi\n"
    assert (workdir / ".weft" / "broker.db").exists()
    assert r.stderr.count("\n") == 1 and "created a new project" in r.stderr


def test_every_transition_is_logged_with_seed_fields(weft: Weft, project: Path) -> None:
    r = weft("run", "--no-wait", "echo", "x")
    tid = r.stdout.strip()
    assert len(tid) == 19 and tid.isdigit()
    assert weft("result", tid, "--timeout", "30").returncode == 0
    events = log_events(project, tid)
    names = [e["event"] for e in events]
    assert names == ["task_initialized", "work_started", "work_completed"]
    for e in events:
        assert e.keys() >= SEED_FIELDS
        assert e["tid_short"] == tid[-10:]
        assert e["taskspec"]["spec"]["process_target"] == ["echo", "x"]
    assert events[-1]["return_code"] == 0 and events[-1]["status"] == "completed"
    assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)


def test_no_wait_then_result_short_tid_peek_and_consumed(weft: Weft, project: Path) -> None:
    tid = weft("run", "--no-wait", "echo", "later").stdout.strip()
    short = tid[-10:]
    peeked = weft("result", short, "--peek", "--timeout", "30")
    assert peeked.returncode == 0, peeked.stderr
    data = json.loads(peeked.stdout)
    assert data["tid"] == tid and data["status"] == "completed"
    assert data["return_code"] == 0 and data["output"] == "later\n"
    again = weft("result", tid[-7:])  # a 7-digit suffix is enough when unique
    assert json.loads(again.stdout)["output"] == "later\n"
    gone = weft("result", short, "--timeout", "5")
    assert gone.returncode == 2
    assert "already read" in gone.stderr and gone.stderr.count("\n") == 1


def test_result_timeout_and_unknown(weft: Weft, project: Path) -> None:
    tid = weft("run", "--no-wait", "sleep", "30").stdout.strip()
    r = weft("result", tid, "--timeout", "0.5")
    assert r.returncode == 124 and "still" in r.stderr
    assert weft("task", "kill", tid).returncode == 0
    unknown = weft("result", "1234567890123456789", "--timeout", "1")
    assert unknown.returncode == 2 and "no task" in unknown.stderr
    bad = weft("result", "12ab")
    assert bad.returncode == 2 and "TID" in bad.stderr


def test_result_all(weft: Weft, project: Path) -> None:
    tids = [weft("run", "--no-wait", "echo", str(i)).stdout.strip() for i in range(3)]
    for tid in tids:
        weft("result", tid, "--peek", "--timeout", "30")
    r = weft("result", "--all", "--peek")
    got = {json.loads(line)["tid"] for line in r.stdout.splitlines()}
    assert set(tids) <= got
    r = weft("result", "--all")
    assert {json.loads(line)["tid"] for line in r.stdout.splitlines()} == got
    assert weft("result", "--all").stdout == ""


def test_timeout_ends_whole_tree(weft: Weft, project: Path) -> None:
    r = weft("run", "--timeout", "1", "sh", "-c", "sleep 31.25 & sleep 31.25; echo never")
    assert r.returncode == 124
    assert "timed out" in r.stderr
    wait_for(lambda: not _titles("sleep 31.25"), 10, "the task's process tree to end")
    tid_events = [e for e in log_events(project) if e["event"] == "work_timeout"]
    assert tid_events and tid_events[-1]["status"] == "timeout"


def test_env_tag_name_and_json(weft: Weft, project: Path) -> None:
    r = weft(
        "run",
        "--env",
        "GREETING=hi there",
        "--tag",
        "team=ml",
        "--name",
        "greeter",
        "--json",
        "sh",
        "-c",
        'echo "$GREETING"',
    )
    data = json.loads(r.stdout)
    assert data["output"] == "hi there\n" and data["status"] == "completed"
    events = log_events(project, data["tid"])
    assert events[0]["taskspec"]["name"] == "greeter"
    assert events[0]["taskspec"]["metadata"]["tags"] == ["team=ml"]


def test_usage_errors_write_nothing(weft: Weft, project: Path) -> None:
    for args in (
        ["run"],
        ["run", "--cpu", "0", "true"],
        ["run", "--cpu", "150", "true"],
        ["run", "--timeout", "-1", "true"],
        ["run", "--env", "NOEQUALS", "true"],
        ["run", "--arg", "1", "true"],
        ["run", ""],
    ):
        r = weft(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.strip() and r.stderr.strip().count("\n") == 0, (args, r.stderr)
    assert queue_bodies(project, "weft.spawn.requests") == []
    assert log_events(project) == []


def test_command_not_found(weft: Weft, project: Path) -> None:
    r = weft("run", "definitely-not-a-command-xyz")
    assert r.returncode == 127 and "command not found" in r.stderr


def test_function_tasks(weft: Weft, project: Path) -> None:
    (project / "jobs.py").write_text(
        textwrap.dedent(
            """
            import os

            def add(a, b, scale=1):
                return (a + b) * int(scale)

            def boom():
                raise ValueError("boom")

            def fds():
                found = []
                for fd in os.listdir("/proc/self/fd"):
                    try:
                        found.append(os.readlink(f"/proc/self/fd/{fd}"))
                    except OSError:
                        pass
                return found

            def bail():
                os._exit(3)

            def post(queue, text):
                from weft.client import WeftClient

                with WeftClient.open() as client:
                    return client.queue.write(queue, text)
            """
        )
    )
    r = weft("run", "--function", "jobs:add", "--arg", "2", "--arg", "3", "--kw", "scale=10")
    assert (r.returncode, r.stdout) == (0, "50\n"), r.stderr
    r = weft("run", "--function", "jobs:boom")
    assert r.returncode == 1 and "ValueError: boom" in r.stderr
    tb_event = log_events(project)[-1]
    assert tb_event["event"] == "work_failed" and "ValueError: boom" in tb_event["error"]
    r = weft("run", "--function", "jobs:fds", "--json")
    fds = json.loads(r.stdout)["output"]
    assert not [f for f in fds if "broker.db" in f], fds
    r = weft("run", "--function", "jobs:bail")
    assert r.returncode == 3 and "without returning" in r.stderr
    # A function may use Weft itself: no SQLite state of the task process crosses the fork.
    r = weft("run", "--function", "jobs:post", "--arg", "notes", "--arg", "from a task")
    assert r.returncode == 0, r.stderr
    assert queue_bodies(project, "notes") == ["from a task"]
    r = weft("run", "--function", "nosuchmodule:f")
    assert r.returncode == 1 and "nosuchmodule" in r.stderr


def test_spec_file_wait(weft: Weft, project: Path) -> None:
    spec = {
        "name": "from-file",
        "spec": {"type": "command", "process_target": ["echo", "spec ok"], "timeout": 30},
        "metadata": {"tags": ["x"]},
    }
    (project / "task.json").write_text(json.dumps(spec))
    r = weft("run", "--spec", "task.json", "--wait")
    assert r.returncode == 0 and r.stdout == "spec ok\n"
    assert r.stderr.startswith("Task completed: ") and len(r.stderr.split()[-1]) == 19
    (project / "bad.json").write_text(
        '{"spec": {"type": "command", "process_target": ["x"], "oops": 1}}'
    )
    r = weft("run", "--spec", "bad.json")
    assert r.returncode == 2 and "spec.oops: unknown field" in r.stderr


def test_status_summary_task_detail_and_agreement_with_log(weft: Weft, project: Path) -> None:
    weft("run", "true")
    weft("run", "false")
    running = weft("run", "--no-wait", "--name", "sleeper", "sleep", "30").stdout.strip()
    wait_for(lambda: any(e["event"] == "work_started" for e in log_events(project, running)))
    r = weft("status")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Manager: Running (PID ") and lines[0].endswith(
        "idle timeout: 600s)"
    )
    assert lines[1] == "Tasks: 3 total (1 running, 1 completed, 1 failed)"
    assert running[-10:] in r.stdout
    detail = weft("status", running[-10:]).stdout
    assert "sleeper" in detail and "running" in detail and "sleep 30" in detail
    data = json.loads(weft("status", "--all", "--json").stdout)
    by_tid: dict[str, str] = {}
    for event in log_events(project):  # fold the raw log ourselves
        by_tid[event["tid"]] = event["status"]
    assert {t["tid"]: t["status"] for t in data["tasks"]} == by_tid
    one = json.loads(weft("status", running, "--json").stdout)
    assert one["status"] == "running" and one["task_pid"] > 0
    assert weft("task", "stop", running).returncode == 0
    final = wait_for(
        lambda: (
            json.loads(weft("status", running, "--json").stdout)["status"] in ("stopped",) and True
        )
    )
    assert final


def test_process_titles(weft: Weft, project: Path) -> None:
    tid = weft("run", "--no-wait", "--name", "napper", "sleep", "30").stdout.strip()
    title = f"weft-{project.name}-{tid[-10:]}:napper:running"
    wait_for(lambda: _titles(title), 15, "the task's process title")
    assert _titles(f"weft-{project.name}-") and any(":manager:busy" in t for t in _titles("weft-"))
    weft("task", "kill", tid)
    wait_for(lambda: not _titles(title), 15, "the task to end")


def test_crashing_targets_are_failures_and_manager_carries_on(weft: Weft, project: Path) -> None:
    r = weft("run", sys.executable, "-c", "import ctypes; ctypes.string_at(0)")
    assert r.returncode == 139 and "SIGSEGV" in r.stderr
    r = weft("run", sys.executable, "-c", "import os; os._exit(7)")
    assert r.returncode == 7
    # Kill the task process itself: the manager records the failure.
    tid = weft("run", "--no-wait", "sleep", "30").stdout.strip()
    started = wait_for(
        lambda: [e for e in log_events(project, tid) if e["event"] == "work_started"]
    )
    os.kill(started[0]["task_pid"], signal.SIGKILL)
    res = weft("result", tid, "--timeout", "10")
    data = json.loads(res.stdout)
    assert data["status"] == "failed" and "SIGKILL" in data["error"]
    assert weft("run", "echo", "still fine").stdout == "still fine\n"


def test_one_manager_for_ten_concurrent_runs(weft: Weft, workdir: Path) -> None:
    assert weft("init").returncode == 0
    procs = [weft.start("-m", "weft", "run", "echo", str(i), cwd=workdir) for i in range(10)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert sorted(o for o, _ in outs) == sorted(f"{i}\n" for i in range(10))
    assert all(p.returncode == 0 for p in procs)
    wait_for(lambda: len(_manager_pids(workdir)) == 1, 15, "exactly one manager")
    status = json.loads(weft("status", "--json").stdout)
    assert len(status["managers"]) == 1


# Submits 30 tasks at once to a project with no manager, then counts the managers this
# client started (its children), then waits for every result.
BURST = """
import json, psutil
from weft.client import WeftClient
with WeftClient.open(".") as c:
    tids = [c.submit({"spec": {"type": "command", "process_target": ["true"]}})
            for _ in range(30)]
    started = len(psutil.Process().children())
    done = [c.result(t, timeout=60)["status"] for t in tids]
print(json.dumps({"started": started, "done": done}))
"""


def test_a_burst_of_submits_starts_one_manager(weft: Weft, project: Path) -> None:
    proc = weft.start("-c", BURST, cwd=project)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["started"] == 1
    assert report["done"] == ["completed"] * 30


# A long-lived client (the MCP server) waits for result after result: it must not keep a
# queue handle per task. Prints how many handles its broker holds after 20 tasks.
MANY_RESULTS = """
import json
from weft.client import WeftClient
with WeftClient.open(".") as c:
    for i in range(20):
        c.result(c.run(["echo", str(i)]), timeout=60)
    print(json.dumps(len(c.broker._queues)))
"""


def test_a_client_keeps_no_handle_per_task(weft: Weft, project: Path) -> None:
    proc = weft.start("-c", MANY_RESULTS, cwd=project)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert json.loads(out) <= 2


def test_manager_idle_exit_and_no_reuse(weft: Weft, project: Path) -> None:
    env = {"WEFT_MANAGER_LIFETIME_TIMEOUT": "1"}
    assert weft("run", "echo", "a", env=env).returncode == 0
    wait_for(
        lambda: weft("manager", "status").stdout.strip() == "Manager: Stopped", 20, "idle exit"
    )
    assert queue_bodies(project, "weft.workers.registry") == []
    env = {"WEFT_MANAGER_REUSE_ENABLED": "false"}
    assert weft("run", "echo", "b", env=env).returncode == 0
    wait_for(lambda: not _manager_pids(project), 20, "the manager to exit after its work")


def test_manager_start_status_stop(weft: Weft, project: Path) -> None:
    r = weft("manager", "start")
    assert r.returncode == 0 and r.stdout.startswith("Manager: Running (PID ")
    assert weft("manager", "status").stdout.startswith("Manager: Running")
    assert len(_manager_pids(project)) == 1
    # Clients wake it with SIGUSR1 after a submit; that must never end it.
    pid = _manager_pids(project)[0]
    os.kill(pid, signal.SIGUSR1)
    assert weft("run", "echo", "awake").stdout == "awake\n"
    assert _manager_pids(project) == [pid]
    r = weft("manager", "stop")
    assert r.returncode == 0
    assert not _manager_pids(project)
    assert weft("status").stdout.startswith("Manager: Stopped")


@pytest.mark.parametrize("policy", ["keep", "clear"])
def test_reserved_policy_on_failure(weft: Weft, project: Path, policy: str) -> None:
    r = weft("run", "--reserved-policy", policy, "--json", "false")
    tid = json.loads(r.stdout)["tid"]
    reserved = queue_bodies(project, f"T{tid}.reserved")
    if policy == "keep":
        assert len(reserved) == 1 and json.loads(reserved[0])["spec"]["process_target"] == ["false"]
    else:
        assert reserved == []


def test_reserved_policy_requeue_runs_again(weft: Weft, project: Path) -> None:
    marker = project / "marker"
    script = f"if [ -e {marker} ]; then echo second; else touch {marker}; exit 1; fi"
    r = weft("run", "--reserved-policy", "requeue", "--json", "sh", "-c", script)
    data = json.loads(r.stdout)
    assert data["output"] == "second\n" and data["status"] == "completed"
    names = [e["event"] for e in log_events(project, data["tid"])]
    assert names.count("work_failed") == 1 and names[-1] == "work_completed"


def test_success_deletes_reserved_and_cleanup_on_exit(weft: Weft, project: Path) -> None:
    tid = weft("run", "--no-wait", "--cleanup", "echo", "bye").stdout.strip()
    wait_for(lambda: any(e["status"] == "completed" for e in log_events(project, tid)))
    for suffix in ("reserved", "inbox", "ctrl_in", "ctrl_out"):
        assert queue_bodies(project, f"T{tid}.{suffix}") == []
    assert len(queue_bodies(project, f"T{tid}.outbox")) == 1  # the unread result stays
    assert json.loads(weft("result", tid).stdout)["output"] == "bye\n"


def test_requeue_gives_up_after_the_limit(weft: Weft, project: Path) -> None:
    r = weft("run", "--reserved-policy", "requeue", "--json", "false", timeout=60)
    data = json.loads(r.stdout)
    assert data["status"] == "failed" and r.returncode == 1
    runs = [e for e in log_events(project, data["tid"]) if e["event"] == "work_started"]
    assert len(runs) == 4  # the first run and three requeues (WEFT_MAX_REQUEUES)
    assert len(queue_bodies(project, f"T{data['tid']}.reserved")) == 1  # then kept


def test_run_usage_messages(weft: Weft, project: Path) -> None:
    r = weft("run")
    assert r.returncode == 2 and "nothing to run" in r.stderr
    (project / "t.json").write_text('{"spec": {"process_target": ["true"]}}')
    r = weft("run", "--spec", "t.json", "--timeout", "1", "--name", "x")
    assert r.returncode == 2 and "--timeout, --name cannot be combined with --spec" in r.stderr
    r = weft("run", "-i", "--function", "m:f")
    assert r.returncode == 2 and "--interactive" in r.stderr
    r = weft("run", "echo", "x", env={"WEFT_MANAGER_REUSE_ENABLED": "maybe"})
    assert r.returncode == 2 and "WEFT_MANAGER_REUSE_ENABLED" in r.stderr
    assert queue_bodies(project, "weft.spawn.requests") == []


def test_loaded_copy_starts_its_own_manager(weft: Weft, project: Path, tmp_path: Path) -> None:
    assert weft("run", "echo", "one").returncode == 0  # a manager runs and is registered
    dump = weft("dump")
    copy = tmp_path / "copy"
    copy.mkdir()
    assert weft("load", cwd=copy, input=dump.stdout).returncode == 0
    try:
        r = weft("run", "echo", "two", cwd=copy, timeout=60)
        assert r.returncode == 0 and r.stdout == "two\n"
        assert len(_manager_pids(project)) == 1  # the original's manager is untouched
    finally:
        weft("manager", "stop", cwd=copy)


def test_status_watch_redraws_until_ctrl_c(weft: Weft, project: Path) -> None:
    weft("run", "true")
    proc = weft.start("-m", "weft", "status", "--watch", cwd=project)
    assert proc.stdout is not None
    try:
        frames = 0
        while frames < 2:  # two redraws: it keeps going on its own
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            frames += line.count("Tasks: 1 total (1 completed)")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0 and "Traceback" not in err
