"""The TaskSpec: what to run and how, validated once at the edge.

``spec`` and ``io`` describe the work and cannot change after creation; ``state`` and
``metadata`` can. Unknown fields are rejected so a typo never silently does nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from weft.errors import UsageError

FUNCTION_TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
DOTTED_TARGET = re.compile(r"^[A-Za-z_][\w.]*\.[A-Za-z_]\w*$")
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
ReservedPolicy = Literal["keep", "requeue", "clear"]


def _read_only(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


# ``spec`` and ``io`` are frozen all the way down: their mappings are read-only views and
# their sequences tuples, so neither assignment nor in-place change can alter a created task.
FrozenStrMap = Annotated[
    Mapping[str, str], AfterValidator(_read_only), PlainSerializer(dict, return_type=dict[str, str])
]
FrozenAnyMap = Annotated[
    Mapping[str, Any], AfterValidator(_read_only), PlainSerializer(dict, return_type=dict[str, Any])
]


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int | None = Field(
        default=None, gt=0, description="Peak memory of the task tree, MB"
    )
    cpu_percent: int | None = Field(
        default=None, ge=1, le=100, description="CPU ceiling, % of a core"
    )
    max_fds: int | None = Field(default=None, gt=0, description="Open file descriptors")
    max_connections: int | None = Field(default=None, ge=0, description="Open network connections")

    def is_empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["command", "function"] = "command"
    process_target: tuple[str, ...] | None = None
    function_target: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: FrozenAnyMap = Field(default_factory=dict)
    timeout: float | None = Field(default=None, gt=0, description="Seconds; null for none")
    limits: Limits = Field(default_factory=Limits)
    env: FrozenStrMap = Field(default_factory=dict)
    cwd: str | None = None
    stream_output: bool = False
    interactive: bool = False
    cleanup_on_exit: bool = False
    reserved_policy: ReservedPolicy = "keep"

    @field_validator("function_target")
    @classmethod
    def _function_form(cls, value: str | None) -> str | None:
        if value is not None and ":" not in value and DOTTED_TARGET.match(value):
            # The seed's autostart templates write "package.module.function".
            module, _, func = value.rpartition(".")
            value = f"{module}:{func}"
        if value is not None and not FUNCTION_TARGET.match(value):
            raise ValueError(f"{value!r} is not of the form 'module:function'")
        return value

    @model_validator(mode="after")
    def _target_matches_type(self) -> Spec:
        if self.type == "command":
            if not self.process_target:
                raise ValueError("a command task needs a non-empty process_target (argv list)")
            if not self.process_target[0]:
                raise ValueError("process_target[0] (the program) must not be empty")
            if self.function_target is not None:
                raise ValueError("function_target is only for type 'function'")
        else:
            if not self.function_target:
                raise ValueError("a function task needs function_target ('module:function')")
            if self.process_target is not None:
                raise ValueError("process_target is only for type 'command'")
        return self


def _check_queue_names(value: dict[str, str]) -> dict[str, str]:
    for key, queue in value.items():
        if not QUEUE_NAME.match(queue) or len(queue) > 512:
            raise ValueError(
                f"{key}: {queue!r} is not a valid queue name "
                "(letters, digits, '.', '_', '-'; not starting with '.' or '-')"
            )
    return value


class IO(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: FrozenStrMap = Field(default_factory=dict)
    outputs: FrozenStrMap = Field(default_factory=dict)

    _inputs_ok = field_validator("inputs")(_check_queue_names)
    _outputs_ok = field_validator("outputs")(_check_queue_names)


class Metadata(BaseModel):
    """Free-form labels; ``tags`` is the one field Weft itself reads (filters)."""

    model_config = ConfigDict(extra="allow")

    tags: list[str] = Field(default_factory=list)


class State(BaseModel):
    """Where the task is in its life. The only part that changes while it runs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    status: str = "created"
    task_pid: int | None = None
    return_code: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    error: str | None = None


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = ""
    spec: Spec
    io: IO = Field(default_factory=IO)
    metadata: Metadata = Field(default_factory=Metadata)
    tid: str | None = None
    state: State = Field(default_factory=State)

    _IMMUTABLE = frozenset({"spec", "io"})

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._IMMUTABLE:
            raise AttributeError(f"TaskSpec.{name} cannot be changed once the task is created")
        super().__setattr__(name, value)

    @model_validator(mode="after")
    def _default_name(self) -> TaskSpec:
        if not self.name:
            if self.spec.type == "command" and self.spec.process_target:
                default = self.spec.process_target[0].rsplit("/", 1)[-1]
            else:
                default = (self.spec.function_target or "task").rsplit(":", 1)[-1]
            object.__setattr__(self, "name", default)
        return self

    @field_validator("tid")
    @classmethod
    def _tid_form(cls, value: str | None) -> str | None:
        if value is not None and not (len(value) == 19 and value.isdigit()):
            raise ValueError("tid must be 19 digits")
        return value

    @property
    def is_queue_fed(self) -> bool:
        return bool(self.io.inputs)

    def describe(self) -> str:
        """One line naming what runs: the argv or the function."""
        if self.spec.type == "command":
            import shlex

            return shlex.join(self.spec.process_target or [])
        return str(self.spec.function_target)


def format_validation_error(exc: ValidationError) -> str:
    """One line: each problem as ``field.path: what is wrong``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def parse_taskspec(data: str | bytes | dict[str, Any], *, source: str = "TaskSpec") -> TaskSpec:
    """Validate JSON text or a dict into a TaskSpec; errors become a one-line UsageError."""
    import json

    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    if not isinstance(data, dict):
        raise UsageError(f"{source} must be a JSON object, not {type(data).__name__}")
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"invalid {source}: {format_validation_error(exc)}") from None


def build_spec(**options: Any) -> TaskSpec:
    """A TaskSpec from the options a person types (``weft run``) or a program passes
    (see ``weft.spec_options.spec_data`` for the options)."""
    from weft.spec_options import spec_data

    return parse_taskspec(spec_data(**options), source="task options")
