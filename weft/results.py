"""The result message a task leaves in ``T{tid}.outbox``, defined once.

Shape (the seed's, plus detail): ``{"type": "result", "tid", "status", "return_code",
"output", "stderr"?, "error"?, "output_ref"?}``. Streaming tasks first write
``{"type": "chunk", "stream": "stdout"|"stderr", "data": ...}`` messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

RESULT = "result"
CHUNK = "chunk"


def make_result(
    tid: str,
    status: str,
    *,
    return_code: int | None,
    output: Any,
    stderr: str = "",
    error: str | None = None,
    **detail: Any,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "type": RESULT,
        "tid": tid,
        "status": status,
        "return_code": return_code,
        "output": output,
    }
    if stderr:
        result["stderr"] = stderr
    if error:
        result["error"] = error
    result.update({k: v for k, v in detail.items() if v is not None})
    return result


def make_chunk(stream: str, data: str) -> dict[str, Any]:
    return {"type": CHUNK, "stream": stream, "data": data}


def make_input(data: str) -> dict[str, Any]:
    """A line (or any text) for an interactive task's stdin, sent through its inbox."""
    return {"type": "stdin", "data": data}


def make_eof() -> dict[str, Any]:
    return {"type": "eof"}


def decode_input(body: str) -> str | None:
    """Text for the target's stdin, or None for end-of-input. Plain text passes as is."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body
    if isinstance(data, dict) and data.get("type") == "eof":
        return None
    if isinstance(data, dict) and data.get("type") == "stdin":
        return str(data.get("data", ""))
    return body


def encode(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


def decode(body: str) -> dict[str, Any]:
    """Parse an outbox message; anything that is not ours is treated as raw output."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return {"type": "raw", "data": body}
    if isinstance(data, dict) and data.get("type") in (RESULT, CHUNK):
        return data
    return {"type": "raw", "data": data}


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The result as shown to users: without the internal message type."""
    return {k: v for k, v in result.items() if k != "type"}


@dataclass(frozen=True)
class Message:
    """A decoded outbox message and its broker ID."""

    id: int
    data: dict[str, Any]
