"""An agent session that runs a long test suite as a durable Weft task and collects it later.

What an AI agent does through the weft MCP server, as a script you can run and read:

    # session 1: start the suite and move on (the call returns at once with a TID)
    python agent_long_suite.py --context ~/myproject start -- python -m pytest -q
    # ... the MCP session ends; the suite keeps running under Weft's manager ...

    # session 2 (later, a new MCP server process): collect the result
    python agent_long_suite.py --context ~/myproject collect 1837025672140161024

Without a command after ``start --``, it runs the small sample suite next to this file.
Each step starts ``python -m weft_mcp`` as an MCP server over stdio, exactly as Claude Code
or Claude Desktop would, and calls its tools: ``run_task`` with ``wait_seconds=0``,
``status``, then ``get_result`` with a bounded wait, repeated until the task has finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

SAMPLE_SUITE = Path(__file__).resolve().parent / "sample_suite"


@asynccontextmanager
async def weft_session(context: str) -> AsyncIterator[Client]:
    """An MCP session with a fresh ``weft-mcp`` server process for the project ``context``."""
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "weft_mcp", "--context", context],
        env=dict(os.environ),
    )
    async with Client(server) as session:
        yield session


async def call(session: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    if result.is_error:
        text = result.content[0].text if result.content else "?"  # type: ignore[union-attr]
        raise SystemExit(f"{tool} failed: {text}")
    assert result.structured_content is not None
    return result.structured_content


async def start(context: str, command: list[str]) -> str:
    async with weft_session(context) as weft:
        task = await call(
            weft,
            "run_task",
            command=command,
            name="test-suite",
            tags=["agent=long-suite"],
            wait_seconds=0,  # do not wait: the suite runs on while the agent does other work
        )
        print(f"started {task['tid']} ({task['status']}): {' '.join(command)}")
        status = await call(weft, "status", tid=task["tid"])
        print(f"status now: {status['tasks'][0]['status']}")
        return str(task["tid"])


async def collect(context: str, tid: str, wait_seconds: float, patience: float) -> int:
    """Ask for the result with a bounded wait, again and again, until the task has finished."""
    async with weft_session(context) as weft:

        async def progress(done: float, total: float | None, message: str | None) -> None:
            print(f"  ... {message}", file=sys.stderr)

        with anyio.fail_after(patience):
            while True:
                result = await weft.call_tool(
                    "get_result",
                    {"tid": tid, "wait_seconds": wait_seconds},
                    progress_callback=progress,
                )
                outcome = result.structured_content
                if result.is_error or outcome is None:
                    raise SystemExit(f"get_result failed: {result.content}")
                if outcome["finished"]:
                    break
                print(f"still {outcome['status']}; asking again")
    tid = outcome["tid"]
    print(f"collected {tid}: status={outcome['status']} return_code={outcome['return_code']}")
    print((outcome.get("output") or "").rstrip())
    print(
        json.dumps({"tid": tid, "status": outcome["status"], "return_code": outcome["return_code"]})
    )
    return 0 if outcome["status"] == "completed" else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", default=os.getcwd(), help="the Weft project directory")
    sub = parser.add_subparsers(dest="step", required=True)
    start_p = sub.add_parser("start", help="start the suite as a durable task; print its TID")
    start_p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ... to run")
    collect_p = sub.add_parser("collect", help="collect a task's result (waits, bounded)")
    collect_p.add_argument("tid")
    collect_p.add_argument("--wait", type=float, default=30, help="seconds per get_result call")
    collect_p.add_argument("--patience", type=float, default=600, help="give up after this")
    args = parser.parse_args(argv)

    if args.step == "start":
        given = args.command[1:] if args.command[:1] == ["--"] else args.command
        command = given or [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(SAMPLE_SUITE),
        ]  # fmt: skip
        anyio.run(start, args.context, command)
        return 0
    return anyio.run(collect, args.context, args.tid, args.wait, args.patience)


if __name__ == "__main__":
    sys.exit(main())
