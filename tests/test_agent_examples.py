"""The runnable examples in agent_examples/: each is run as a user would run it."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Weft
from weft.client import WeftClient
from weft.errors import NotFoundError

EXAMPLES = REPO / "agent_examples"


def run_example(
    weft: Weft, script: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args],
        cwd=weft.cwd,
        env=weft.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_long_suite_started_in_one_session_and_collected_in_another(
    weft: Weft, project: Path
) -> None:
    script = EXAMPLES / "long_suite" / "agent_long_suite.py"
    started = run_example(weft, script, "--context", str(project), "start")
    assert started.returncode == 0, started.stderr
    first = started.stdout.splitlines()[0]
    assert first.startswith("started ")
    tid = first.split()[1]
    assert len(tid) == 19 and tid.isdigit()

    # the first MCP session (and its server process) is gone; the suite runs on
    collected = run_example(
        weft, script, "--context", str(project), "collect", tid[-10:], "--wait", "5"
    )
    assert collected.returncode == 0, collected.stderr
    summary = json.loads(collected.stdout.splitlines()[-1])
    assert summary == {"tid": tid, "status": "completed", "return_code": 0}
    assert "5 passed" in collected.stdout

    # collected once: the result has been consumed
    with WeftClient.open(project, create=False) as client:
        assert client.task(tid).status == "completed"
        assert not client.broker.has_messages(f"T{tid}.outbox")


def test_long_suite_failure_is_reported(weft: Weft, project: Path) -> None:
    script = EXAMPLES / "long_suite" / "agent_long_suite.py"
    started = run_example(
        weft, script, "--context", str(project), "start", "--", "sh", "-c", "echo 1 failed; exit 1"
    )
    assert started.returncode == 0, started.stderr
    tid = started.stdout.split()[1]
    collected = run_example(weft, script, "--context", str(project), "collect", tid)
    assert collected.returncode == 1
    assert json.loads(collected.stdout.splitlines()[-1])["status"] == "failed"
    assert "1 failed" in collected.stdout


def _stop_workers(project: Path) -> list[str]:
    """Stop every reply worker still active; return their final statuses."""
    statuses = []
    with WeftClient.open(project, create=False) as client:
        for record in client.tasks().values():
            if record.name == "reply-worker" and not record.is_final:
                with contextlib.suppress(NotFoundError):  # it ended meanwhile
                    client.control(record.tid, "STOP")
                statuses.append(str(client.result(record.tid, timeout=30, peek=True)["status"]))
    return statuses


def test_autostart_worker_and_client_agent_over_mcp(weft: Weft, project: Path) -> None:
    shutil.copy(EXAMPLES / "messaging" / "reply_worker.py", project / "reply_worker.py")
    shutil.copy(
        EXAMPLES / "messaging" / "reply-worker.json",
        project / ".weft" / "autostart" / "reply-worker.json",
    )
    client_script = EXAMPLES / "messaging" / "client_agent.py"
    try:
        # requests sent before any worker runs wait in the queue
        early = run_example(
            weft,
            client_script,
            "--context",
            str(project),
            "--patience",
            "0.1",
            "early bird",
        )
        assert early.returncode == 3  # no answer within its patience...
        assert "no worker is running yet" in early.stderr

        started = weft("manager", "start")  # ...until the manager autostarts the worker
        assert started.returncode == 0, started.stderr

        with WeftClient.open(project, create=False) as client:  # answered once it started
            waiting = client.queue.watch("agents.replies", peek=True, timeout=30)
            assert json.loads(next(waiting).body)["answer"] == "EARLY BIRD"
            waiting.close()

        talk = run_example(
            weft, client_script, "--context", str(project), "hello agents", "durable queues"
        )
        assert talk.returncode == 0, talk.stderr
        replies = [json.loads(line) for line in talk.stdout.splitlines()]
        assert sorted(r["answer"] for r in replies) == ["DURABLE QUEUES", "HELLO AGENTS"]
        assert all(r["ok"] and len(r["worker"]) == 19 for r in replies)
        assert "worker: " in talk.stderr
        with WeftClient.open(project, create=False) as client:  # the early reply was put back
            kept = [
                json.loads(m.body)["answer"] for m in client.queue.read("agents.replies", all=True)
            ]
        assert kept == ["EARLY BIRD"]

        last = run_example(
            weft,
            client_script,
            "--context",
            str(project),
            "--op",
            "words",
            "--stop-worker",
            "count these four words",
        )
        assert last.returncode == 0, last.stderr
        assert json.loads(last.stdout)["answer"] == 4
        assert "stopped worker" in last.stderr and ": stopped" in last.stderr
    finally:
        _stop_workers(project)
    with WeftClient.open(project, create=False) as client:
        workers = [r for r in client.tasks().values() if r.name == "reply-worker"]
    assert [w.status for w in workers] == ["stopped"]


def test_mcp_config_example_is_valid() -> None:
    config = json.loads((EXAMPLES / "mcp.json").read_text())
    server = config["mcpServers"]["weft"]
    assert server["command"] == "weft-mcp"
    assert all(isinstance(a, str) for a in server.get("args", []))


@pytest.mark.parametrize("script", sorted(EXAMPLES.rglob("*agent*.py")), ids=lambda p: p.name)
def test_example_scripts_explain_themselves(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "usage" in done.stdout
