"""``weft init``, ``weft dump`` and ``weft load``: creating a project and moving its data."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import typer

from weft.cli import common
from weft.cli.common import handle_errors
from weft.errors import UsageError, WeftError


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    app.command("dump")(dump)
    app.command("load")(load)


def _shown(weft_dir: Path) -> str:
    """``.weft/`` when it is right here, else its full path."""
    try:
        rel = weft_dir.relative_to(Path.cwd().resolve())
    except ValueError:
        return f"{weft_dir}/"
    return f"{rel}/"


@handle_errors
def init(
    autostart: bool = typer.Option(
        True,
        "--autostart/--no-autostart",
        help="Create .weft/autostart/ for task templates the manager launches on start.",
    ),
    backend: str | None = typer.Option(
        None,
        "--backend",
        metavar="sqlite|postgres",
        help="Where the queues live: sqlite (.weft/broker.db, default) or postgres (shared "
        "by managers on several hosts).",
    ),
    dsn: str | None = typer.Option(
        None,
        "--dsn",
        metavar="URL",
        help="PostgreSQL database, postgresql://user@host:port/db (implies --backend postgres). "
        "No password here: set PGPASSWORD or WEFT_PG_PASSWORD.",
    ),
    schema: str | None = typer.Option(
        None, "--schema", help="PostgreSQL schema for Weft's tables (default: weft)."
    ),
) -> None:
    """Create a weft project (.weft/) here, or in --context DIR.

    Safe to run again: an existing project keeps everything it holds. Inside an existing
    project (a .weft/ above), nothing is created.

    Several hosts share work through one PostgreSQL database (see docs/scale-out.md):
      weft init --backend postgres --dsn postgresql://weft@db.example:5432/weft
    """
    from weft.context import WEFT_DIR, _explicit_root, _read_config, find_root, init_project

    explicit = _explicit_root(common._state["context"])
    target = explicit or Path.cwd().resolve()
    existing = find_root(target)
    if explicit is None and existing is not None and existing != target:
        # Discovery found a project above: that is this directory's project. Naming a
        # directory with --context DIR (or WEFT_CONTEXT) creates one there on purpose.
        print(
            f"Already inside the weft project at {_shown(existing / WEFT_DIR)}; nothing created "
            "(weft --context DIR init creates a separate project in DIR)"
        )
        return
    keys = ("backend", "dsn", "schema")
    before = {k: v for k, v in _read_config(target / WEFT_DIR).items() if k in keys}
    config = _backend_config(target / WEFT_DIR, backend, dsn, schema)
    ctx, created = init_project(target, autostart=autostart, config=config)
    after = {k: v for k, v in ctx.config.items() if k in keys}
    where = _shown(ctx.weft_dir)
    using = ""
    if ctx.backend != "sqlite":
        from weft.backends import postgres_settings

        settings = postgres_settings(ctx.config, config_path=str(ctx.weft_dir / "config.json"))
        using = f" (PostgreSQL {settings.display}, schema {settings.schema})"
    if created:
        print(f"Initialized weft in {where}{using}")
    elif after != before:
        print(f"Weft in {where} now uses {using.strip(' ()') or 'SQLite (.weft/broker.db)'}")
    else:
        print(f"Weft is already initialized in {where} (everything in it is kept){using}")


def _backend_config(
    weft_dir: Path, backend: str | None, dsn: str | None, schema: str | None
) -> dict[str, Any] | None:
    """The config entries ``--backend/--dsn/--schema`` ask for (None: leave the config as is)."""
    from weft import backends
    from weft.context import _read_config

    if backend is None and dsn is None and schema is None:
        return None
    stored = _read_config(weft_dir)
    if backend is not None:
        name = backends.normalize_backend(backend, source="--backend")
    elif dsn is not None:
        name = backends.POSTGRES
    else:
        name = backends.backend_name(stored)
    if name == backends.SQLITE:
        if dsn is not None or schema is not None:
            raise UsageError("--dsn and --schema go with --backend postgres")
        if stored.get("backend", "sqlite") == "sqlite":
            return None
        return {"backend": "sqlite", "dsn": None, "schema": None}
    config: dict[str, Any] = {"backend": "postgres"}
    if dsn is not None:
        config["dsn"] = backends.check_dsn(dsn, source="--dsn")
    elif not stored.get("dsn") and not os.environ.get(backends.ENV_DSN):
        raise UsageError(
            "--backend postgres needs --dsn postgresql://user@host:port/database "
            f"(or {backends.ENV_DSN} in the environment)"
        )
    if schema is not None:
        config["schema"] = backends.check_schema(schema, source="--schema")
    elif "schema" not in stored:
        config["schema"] = backends.DEFAULT_SCHEMA
    return config


@handle_errors
def dump(
    output_file: str | None = typer.Option(
        None, "--output", "-o", metavar="FILE", help="Write here instead of stdout."
    ),
) -> None:
    """Write the whole database (queues, messages with their IDs, aliases) as JSON lines.

    Restore it with 'weft load'. Example: weft dump -o backup.jsonl
    """
    output = None if output_file is None else Path(output_file)
    with common.client(create=False) as c:
        lines = c.queue.dump()
        if output is None:
            for line in lines:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            return
        tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                for line in lines:
                    fh.write(line + "\n")
            tmp.replace(output)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise WeftError(f"cannot write {output}: {exc.strerror or exc}") from None


@handle_errors
def load(
    input_file: str | None = typer.Option(
        None, "--input", "-i", metavar="FILE", help="Read from here instead of stdin."
    ),
) -> None:
    """Load a 'weft dump' into this project, keeping every message ID.

    Meant for a fresh project. Every line is checked first: a bad one is reported with its
    line number and nothing is loaded. Example: weft load -i backup.jsonl
    """
    with common.client() as c:
        if input_file is None:
            messages, aliases = c.queue.load(sys.stdin)
        else:
            try:
                fh = open(input_file, encoding="utf-8")  # noqa: SIM115 - closed by the with below
            except OSError as exc:
                raise WeftError(f"cannot read {input_file}: {exc.strerror or exc}") from None
            with fh:
                messages, aliases = c.queue.load(fh)
    print(
        f"Loaded {messages} message{'' if messages == 1 else 's'} "
        f"and {aliases} alias{'' if aliases == 1 else 'es'}"
    )
