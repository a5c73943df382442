"""Bad input, through the real CLI: each gets one clear line on stderr and the right exit
code, the manager stays healthy (a following ``weft run echo ok`` works), and nothing that
was already stored is lost. docs/reliability.md points here for each claim.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Weft
from tests.helpers import log_events, queue_bodies, wait_for
from tests.test_durability import assert_integrity, targets_of

Check = Callable[[], None]


def one_line_error(r: object, code: int, *fragments: str) -> None:
    """Exit ``code``; stderr is one line starting 'weft: ' naming each fragment."""
    stderr = getattr(r, "stderr", "")
    assert getattr(r, "returncode", None) == code, (getattr(r, "returncode", None), stderr)
    assert stderr.startswith("weft: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


@pytest.fixture
def intact(weft: Weft, project: Path) -> Iterator[Check]:
    """Something stored before the bad input (a queue message, an unread result); the check
    that it survived, that no stray spawn request is left, and that a task still runs."""
    assert weft("queue", "write", "keep.q", "keep me").returncode == 0
    kept = weft("run", "--no-wait", "echo", "kept").stdout.strip()
    wait_for(lambda: queue_bodies(project, f"T{kept}.outbox"), 30, "the kept result")

    def check() -> None:
        assert queue_bodies(project, "keep.q") == ["keep me"]
        (result,) = queue_bodies(project, f"T{kept}.outbox")
        assert json.loads(result)["output"] == "kept\n"
        r = weft("run", "echo", "ok")
        assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
        assert queue_bodies(project, "weft.spawn.requests") == []

    yield check
    assert_integrity(weft, project)


def test_malformed_or_unknown_spec(weft: Weft, project: Path, intact: Check) -> None:
    before = len(log_events(project))
    cases = {
        '{"spec": ': "is not valid JSON",
        "": "is not valid JSON",
        "[1, 2]": "must be a JSON object",
        '{"spec": {"process_target": ["echo"]}, "bogus": 1}': "bogus: unknown field",
        '{"spec": {"process_target": ["echo"], "oops": true}}': "spec.oops: unknown field",
        '{"spec": {"process_target": "echo hi"}}': "spec.process_target",
        '{"spec": {"type": "shell", "process_target": ["echo"]}}': "spec.type",
        '{"spec": {"process_target": ["echo"], "timeout": -1}}': "spec.timeout",
        '{"name": "x"}': "spec: Field required",
    }
    for text, fragment in cases.items():
        (project / "t.json").write_text(text)
        one_line_error(weft("run", "--spec", "t.json"), 2, "t.json", fragment)
    one_line_error(weft("run", "--spec", "-", input=""), 2, "is not valid JSON")
    one_line_error(weft("run", "--spec", "missing.json"), 2, "cannot read --spec missing.json")
    assert len(log_events(project)) == before  # nothing was submitted
    intact()


def test_bad_request_written_straight_to_the_spawn_queue(
    weft: Weft, project: Path, intact: Check
) -> None:
    """Bypassing the client's validation: the task fails with a one-line reason, the request
    is kept in its reserved queue, and the manager carries on."""
    for body, reason in (
        ("garbage", "spawn request is not valid JSON"),
        ("", "spawn request is not valid JSON"),
        ('{"spec": {"process_target": []}}', "invalid spawn request: spec:"),
    ):
        r = weft("queue", "write", "weft.spawn.requests", body, "--json")
        tid = json.loads(r.stdout)["id"]
        r = weft("result", tid, "--timeout", "30")
        assert r.returncode == 1, r.stderr
        data = json.loads(r.stdout)
        assert data["status"] == "failed" and data["error"].startswith(reason)
        assert "\n" not in data["error"]
        assert queue_bodies(project, f"T{tid}.reserved") == [body]  # nothing lost
        assert log_events(project, tid)[-1]["event"] == "work_failed"
    intact()


def test_function_that_cannot_be_loaded(weft: Weft, project: Path, intact: Check) -> None:
    (project / "jobs.py").write_text("def f():\n    return 1\n")
    r = weft("run", "--function", "nosuchmodule:f")
    one_line_error(r, 1, "cannot import module 'nosuchmodule'")
    r = weft("run", "--function", "jobs:nope")
    one_line_error(r, 1, "module 'jobs' has no function 'nope'")
    r = weft("run", "--function", "not a target")
    one_line_error(r, 2, "is not of the form 'module:function'")
    intact()


def test_command_missing_or_not_executable(weft: Weft, project: Path, intact: Check) -> None:
    one_line_error(weft("run", "no-such-command-xyz"), 127, "command not found: no-such-command")
    (project / "script.sh").write_text("echo hi\n")  # no execute bit
    one_line_error(weft("run", "./script.sh"), 126, "command is not executable: ./script.sh")
    one_line_error(weft("run", str(project)), 126, "not executable")
    intact()


def test_invalid_or_unknown_tid(weft: Weft, project: Path, intact: Check) -> None:
    for command in (["result"], ["status"], ["task", "stop"], ["task", "ping"]):
        one_line_error(weft(*command, "12ab"), 2, "invalid TID '12ab'")
        one_line_error(weft(*command, "123"), 2, "too short")
        one_line_error(weft(*command, "1" * 20), 2, "longer than 19 digits")
        one_line_error(weft(*command, "1234567890123456789"), 2, "no task with TID")
    intact()


def test_invalid_queue_names(weft: Weft, project: Path, intact: Check) -> None:
    for args in (
        ["write", "bad name", "x"],
        ["write", ".hidden", "x"],
        ["write", "--", "-dash", "x"],
        ["read", "a/b"],
        ["peek", "q" * 600],
        ["move", "keep.q", "bad name"],
        ["move", "bad name", "keep.q"],
    ):
        one_line_error(weft("queue", *args), 2, "invalid queue name")
    one_line_error(weft("queue", "write", "@nosuch", "x"), 2, "no alias named 'nosuch'")
    listed = weft("queue", "list").stdout
    assert "bad" not in listed and "hidden" not in listed
    intact()


def test_message_over_the_size_limit(weft: Weft, project: Path, intact: Check) -> None:
    """BROKER_MAX_MESSAGE_SIZE is honoured by the CLI, the manager and its tasks alike."""
    assert weft("manager", "stop").returncode == 0
    weft.env["BROKER_MAX_MESSAGE_SIZE"] = str(64 * 1024)
    big = "x" * (70 * 1024)
    r = weft("queue", "write", "big.q", big)
    one_line_error(r, 2, "exceeds maximum allowed size", "BROKER_MAX_MESSAGE_SIZE")
    one_line_error(weft("queue", "write", "big.q", "-", input=big), 2, "exceeds maximum")
    r = weft("run", "echo", big)
    one_line_error(r, 2, "too big to store", "BROKER_MAX_MESSAGE_SIZE")
    assert queue_bodies(project, "big.q") == []
    # Output over the limit (even after JSON's escaping of undecodable bytes) is spilled to
    # .weft/outputs/ instead of lost; the result reads it back.
    r = weft("run", "python3", "-c", "print('y' * 200_000)")
    assert (r.returncode, r.stdout) == (0, "y" * 200_000 + "\n"), r.stderr
    r = weft("run", "--json", "python3", "-c", "import os; os.write(1, b'\\x80' * 20_000)")
    assert json.loads(r.stdout)["output"] == "\ufffd" * 20_000
    (project / "jobs.py").write_text(
        "def big():\n    print('o' * 70_000)\n    return [1] * 40_000\n"
    )
    r = weft("run", "--function", "jobs:big", "--json")
    data = json.loads(r.stdout)
    assert data["output"] == [1] * 40_000 and data["stdout"] == "o" * 70_000 + "\n"
    assert not list((project / ".weft" / "outputs").iterdir())  # read once, then removed
    intact()


def test_output_that_is_not_utf8(weft: Weft, project: Path, intact: Check) -> None:
    """Undecodable bytes become U+FFFD (the replacement character) in the stored result."""
    script = r"printf 'ok \377\376\n'; printf '\377err\n' >&2"
    r = weft("run", "--json", "sh", "-c", script)
    data = json.loads(r.stdout)
    assert r.returncode == 0 and data["status"] == "completed"
    assert data["output"] == "ok \ufffd\ufffd\n" and data["stderr"] == "\ufffderr\n"
    r = weft("run", "sh", "-c", script)
    assert (r.returncode, r.stdout, r.stderr) == (0, "ok \ufffd\ufffd\n", "\ufffderr\n")
    # Text that cannot be stored as UTF-8 (a raw byte in an argument) is refused up front.
    one_line_error(weft("run", "echo", "\udcff"), 2, "not valid UTF-8")
    one_line_error(weft("queue", "write", "keep.q", "\udcff"), 2, "UTF-8")
    intact()


def test_task_that_closes_stdout_early(weft: Weft, project: Path, intact: Check) -> None:
    r = weft("run", "sh", "-c", "exec 1>&-; echo late >&2; sleep 0.2; echo done >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "late\ndone\n")
    r = weft("run", "python3", "-c", "import os; os.close(1); print(1)")  # its own failure
    assert (r.returncode, r.stdout) == (1, "") and "Bad file descriptor" in r.stderr
    intact()


def test_task_that_leaves_a_daemon_child(weft: Weft, project: Path, intact: Check) -> None:
    """The target's whole session ends with the task: at completion, on STOP, on timeout."""
    began = time.monotonic()
    r = weft("run", "--json", "sh", "-c", "sleep 300 & echo started")
    data = json.loads(r.stdout)
    assert data["status"] == "completed" and data["output"] == "started\n"
    assert time.monotonic() - began < 4  # not held up by the child's copy of stdout
    assert not targets_of(data["tid"])
    tid = weft("run", "--no-wait", "sh", "-c", "sleep 301 & sleep 302").stdout.strip()
    wait_for(lambda: len(targets_of(tid)) == 3, 30, "the task's three processes")
    assert weft("task", "stop", tid).returncode == 0
    wait_for(lambda: not targets_of(tid), 10, "the whole tree to end on STOP")
    r = weft("run", "--json", "--timeout", "1", "sh", "-c", "sleep 303 & sleep 304")
    assert r.returncode == 124
    assert not targets_of(json.loads(r.stdout)["tid"])
    intact()


def test_huge_argv(weft: Weft, project: Path, intact: Check) -> None:
    args = [f"{i:04d}" + "a" * 996 for i in range(100)]  # 100 kB: fine
    r = weft("run", "echo", *args)
    assert (r.returncode, r.stdout) == (0, " ".join(args) + "\n")
    # Past what the OS lets exec take: one argument over 128 kB, or 3 MB in all.
    for argv in (["echo", "b" * 200_000], ["echo", *(["c" * 1000] * 3000)]):
        spec = {"spec": {"type": "command", "process_target": argv}}
        (project / "huge.json").write_text(json.dumps(spec))
        r = weft("run", "--spec", "huge.json", "--json")
        assert r.returncode == 126, r.stderr
        error = json.loads(r.stdout)["error"]
        assert error == "cannot start command: [Errno 7] Argument list too long: 'echo'"
    intact()


def test_empty_messages(weft: Weft, project: Path, intact: Check) -> None:
    """An empty message is a message: stored, peeked and read back as the empty string."""
    assert weft("queue", "write", "empty.q", "").returncode == 0
    assert weft("queue", "write", "empty.q", "-", input="").returncode == 0
    peeked = [
        json.loads(line)
        for line in weft("queue", "peek", "empty.q", "--all", "--json").stdout.splitlines()
    ]
    assert [m["message"] for m in peeked] == ["", ""]
    r = weft("queue", "read", "empty.q", "--all")
    assert (r.returncode, r.stdout) == (0, "\n\n")
    one_line_error(weft("queue", "read", "empty.q"), 2, "is empty")
    r = weft("run", "--interactive", "cat", input="")  # a task given empty input
    assert (r.returncode, r.stdout) == (0, "")
    intact()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("WEFT_MANAGER_LIFETIME_TIMEOUT", "soon", "is not a number of seconds"),
        ("WEFT_WARM_TASK_PROCESSES", "many", "is not a whole number"),
        ("WEFT_WARM_TASK_PROCESSES", "-1", "must not be negative"),
        ("WEFT_WARM_TASK_IDLE_SECONDS", "-5", "must not be negative"),
        ("WEFT_AUTOSTART_TASKS", "maybe", "is not a boolean"),
        ("WEFT_RETENTION", "forever-ish", "is not a duration"),
    ],
)
def test_bad_setting_is_refused_before_anything_is_stored(
    weft: Weft, project: Path, variable: str, value: str, says: str
) -> None:
    r = weft("run", "echo", "never", env={variable: value})
    one_line_error(r, 2, variable, says)
    assert queue_bodies(project, "weft.spawn.requests") == []
    assert weft("run", "echo", "ok").stdout == "ok\n"
