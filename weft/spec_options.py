"""Task options (what ``weft run`` and ``WeftClient.run`` take) turned into TaskSpec data.

This module does not import pydantic, so that ``weft run`` starts fast. It checks exactly
the constraints the TaskSpec model puts on the fields options can set (the model stays the
authority: the task process validates every request again, and a test holds the two in
agreement), and it produces the request body the client writes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from weft.errors import UsageError

FUNCTION_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
POLICIES = ("keep", "requeue", "clear")


@dataclass(frozen=True)
class PreparedSpec:
    """A checked request body, ready to write to ``weft.spawn.requests``."""

    body: str
    type: str
    stream_output: bool
    interactive: bool


def pairs(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {item!r} must look like KEY=VALUE")
        out[key] = value
    return out


def spec_data(
    *,
    command: list[str] | None = None,
    function: str | None = None,
    args: list[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    timeout: float | None = None,
    memory: int | None = None,
    cpu: int | None = None,
    env: dict[str, str] | list[str] | None = None,
    tags: list[str] | None = None,
    stream_output: bool = False,
    interactive: bool = False,
    cleanup_on_exit: bool = False,
    reserved_policy: str = "keep",
    cwd: str | None = None,
    inputs: dict[str, str] | None = None,
    outputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """TaskSpec data (a plain dict) from task options; the checks every caller needs."""
    if command is not None and function is not None:
        raise UsageError("give a command or --function, not both")
    if command is None and function is None:
        raise UsageError("nothing to run: give a command, --function or --spec")
    if command is not None and (not command or not command[0].strip()):
        raise UsageError("the command is empty")
    env_map = env if isinstance(env, dict) else pairs(env, "--env")
    for tag in tags or []:
        if not tag.strip():
            raise UsageError("--tag must not be empty")
    spec: dict[str, Any] = {
        "type": "command" if command is not None else "function",
        "args": args or [],
        "kwargs": kwargs or {},
        "timeout": timeout,
        "limits": {"memory_mb": memory, "cpu_percent": cpu},
        "env": env_map,
        "stream_output": stream_output,
        "interactive": interactive,
        "cleanup_on_exit": cleanup_on_exit,
        "reserved_policy": reserved_policy,
        "cwd": cwd,
    }
    if command is not None:
        spec["process_target"] = list(command)
    else:
        spec["function_target"] = function
    data: dict[str, Any] = {
        "spec": spec,
        "io": {"inputs": inputs or {}, "outputs": outputs or {}},
        "metadata": {"tags": list(tags or [])},
    }
    if name:
        data["name"] = name
    return data


def _number(value: Any, kinds: tuple[type, ...]) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


def prepare(data: dict[str, Any]) -> PreparedSpec | None:
    """A checked body for ``data`` when the fast checks cover it, else None (use the model).

    Covered: data from ``spec_data`` for a command or function with no queue I/O. A value
    the model would reject raises the same kind of one-line UsageError.
    """
    spec = data["spec"]
    if data["io"]["inputs"] or data["io"]["outputs"]:
        return None  # queue names: leave them to the model's rules
    problems = []
    timeout = spec["timeout"]
    if timeout is not None and not (_number(timeout, (int, float)) and timeout > 0):
        problems.append("spec.timeout: Input should be greater than 0")
    memory = spec["limits"]["memory_mb"]
    if memory is not None and not (_number(memory, (int,)) and memory > 0):
        problems.append("spec.limits.memory_mb: Input should be greater than 0")
    cpu = spec["limits"]["cpu_percent"]
    if cpu is not None and not (_number(cpu, (int,)) and 1 <= cpu <= 100):
        problems.append("spec.limits.cpu_percent: Input should be between 1 and 100")
    if spec["reserved_policy"] not in POLICIES:
        problems.append(f"spec.reserved_policy: Input should be one of {', '.join(POLICIES)}")
    target = spec.get("function_target")
    if spec["type"] == "function" and not FUNCTION_TARGET.match(str(target or "")):
        problems.append(f"spec.function_target: {target!r} is not of the form 'module:function'")
    if problems:
        raise UsageError(f"invalid task options: {'; '.join(problems)}")
    if not data.get("name"):
        if spec["type"] == "command":
            data = {**data, "name": spec["process_target"][0].rsplit("/", 1)[-1]}
        else:
            data = {**data, "name": str(target).rsplit(":", 1)[-1]}
    try:
        json.dumps(data, ensure_ascii=False).encode()  # text that is not valid UTF-8 fails
        body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        return None  # NaN, a lone surrogate, an odd value: the model says what is wrong
    return PreparedSpec(
        body=body,
        type=spec["type"],
        stream_output=bool(spec["stream_output"]),
        interactive=bool(spec["interactive"]),
    )
