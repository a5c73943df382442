"""What every command shares: the project option, the client, and error-to-exit-code mapping."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer

from weft.errors import EXIT_ERROR, WeftError

if TYPE_CHECKING:
    from weft.client import WeftClient

P = ParamSpec("P")
R = TypeVar("R")

# Set by the top-level callback from --context; None means "discover".
_state: dict[str, Any] = {"context": None}


def _plain_params_without_pydantic() -> None:
    """Keep pydantic out of start-up: coerce plain CLI parameters without it.

    Typer 0.29 builds a pydantic TypeAdapter for every parameter it coerces when a command
    runs, which imports pydantic (~40-60 ms) on every call. Our parameters are plain text,
    flags, numbers, paths and lists or optionals of those, which need nothing beyond a
    conversion; they get that here, and any other type keeps Typer's own. This touches Typer
    internals (hence the pinned Typer range in pyproject); if they differ, it does nothing.
    """
    import types
    import typing
    from pathlib import Path

    try:
        from dataclasses import dataclass

        from typer import _coercion, core
        from typer._click.exceptions import BadParameter
    except ImportError:  # pragma: no cover - another Typer
        return
    param_cls = getattr(core, "_TyperParameter", None)
    base = getattr(_coercion, "RuntimeParam", None)
    if param_cls is None or base is None or not hasattr(param_cls, "get_runtime_param"):
        return
    truthy = {"1", "true", "t", "yes", "y", "on"}
    falsy = {"0", "false", "f", "no", "n", "off"}
    scalars: tuple[type, ...] = (str, bool, int, float, Path)

    def inner(annotation: Any) -> tuple[Any, bool] | None:
        """(scalar type, is a list) for the annotations we convert ourselves, else None."""
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(annotation) if a is not type(None)]
            return inner(rest[0]) if len(rest) == 1 else None
        if origin in (list, tuple):
            args = typing.get_args(annotation)
            if len(args) == 1 and args[0] in scalars:
                return args[0], True
            return None
        return (annotation, False) if annotation in scalars else None

    def convert(kind: Any, value: Any, param: Any, ctx: Any) -> Any:
        if isinstance(value, bytes):
            value = value.decode(sys.getfilesystemencoding(), "surrogateescape")
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in truthy or text in falsy:
                return text in truthy
            raise BadParameter(f"{value!r} is not a boolean", ctx=ctx, param=param)
        if kind in (int, float):
            try:
                return kind(value)
            except (TypeError, ValueError):
                word = "an integer" if kind is int else "a number"
                raise BadParameter(f"{value!r} is not {word}", ctx=ctx, param=param) from None
        return kind(value)

    @dataclass(frozen=True)
    class _Plain(base):  # type: ignore[misc, valid-type]
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            kind, many = inner(self.annotation) or (str, False)
            if many:
                return [convert(kind, item, param, ctx) for item in value]
            return convert(kind, value, param, ctx)

    original = param_cls.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        desc = getattr(self, "type_descriptor", None)
        if (
            getattr(self, "_runtime_param", None) is None
            and desc is not None
            and inner(desc.annotation) is not None
            and desc.file_annotation is None
            and desc.parameter_info.parser is None
        ):
            self._runtime_param = _Plain(
                parameter_info=desc.parameter_info, annotation=desc.annotation
            )
        return original(self)

    param_cls.get_runtime_param = get_runtime_param


_plain_params_without_pydantic()


def set_context_option(value: str | None) -> None:
    _state["context"] = value


def client(*, create: bool = True) -> WeftClient:
    """The client for this invocation's project (created here, with a note, if none exists)."""
    from weft.client import WeftClient

    return WeftClient.open(_state["context"], create=create)


def fail(message: str, code: int) -> typer.Exit:
    print(f"weft: {message}", file=sys.stderr)
    return typer.Exit(code)


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn WeftError into its one-line message and exit code; Ctrl-C into a quiet 130."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except WeftError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, separators=(",", ":"), default=str) + "\n")
    sys.stdout.flush()
