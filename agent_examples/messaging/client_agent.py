"""A client agent that talks to the reply worker through the weft MCP server's queue tools.

    python client_agent.py --context ~/myproject "hello agents" "durable queues"
    python client_agent.py --context ~/myproject --op words --stop-worker "count these four words"

It starts ``python -m weft_mcp`` over stdio (as Claude Code would) and then, with MCP tools
only: finds the worker (``list_tasks``), writes one request per TEXT to ``agents.requests``
(``queue_write``), collects the replies from ``agents.replies`` (``queue_read`` with
``wait_seconds``, so it waits for the worker without polling), matching them to its requests
by ``id``, prints each reply as a JSON line, and with ``--stop-worker`` stops the worker
(``stop_task``).

Requests are durable: sent while no worker runs, they wait in the queue until one starts.
Replies to other agents' requests are put back on the queue at the end; when many agents
talk to workers at once, give each pair its own queues (one template per pair).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

REQUESTS = "agents.requests"
REPLIES = "agents.replies"
WORKER = "reply-worker"


async def call(session: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await session.call_tool(tool, arguments)
    if result.is_error:
        text = result.content[0].text if result.content else "?"  # type: ignore[union-attr]
        raise RuntimeError(f"{tool} failed: {text}")
    assert result.structured_content is not None
    return result.structured_content


async def converse(args: argparse.Namespace) -> int:
    server = StdioServerParameters(
        command=sys.executable,
        args=["-m", "weft_mcp", "--context", args.context],
        env=dict(os.environ),
    )
    async with Client(server) as weft:
        workers = await call(weft, "list_tasks", name=WORKER, status="active")
        if workers["tasks"]:
            print(f"worker: {workers['tasks'][0]['tid_short']} ({workers['tasks'][0]['status']})",
                  file=sys.stderr)  # fmt: skip
        else:
            print("no worker is running yet: the requests wait in the queue", file=sys.stderr)

        conversation = uuid.uuid4().hex[:8]
        waiting: set[str] = set()
        others: list[str] = []
        for n, text in enumerate(args.texts):
            request_id = f"{conversation}-{n}"
            request = {"id": request_id, "op": args.op, "text": text}
            await call(weft, "queue_write", queue=REQUESTS, message=json.dumps(request))
            waiting.add(request_id)

        with anyio.move_on_after(args.patience):
            while waiting:
                try:
                    got = await call(
                        weft, "queue_read", queue=REPLIES, max_messages=1, wait_seconds=args.wait
                    )
                except RuntimeError as exc:
                    if "is empty" not in str(exc):
                        raise
                    continue  # nothing yet: ask again (bounded by --patience)
                for message in got["messages"]:
                    reply = json.loads(message["body"])
                    if reply.get("id") in waiting:
                        waiting.discard(reply["id"])
                        print(json.dumps(reply), flush=True)
                    else:
                        others.append(message["body"])
        for body in others:  # not ours: give them back
            await call(weft, "queue_write", queue=REPLIES, message=body)
        if waiting:
            print(
                f"no reply to {len(waiting)} request(s) within {args.patience:g}s; they stay "
                f"queued in {REQUESTS} for the worker",
                file=sys.stderr,
            )
            return 3

        if args.stop_worker:
            workers = await call(weft, "list_tasks", name=WORKER, status="active")
            for task in workers["tasks"]:
                stopped = await call(weft, "stop_task", tid=task["tid"], wait_seconds=10)
                print(
                    f"stopped worker {stopped['tid_short']}: {stopped['status']}", file=sys.stderr
                )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="one request per text")
    parser.add_argument("--context", default=os.getcwd(), help="the Weft project directory")
    parser.add_argument("--op", default="upper", choices=["upper", "words"])
    parser.add_argument("--wait", type=float, default=10, help="seconds per queue_read call")
    parser.add_argument("--patience", type=float, default=60, help="give up after this")
    parser.add_argument("--stop-worker", action="store_true", help="stop the worker at the end")
    return anyio.run(converse, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
