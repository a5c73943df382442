"""Entry point: the top-level Typer app and its command groups.

Each command group lives in its own module and imports heavy dependencies inside its
command functions, so ``weft --help`` and queue commands stay fast.
"""

from __future__ import annotations

from weft.lazy_imports import defer_rarely_used_imports

defer_rarely_used_imports()

import typer  # noqa: E402

from weft import __version__  # noqa: E402
from weft.cli import common  # noqa: E402

app = typer.Typer(
    name="weft",
    help=(
        "Durable task runner: run commands and Python functions in isolated processes, "
        "with results, logs and messages kept in durable queues under .weft/."
    ),
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"weft {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    context: str | None = typer.Option(
        None,
        "--context",
        "-C",
        help="Project directory (holding .weft/). Default: search upward; env WEFT_CONTEXT.",
        metavar="DIR",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    common.set_context_option(context)


def _register() -> None:
    from weft.cli import init_cmd, queue_cmd, system_cmd, task_cmds

    init_cmd.register(app)
    task_cmds.register(app)
    queue_cmd.register(app)
    system_cmd.register(app)


_register()


def main() -> None:
    """Run the CLI, then leave at once.

    Every write a command makes is committed when it returns, so there is nothing left for
    the interpreter's shutdown to do but tear down the modules we imported, which costs a
    CLI call tens of milliseconds. Flush what we printed and exit with the code.
    """
    import os
    import sys

    try:
        app()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    main()
