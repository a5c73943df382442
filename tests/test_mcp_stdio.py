"""End to end: ``weft-mcp`` / ``python -m weft_mcp`` as a subprocess, driven over real stdio by
the SDK's stdio client, as Claude Desktop or Claude Code would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.conftest import Weft
from tests.test_mcp import ok

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def stdio_session(
    command: list[str], env: dict[str, str], cwd: Path, errlog: IO[str]
) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=cwd)
    async with Client(stdio_client(params, errlog=errlog)) as mcp:
        yield mcp


async def test_python_m_weft_mcp_over_stdio(weft: Weft, project: Path, tmp_path: Path) -> None:
    (project / "noisy.py").write_text(
        "import os, sys\n"
        "def shout(text):\n"
        "    print('stdout noise ' * 50)\n"
        "    sys.stdout.flush()\n"
        "    os.write(1, b'raw fd 1 noise\\n')\n"
        "    return text.upper()\n"
    )
    errlog = (tmp_path / "server.err").open("w+")
    command = [sys.executable, "-m", "weft_mcp", "--context", str(project)]
    async with stdio_session(command, weft.env, tmp_path, errlog) as mcp:
        tools = {t.name for t in (await mcp.list_tools()).tools}
        assert {"run_task", "get_result", "queue_write", "queue_read", "read_task_log"} <= tools

        # a short task, waited for in the same call
        out = await ok(mcp, "run_task", command=["echo", "over stdio"], wait_seconds=30)
        assert out["status"] == "completed" and out["output"] == "over stdio\n"

        # a task that prints on its stdout (and fd 1) cannot corrupt the JSON-RPC stream
        noisy = await ok(mcp, "run_task", function="noisy:shout", args=["quiet"], wait_seconds=30)
        assert noisy["output"] == "QUIET" and "stdout noise" in noisy["stdout"]
        cmd = await ok(mcp, "run_task", command=["sh", "-c", "echo to-stdout; echo to-stderr >&2"])

        # later: collect by short TID, with progress while waiting
        progress: list[str | None] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(message)

        later = await mcp.call_tool(
            "get_result",
            {"tid": cmd["tid_short"], "wait_seconds": 30},
            progress_callback=on_progress,
        )
        assert later.structured_content is not None
        assert later.structured_content["output"] == "to-stdout\n"
        assert later.structured_content["stderr"] == "to-stderr\n"

        # queues
        written = await ok(mcp, "queue_write", queue="agent.mail", message="hello over stdio")
        peeked = await ok(mcp, "queue_peek", queue="agent.mail")
        assert peeked["messages"][0]["id"] == written["id"]
        read = await ok(mcp, "queue_read", queue="agent.mail", wait_seconds=5)
        assert [m["body"] for m in read["messages"]] == ["hello over stdio"]
        empty = await mcp.call_tool("queue_read", {"queue": "agent.mail"})
        assert empty.is_error

        # the manager this server started is detached from the server's stdio
        status = await ok(mcp, "status")
        manager_pid = status["managers"][0]["pid"]
        assert os.readlink(f"/proc/{manager_pid}/fd/0") == "/dev/null"
        assert os.readlink(f"/proc/{manager_pid}/fd/1").endswith("manager.log")
        assert os.getsid(manager_pid) == manager_pid

        log = await ok(mcp, "read_task_log", after="0", event="work_completed")
        assert len(log["events"]) == 3
    errlog.seek(0)
    assert "Traceback" not in errlog.read()


async def test_weft_mcp_console_script_read_only_via_env_context(
    weft: Weft, project: Path, tmp_path: Path
) -> None:
    script = shutil.which("weft-mcp")
    if script is None:
        pytest.skip("weft-mcp console script is not installed")
    done = weft("run", "--no-wait", "echo", "from the cli")
    tid = done.stdout.strip()
    assert done.returncode == 0 and tid, done.stderr
    env = {**weft.env, "WEFT_CONTEXT": str(project)}
    errlog = (tmp_path / "server.err").open("w+")
    async with stdio_session([script, "--read-only"], env, tmp_path, errlog) as mcp:
        tools = {t.name for t in (await mcp.list_tools()).tools}
        assert "run_task" not in tools and "get_result" in tools
        out = await ok(mcp, "get_result", tid=tid, wait_seconds=30)
        assert out["output"] == "from the cli\n" and out["result_consumed"] is False
        refused = await mcp.call_tool("run_task", {"command": ["echo"]})
        assert refused.is_error
    after = weft("result", tid)  # the result is still there for the CLI
    assert after.returncode == 0 and json.loads(after.stdout)["output"] == "from the cli\n"


def test_no_project_is_a_clear_startup_error(weft: Weft, workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "weft_mcp"],
        cwd=workdir,
        env=weft.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "no weft project" in done.stderr and "--context" in done.stderr
    assert not (workdir / ".weft").exists()


def test_bad_option_is_a_usage_error(weft: Weft, workdir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "weft_mcp", "--max-wait", "0"],
        cwd=workdir,
        env=weft.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and "--max-wait" in done.stderr
