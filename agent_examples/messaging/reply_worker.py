"""A worker agent: answers requests from one queue on another, until it is stopped.

Weft runs it as a queue-fed task (see ``reply-worker.json``): the task process moves each
message from ``agents.requests`` into its reserved queue, calls ``answer(message)`` in a
fresh process, writes the returned reply to ``agents.replies``, and only then deletes the
request, so a request survives a crash of the worker. It serves until a STOP (``weft task
stop TID``, or the MCP tool ``stop_task``).

A request is JSON: ``{"id": "...", "op": "upper" | "words" | "sum", "text": "...",
"numbers": [...]}``. The reply is JSON carrying the same ``id``, the answer and the worker's
TID: ``{"id": "...", "ok": true, "answer": ..., "worker": "<tid>"}``. A bad request gets
``{"id": ..., "ok": false, "error": "..."}``: a reply, not a crash, so the asker never waits
in vain.

Copy this file into the project directory (it must be importable from there) and
``reply-worker.json`` into ``.weft/autostart/``; the next manager start launches it.
"""

from __future__ import annotations

import json
import os
from typing import Any


def _answer(request: dict[str, Any]) -> Any:
    op = request.get("op", "upper")
    if op == "upper":
        return str(request["text"]).upper()
    if op == "words":
        return len(str(request["text"]).split())
    if op == "sum":
        return sum(float(n) for n in request["numbers"])
    raise ValueError(f"unknown op {op!r}: use upper, words or sum")


def answer(message: str) -> str:
    """Handle one request message; return the reply message (JSON text)."""
    request: dict[str, Any] = {}
    try:
        parsed = json.loads(message)
        if not isinstance(parsed, dict):
            raise ValueError("a request must be a JSON object")
        request = parsed
        reply = {"id": request.get("id"), "ok": True, "answer": _answer(request)}
    except (KeyError, TypeError, ValueError) as exc:
        reply = {"id": request.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    reply["worker"] = os.environ.get("WEFT_TID", "")
    return json.dumps(reply)
