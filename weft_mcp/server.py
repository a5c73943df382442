"""``weft-mcp``: a Model Context Protocol server over stdio, so AI agents drive Weft tasks.

    weft-mcp [--context DIR] [--allow PATTERN ...] [--read-only] [--max-wait SECONDS]

The project is ``--context DIR``, else ``$WEFT_CONTEXT``, else the nearest ``.weft/`` above
the working directory. With ``--context``/``WEFT_CONTEXT`` a missing ``.weft/`` is created
(like ``weft init``); found by searching, the project must already exist, so a server started
by a desktop app in some unrelated directory never litters it with a new project.

stdout carries JSON-RPC only: tasks run under a manager started detached in its own session
with stdin from /dev/null and stdout/stderr to ``.weft/logs/manager.log``, and each task's
target gets its own pipes. Diagnostics go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from weft import __version__
from weft.errors import EXIT_USAGE, WeftError
from weft_mcp.policy import Policy

if TYPE_CHECKING:
    from mcp.server import MCPServer

    from weft.client import WeftClient

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

INSTRUCTIONS = """\
Weft runs commands and Python functions as durable tasks on this machine: each task runs in \
its own process under a persistent manager, survives this conversation, and leaves its \
result in a durable queue until it is read (once).

Typical use:
- Short job: run_task(command=[...], wait_seconds=30) returns the result if it ends in time.
- Long job (test suite, build): run_task(..., wait_seconds=0) returns a TID at once; carry on, \
then get_result(tid, wait_seconds=...) later. finished=false means still running: ask again.
- Follow tasks: status, list_tasks, read_task_log (pass next_cursor back as 'after').
- End a task: stop_task (graceful) or kill_task.
- Message other agents or worker tasks through queues: queue_write, queue_read \
(wait_seconds waits for a reply), queue_peek, queue_list.
TIDs are 19 digits; the last 10 (tid_short), or any unique suffix of 6+, work everywhere. \
Errors say what to do next.\
"""


def build_server(
    client: WeftClient,
    *,
    policy: Policy | None = None,
    max_wait: float | None = None,
    log_level: LogLevel = "WARNING",
) -> MCPServer[Any]:
    """An MCP server exposing ``client``'s project (only reading tools if ``policy.read_only``)."""
    from mcp.server import MCPServer

    from weft_mcp.tools import DEFAULT_MAX_WAIT, WeftTools

    policy = policy or Policy()
    instructions = INSTRUCTIONS
    if policy.read_only:
        instructions += "\nThis server is read-only: it can look, but not start or stop tasks."
    if policy.allow:
        instructions += "\nrun_task only starts tasks matching: " + ", ".join(policy.allow) + "."
    server: MCPServer[Any] = MCPServer(
        "weft",
        title="Weft durable tasks",
        instructions=instructions,
        version=__version__,
        log_level=log_level,
    )
    tools = WeftTools(client, policy, max_wait=max_wait if max_wait else DEFAULT_MAX_WAIT)
    tools.register(server)
    return server


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="weft-mcp",
        description="MCP server (stdio) for Weft: AI agents run durable tasks, read their "
        "results and message each other through queues.",
    )
    parser.add_argument(
        "--context",
        "-C",
        metavar="DIR",
        help="Project directory (holding .weft/). Default: $WEFT_CONTEXT, else search upward "
        "from the working directory.",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PATTERN",
        help="Only let run_task start tasks matching this glob (repeatable). A command matches "
        "by its program (as given or its base name) or its whole command line; a function by "
        "its module:function target. Default: anything may run.",
    )
    parser.add_argument(
        "--read-only",
        action="store_true",
        help="Expose only the reading tools (status, list_tasks, get_result without "
        "consuming, queue_peek, queue_list, read_task_log).",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="The longest any one tool call may wait (default 300). Lower it for clients "
        "whose requests time out sooner.",
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="Server diagnostics on stderr (default WARNING).",
    )
    parser.add_argument("--version", action="version", version=f"weft-mcp {__version__}")
    args = parser.parse_args(argv)
    if args.max_wait is not None and args.max_wait <= 0:
        parser.error("--max-wait must be a positive number of seconds")
    return args


def open_client(context: str | None) -> WeftClient:
    """The project's client: explicit context (created if needed), else an existing project."""
    import os

    from weft.client import WeftClient
    from weft.context import ENV_CONTEXT

    explicit = context or os.environ.get(ENV_CONTEXT) or None
    if explicit is not None:
        return WeftClient.open(Path(explicit), create=True)
    return WeftClient.open(None, create=False)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        client = open_client(args.context)
    except WeftError as exc:
        hint = " (or pass --context DIR)" if "weft init" in str(exc) else ""
        print(f"weft-mcp: {exc}{hint}", file=sys.stderr)
        raise SystemExit(exc.exit_code or EXIT_USAGE) from None
    policy = Policy.from_options(args.allow, read_only=args.read_only)
    server = build_server(
        client, policy=policy, max_wait=args.max_wait, log_level=cast(LogLevel, args.log_level)
    )
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


if __name__ == "__main__":
    main()
