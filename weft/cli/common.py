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
    """Keep pydantic out of start-up: coerce plain text and flag parameters without it.

    Typer >= 0.2x builds a pydantic TypeAdapter for every parameter it coerces when a command
    runs, which imports pydantic (~40-60 ms) even for ``weft queue write q x``. ``str`` and
    ``bool`` parameters need nothing beyond click's parsing, so they get a plain coercion
    here; every other type keeps Typer's own. If Typer's internals change, this does nothing.
    """
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

    @dataclass(frozen=True)
    class _Plain(base):  # type: ignore[misc, valid-type]
        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            if isinstance(value, bytes):
                value = value.decode(sys.getfilesystemencoding(), "surrogateescape")
            if self.annotation is str or isinstance(value, bool):
                return str(value) if self.annotation is str else value
            text = str(value).strip().lower()
            if text in truthy or text in falsy:
                return text in truthy
            raise BadParameter(f"{value!r} is not a boolean", ctx=ctx, param=param)

    original = param_cls.get_runtime_param

    def get_runtime_param(self: Any) -> Any:
        desc = getattr(self, "type_descriptor", None)
        if (
            getattr(self, "_runtime_param", None) is None
            and desc is not None
            and desc.annotation in (str, bool)
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
