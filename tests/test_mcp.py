"""The MCP server through an in-memory client session: every tool, its success and error paths,
the resources, progress, the safety switches, and that no call blocks past its bound."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from weft.client import WeftClient
from weft_mcp import Policy, build_server

pytestmark = pytest.mark.anyio

READING_TOOLS = {"get_result", "status", "list_tasks", "queue_peek", "queue_list", "read_task_log"}
ALL_TOOLS = READING_TOOLS | {"run_task", "stop_task", "kill_task", "queue_write", "queue_read"}

JOBS = """
import time

def add(a, b, scale=1):
    return (a + b) * scale

def chatty(text):
    for _ in range(200):
        print("a task printing to its stdout")
    return text.upper()

def boom():
    raise ValueError("bad input")
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client(project: Path) -> Iterator[WeftClient]:
    (project / "jobs.py").write_text(JOBS)
    c = WeftClient.open(project, create=False)
    try:
        yield c
    finally:
        c.stop_manager()
        c.close()


@asynccontextmanager
async def session(
    client: WeftClient, *, policy: Policy | None = None, max_wait: float | None = None
) -> AsyncIterator[Client]:
    server = build_server(client, policy=policy, max_wait=max_wait)
    async with Client(server) as mcp:
        yield mcp


async def ok(mcp: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await mcp.call_tool(tool, args)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def refused(mcp: Client, tool: str, **args: Any) -> str:
    result = await mcp.call_tool(tool, args)
    assert result.is_error, result.structured_content
    text = result.content[0].text  # type: ignore[union-attr]
    assert isinstance(text, str)
    return text


async def sleeper(mcp: Client, seconds: int = 60, **extra: Any) -> str:
    started = await ok(mcp, "run_task", command=["sleep", str(seconds)], **extra)
    return str(started["tid"])


async def wait_running(mcp: Client, tid: str) -> None:
    deadline = time.monotonic() + 15
    while (await ok(mcp, "status", tid=tid))["tasks"][0]["status"] != "running":
        assert time.monotonic() < deadline, "task never started"
        await anyio.sleep(0.02)


# -- discovery ---------------------------------------------------------------------------


async def test_every_tool_is_listed_with_description_and_schemas(client: WeftClient) -> None:
    async with session(client) as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert set(tools) == ALL_TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 40, tool.name
            assert tool.output_schema is not None, tool.name
            assert tool.input_schema["type"] == "object"
        run = tools["run_task"].input_schema["properties"]
        assert {"command", "function", "args", "kwargs", "spec", "wait_seconds"} <= set(run)
        assert tools["status"].annotations is not None
        assert tools["status"].annotations.read_only_hint is True
        assert tools["kill_task"].annotations is not None
        assert tools["kill_task"].annotations.destructive_hint is True
        assert mcp.instructions and "run_task" in mcp.instructions


# -- run_task and get_result -------------------------------------------------------------


async def test_run_command_waits_for_its_result(client: WeftClient) -> None:
    async with session(client) as mcp:
        out = await ok(mcp, "run_task", command=["echo", "hello world"], wait_seconds=30)
        assert out["finished"] is True and out["status"] == "completed"
        assert out["output"] == "hello world\n" and out["return_code"] == 0
        assert out["result_consumed"] is True and len(out["tid"]) == 19
        assert out["tid_short"] == out["tid"][-10:]

        failed = await ok(
            mcp, "run_task", command=["sh", "-c", "echo oops >&2; exit 3"], wait_seconds=30
        )
        assert failed["status"] == "failed" and failed["return_code"] == 3
        assert failed["stderr"] == "oops\n"

        missing = await ok(mcp, "run_task", command=["no-such-program-xyz"], wait_seconds=30)
        assert missing["return_code"] == 127 and "not found" in missing["error"]


async def test_run_function_with_args_and_kwargs(client: WeftClient) -> None:
    async with session(client) as mcp:
        out = await ok(
            mcp, "run_task", function="jobs:add", args=[2, 3], kwargs={"scale": 10}, wait_seconds=30
        )
        assert out["status"] == "completed" and out["output"] == 50

        chatty = await ok(mcp, "run_task", function="jobs:chatty", args=["hi"], wait_seconds=30)
        assert chatty["output"] == "HI" and "printing" in chatty["stdout"]

        boom = await ok(mcp, "run_task", function="jobs:boom", wait_seconds=30)
        assert boom["status"] == "failed" and "ValueError: bad input" in boom["error"]


async def test_run_full_taskspec(client: WeftClient) -> None:
    spec = {
        "name": "spec-task",
        "spec": {
            "type": "command",
            "process_target": ["sh", "-c", "echo $GREETING"],
            "env": {"GREETING": "from a spec"},
            "timeout": 30,
        },
        "metadata": {"tags": ["kind=spec"]},
    }
    async with session(client) as mcp:
        out = await ok(mcp, "run_task", spec=spec, wait_seconds=30)
        assert out["output"] == "from a spec\n"
        found = await ok(mcp, "list_tasks", tag="kind=spec")
        assert [t["name"] for t in found["tasks"]] == ["spec-task"]

        func_spec = {"spec": {"type": "function", "function_target": "jobs:add", "args": [1, 1]}}
        assert (await ok(mcp, "run_task", spec=func_spec, wait_seconds=30))["output"] == 2


async def test_run_task_argument_errors_say_what_to_do(client: WeftClient) -> None:
    async with session(client) as mcp:
        assert "exactly one of" in await refused(mcp, "run_task")
        both = await refused(mcp, "run_task", command=["echo"], function="jobs:add")
        assert "exactly one of" in both and "command, function" in both
        assert "for a function task" in await refused(mcp, "run_task", command=["echo"], args=[1])
        inside = await refused(
            mcp, "run_task", spec={"spec": {"process_target": ["echo"]}}, name="x", timeout=5
        )
        assert "inside the TaskSpec" in inside and "name" in inside
        bad_spec = await refused(
            mcp, "run_task", spec={"spec": {"process_target": ["echo"]}, "x": 1}
        )
        assert "unknown field" in bad_spec and "fix the argument" in bad_spec
        assert "module:function" in await refused(mcp, "run_task", function="not a target")
        assert "empty" in await refused(mcp, "run_task", command=[""])
        negative = await refused(mcp, "run_task", command=["echo"], wait_seconds=-1)
        assert "wait_seconds" in negative
        assert "command" in await refused(mcp, "run_task", command="echo hi")
        # nothing was submitted by any of these
        assert (await ok(mcp, "status", include_finished=True))["total"] == 0


async def test_no_wait_then_get_result_later_with_progress(client: WeftClient) -> None:
    async with session(client) as mcp:
        started = await ok(mcp, "run_task", command=["sh", "-c", "sleep 1; echo late"])
        assert started["finished"] is False and started["status"] == "pending"
        assert "get_result" in started["next_step"]

        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append((done, total, message))

        result = await mcp.call_tool(
            "get_result",
            {"tid": started["tid_short"], "wait_seconds": 30},
            progress_callback=on_progress,
        )
        out = result.structured_content
        assert out is not None and out["output"] == "late\n"
        assert progress, "no progress was reported while waiting"
        assert all(total == 30 for _, total, _ in progress)
        assert [p for p, _, _ in progress] == sorted(p for p, _, _ in progress)
        assert started["tid_short"] in (progress[0][2] or "")


async def test_get_result_is_bounded_and_returns_status(client: WeftClient) -> None:
    async with session(client) as mcp:
        tid = await sleeper(mcp)
        began = time.monotonic()
        out = await ok(mcp, "get_result", tid=tid, wait_seconds=0.6)
        assert time.monotonic() - began < 3
        assert out["finished"] is False and out["status"] in ("pending", "running")
        assert "get_result" in out["next_step"]
        await ok(mcp, "kill_task", tid=tid)


async def test_wait_is_capped_by_max_wait(client: WeftClient) -> None:
    async with session(client, max_wait=0.5) as mcp:
        tid = await sleeper(mcp)
        began = time.monotonic()
        out = await ok(mcp, "get_result", tid=tid, wait_seconds=3600)
        assert time.monotonic() - began < 3 and out["finished"] is False
        began = time.monotonic()
        out = await ok(mcp, "run_task", command=["sleep", "60"], wait_seconds=3600)
        assert time.monotonic() - began < 3 and out["finished"] is False
        for t in (tid, out["tid"]):
            await ok(mcp, "kill_task", tid=t)


async def test_peek_keeps_the_result_and_a_consumed_one_is_reported(client: WeftClient) -> None:
    async with session(client) as mcp:
        tid = (await ok(mcp, "run_task", command=["echo", "once"]))["tid"]
        peeked = await ok(mcp, "get_result", tid=tid, wait_seconds=30, peek=True)
        assert peeked["output"] == "once\n" and peeked["result_consumed"] is False
        taken = await ok(mcp, "get_result", tid=tid[-8:], wait_seconds=5)
        assert taken["output"] == "once\n" and taken["result_consumed"] is True
        gone = await ok(mcp, "get_result", tid=tid)
        assert gone["finished"] is True and gone["output"] is None
        assert gone["status"] == "completed" and "no longer stored" in gone["next_step"]


async def test_get_result_errors(client: WeftClient) -> None:
    async with session(client) as mcp:
        unknown = await refused(mcp, "get_result", tid="1234567890")
        assert "no task with TID 1234567890" in unknown and "list_tasks" in unknown
        assert "digits only" in await refused(mcp, "get_result", tid="abc")
        assert "too short" in await refused(mcp, "get_result", tid="123")
        assert "tid" in await refused(mcp, "get_result")


async def test_long_output_keeps_its_end(client: WeftClient) -> None:
    async with session(client) as mcp:
        script = "for i in $(seq 1 2000); do echo line $i; done"
        out = await ok(
            mcp, "run_task", command=["sh", "-c", script], wait_seconds=30, max_output_chars=200
        )
        assert out["truncated"] is True
        assert out["output"].endswith("line 2000\n") and "characters cut" in out["output"]
        assert len(out["output"]) < 300


# -- status, list_tasks ------------------------------------------------------------------


async def test_status_everything_and_one_task(client: WeftClient) -> None:
    async with session(client) as mcp:
        done = await ok(mcp, "run_task", command=["true"], name="quick", wait_seconds=30)
        tid = await sleeper(mcp, name="slow")
        await wait_running(mcp, tid)
        everything = await ok(mcp, "status")
        assert everything["managers"] and everything["managers"][0]["alive"] is True
        assert everything["counts"] == {"completed": 1, "running": 1}
        assert [t["tid"] for t in everything["tasks"]] == [tid]  # active ones only
        with_finished = await ok(mcp, "status", include_finished=True)
        assert {t["name"] for t in with_finished["tasks"]} == {"quick", "slow"}
        one = await ok(mcp, "status", tid=done["tid_short"])
        assert [t["status"] for t in one["tasks"]] == ["completed"]
        assert one["tasks"][0]["command"] == "true" and one["tasks"][0]["return_code"] == 0
        assert "no task" in await refused(mcp, "status", tid="9999999999")
        await ok(mcp, "kill_task", tid=tid)


async def test_list_tasks_filters(client: WeftClient) -> None:
    async with session(client) as mcp:
        for n in range(3):
            await ok(
                mcp,
                "run_task",
                command=["true"],
                name=f"unit-{n}",
                tags=["suite=unit"],
                wait_seconds=30,
            )
        await ok(
            mcp, "run_task", command=["false"], name="lint", tags=["suite=lint"], wait_seconds=30
        )
        by_name = await ok(mcp, "list_tasks", name="unit-*")
        assert [t["name"] for t in by_name["tasks"]] == ["unit-2", "unit-1", "unit-0"]
        assert [t["name"] for t in (await ok(mcp, "list_tasks", tag="suite=lint"))["tasks"]] == [
            "lint"
        ]
        assert (await ok(mcp, "list_tasks", status="failed"))["matched"] == 1
        assert (await ok(mcp, "list_tasks", status="finished"))["matched"] == 4
        assert (await ok(mcp, "list_tasks", status="active"))["matched"] == 0
        limited = await ok(mcp, "list_tasks", limit=2)
        assert len(limited["tasks"]) == 2 and limited["truncated"] and limited["matched"] == 4
        assert "unknown status" in await refused(mcp, "list_tasks", status="sleeping")


# -- stop_task, kill_task ----------------------------------------------------------------


async def test_stop_and_kill(client: WeftClient) -> None:
    async with session(client) as mcp:
        a, b = await sleeper(mcp), await sleeper(mcp)
        await wait_running(mcp, a)
        await wait_running(mcp, b)
        stopped = await ok(mcp, "stop_task", tid=a[-10:])
        assert stopped["acknowledged"] and stopped["finished"] and stopped["status"] == "stopped"
        killed = await ok(mcp, "kill_task", tid=b)
        assert killed["finished"] and killed["status"] == "killed"
        result = await ok(mcp, "get_result", tid=a)
        assert result["status"] == "stopped" and result["return_code"] == 143
        again = await refused(mcp, "stop_task", tid=a)
        assert "not running" in again and "get_result" in again
        assert "no task" in await refused(mcp, "kill_task", tid="1111111111")
        assert not (await ok(mcp, "status"))["tasks"]


async def test_stopping_a_pending_task_takes_effect_when_it_starts(client: WeftClient) -> None:
    tid = client.submit({"spec": {"process_target": ["sleep", "60"]}}, ensure_manager=False)
    async with session(client) as mcp:
        began = time.monotonic()
        stopped = await ok(mcp, "stop_task", tid=tid, wait_seconds=0)
        assert time.monotonic() - began < 3
        assert stopped["acknowledged"] is False and stopped["status"] == "pending"
        assert "when it starts" in stopped["next_step"]
        client.ensure_manager()
        out = await ok(mcp, "get_result", tid=tid, wait_seconds=30)
        assert out["status"] == "stopped"


# -- queues ------------------------------------------------------------------------------


async def test_queue_write_peek_list_read(client: WeftClient) -> None:
    async with session(client) as mcp:
        first = await ok(mcp, "queue_write", queue="jobs.in", message="one")
        await ok(mcp, "queue_write", queue="jobs.in", message='{"n": 2}')
        assert len(first["id"]) == 19 and first["queue"] == "jobs.in"
        peeked = await ok(mcp, "queue_peek", queue="jobs.in")
        assert [m["body"] for m in peeked["messages"]] == ["one", '{"n": 2}']
        assert peeked["consumed"] is False and peeked["messages"][0]["id"] == first["id"]
        listed = await ok(mcp, "queue_list")
        assert {"name": "jobs.in", "pending": 2} in listed["queues"]
        assert all(not q["name"].startswith("weft.") for q in listed["queues"])
        assert (await ok(mcp, "queue_list", pattern="nothing*"))["queues"] == []
        one = await ok(mcp, "queue_read", queue="jobs.in")
        assert [m["body"] for m in one["messages"]] == ["one"] and one["consumed"]
        rest = await ok(mcp, "queue_read", queue="jobs.in", max_messages=10)
        assert [m["body"] for m in rest["messages"]] == ['{"n": 2}']

        empty = await refused(mcp, "queue_read", queue="jobs.in")
        assert "is empty" in empty and "wait_seconds" in empty
        assert "is empty" in await refused(mcp, "queue_peek", queue="jobs.in")
        assert "invalid queue name" in await refused(
            mcp, "queue_write", queue="bad name", message="x"
        )


async def test_engine_queues_are_off_limits_except_for_peeking(client: WeftClient) -> None:
    async with session(client) as mcp:
        await ok(mcp, "run_task", command=["true"], wait_seconds=30)
        for tool, args in (
            ("queue_write", {"queue": "weft.spawn.requests", "message": "{}"}),
            ("queue_read", {"queue": "weft.tasks.log"}),
        ):
            assert "belongs to the Weft engine" in await refused(mcp, tool, **args)
        client.queue.alias_add("sneaky", "weft.spawn.requests")
        assert "belongs to the Weft engine" in await refused(
            mcp, "queue_write", queue="@sneaky", message="{}"
        )
        assert (await ok(mcp, "queue_peek", queue="weft.tasks.log"))["messages"]
        internal = await ok(mcp, "queue_list", include_internal=True)
        assert any(q["name"] == "weft.tasks.log" for q in internal["queues"])


async def test_queue_read_waits_for_a_message(client: WeftClient) -> None:
    async with session(client) as mcp:
        got: dict[str, Any] = {}

        async def reader() -> None:
            async def on_progress(done: float, total: float | None, message: str | None) -> None:
                if "sent" not in got:  # the reader is waiting now: answer it
                    got["sent"] = True
                    client.queue.write("replies", "pong")

            result = await mcp.call_tool(
                "queue_read",
                {"queue": "replies", "wait_seconds": 30},
                progress_callback=on_progress,
            )
            got["result"] = result.structured_content

        began = time.monotonic()
        await reader()
        assert got["result"]["messages"][0]["body"] == "pong"
        assert time.monotonic() - began < 5

        began = time.monotonic()
        text = await refused(mcp, "queue_read", queue="replies", wait_seconds=0.6)
        assert "waited 0.6s" in text and time.monotonic() - began < 3


# -- the shared log ----------------------------------------------------------------------


async def test_read_task_log_cursor_and_filters(client: WeftClient) -> None:
    async with session(client) as mcp:
        a = await ok(mcp, "run_task", command=["true"], name="a", wait_seconds=30)
        latest = await ok(mcp, "read_task_log")
        events = [e["event"] for e in latest["events"]]
        assert events == ["task_initialized", "work_started", "work_completed"]
        assert all(len(e["log_id"]) == 19 and "taskspec" not in e for e in latest["events"])
        assert latest["events"][0]["name"] == "a"
        cursor = latest["next_cursor"]
        assert cursor == latest["events"][-1]["log_id"]

        b = await ok(mcp, "run_task", command=["false"], name="b", wait_seconds=30)
        newer = await ok(mcp, "read_task_log", after=cursor)
        assert {e["tid"] for e in newer["events"]} == {b["tid"]}
        failed = await ok(mcp, "read_task_log", after="0", event="work_failed")
        assert [e["tid"] for e in failed["events"]] == [b["tid"]]
        only_a = await ok(
            mcp, "read_task_log", after="0", tid=a["tid_short"], include_taskspec=True
        )
        assert {e["tid"] for e in only_a["events"]} == {a["tid"]}
        assert only_a["events"][0]["taskspec"]["name"] == "a"
        assert len((await ok(mcp, "read_task_log", after="0", limit=2))["events"]) == 2
        nothing = await ok(mcp, "read_task_log", after=newer["next_cursor"])
        assert nothing["events"] == [] and nothing["next_cursor"] == newer["next_cursor"]

        assert "invalid cursor" in await refused(mcp, "read_task_log", after="yesterday")
        assert "unknown event" in await refused(mcp, "read_task_log", event="finished")
        assert "no task" in await refused(mcp, "read_task_log", tid="5555555555")


async def test_read_task_log_waits_for_new_events(client: WeftClient) -> None:
    async with session(client) as mcp:
        await ok(mcp, "run_task", command=["true"], wait_seconds=30)
        cursor = (await ok(mcp, "read_task_log"))["next_cursor"]
        started: dict[str, str] = {}

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            if not started:  # the call is waiting: make something happen
                started["tid"] = client.run(["true"])

        result = await mcp.call_tool(
            "read_task_log",
            {"after": cursor, "wait_seconds": 30},
            progress_callback=on_progress,
        )
        page = result.structured_content
        assert page is not None and page["events"]
        assert page["events"][0]["tid"] == started["tid"]
        client.result(started["tid"], timeout=30)


# -- resources ---------------------------------------------------------------------------


async def test_resources(client: WeftClient) -> None:
    import json

    async with session(client) as mcp:
        templates = (await mcp.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["weft://task/{tid}"]
        static = {str(r.uri) for r in (await mcp.list_resources()).resources}
        assert static == {"weft://log", "weft://status"}

        done = await ok(mcp, "run_task", command=["echo", "r"], wait_seconds=30)
        task = await mcp.read_resource(f"weft://task/{done['tid_short']}")
        body = json.loads(task.contents[0].text)  # type: ignore[union-attr]
        assert body["tid"] == done["tid"] and body["status"] == "completed"
        log = json.loads((await mcp.read_resource("weft://log")).contents[0].text)  # type: ignore[union-attr]
        assert log["events"][-1]["event"] == "work_completed"
        status = json.loads((await mcp.read_resource("weft://status")).contents[0].text)  # type: ignore[union-attr]
        assert status["counts"] == {"completed": 1}
        with pytest.raises(Exception, match="no task"):
            await mcp.read_resource("weft://task/4444444444")


# -- safety switches ---------------------------------------------------------------------


async def test_allow_list(client: WeftClient) -> None:
    policy = Policy.from_options(["echo", "sh -c 'exit 0'", "jobs:add"])
    async with session(client, policy=policy) as mcp:
        assert (await ok(mcp, "run_task", command=["echo", "ok"], wait_seconds=30))[
            "output"
        ] == "ok\n"
        assert (await ok(mcp, "run_task", command=["/bin/echo", "x"], wait_seconds=30))["output"]
        full_line = await ok(mcp, "run_task", command=["sh", "-c", "exit 0"], wait_seconds=30)
        assert full_line["status"] == "completed"
        assert (await ok(mcp, "run_task", function="jobs:add", args=[1, 2], wait_seconds=30))[
            "output"
        ] == 3

        text = await refused(mcp, "run_task", command=["rm", "-rf", "/tmp/nothing-here"])
        assert "not allowed" in text and "'echo'" in text and "rm -rf" in text
        assert "not allowed" in await refused(mcp, "run_task", command=["sh", "-c", "exit 1"])
        assert "not allowed" in await refused(mcp, "run_task", function="jobs:boom")
        spec = {"spec": {"type": "command", "process_target": ["ls"]}}
        assert "not allowed" in await refused(mcp, "run_task", spec=spec)
        path = await refused(mcp, "run_task", command=["echo"], env={"PATH": "/tmp"})
        assert "PATH" in path and "may not set" in path
        assert "LD_PRELOAD" in await refused(
            mcp, "run_task", command=["echo"], env={"LD_PRELOAD": "x.so"}
        )
        counts = (await ok(mcp, "status", include_finished=True))["counts"]
        assert counts == {"completed": 4}  # nothing refused was started


async def test_read_only_exposes_only_reading_tools(client: WeftClient) -> None:
    tid = client.run(["echo", "kept"])
    client.result(tid, timeout=30, peek=True)
    client.queue.write("inbox", "hello")
    async with session(client, policy=Policy(read_only=True)) as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert set(tools) == READING_TOOLS
        assert "peek" not in tools["get_result"].input_schema["properties"]
        assert mcp.instructions and "read-only" in mcp.instructions
        for _ in range(2):  # reading never consumes
            out = await ok(mcp, "get_result", tid=tid, wait_seconds=5)
            assert out["output"] == "kept\n" and out["result_consumed"] is False
        assert (await ok(mcp, "queue_peek", queue="inbox"))["messages"][0]["body"] == "hello"
        assert "Unknown tool" in await refused(mcp, "run_task", command=["echo"])
        assert "Unknown tool" in await refused(mcp, "queue_read", queue="inbox")
    assert client.result(tid, timeout=5)["output"] == "kept\n"


# -- robustness --------------------------------------------------------------------------


async def test_a_long_wait_does_not_block_other_calls(client: WeftClient) -> None:
    async with session(client) as mcp:
        tid = await sleeper(mcp)
        timings: dict[str, float] = {}

        async def long_wait() -> None:
            began = time.monotonic()
            await ok(mcp, "get_result", tid=tid, wait_seconds=2)
            timings["wait"] = time.monotonic() - began

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_wait)
            began = time.monotonic()
            for _ in range(5):
                await ok(mcp, "status")
                await ok(mcp, "queue_write", queue="busy", message="x")
            timings["others"] = time.monotonic() - began
        assert timings["others"] < 1.5 < timings["wait"]
        await ok(mcp, "kill_task", tid=tid)


async def test_unexpected_errors_become_tool_errors(
    client: WeftClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(**_: Any) -> dict[str, Any]:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(client, "status", broken)
    async with session(client) as mcp:
        text = await refused(mcp, "status")
        assert "unexpected error" in text and "disk on fire" in text
        assert (await ok(mcp, "queue_list"))["queues"] == []  # and the server carries on
