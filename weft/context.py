"""The project: finding or creating ``.weft/``, its settings, and its broker target.

A project is a directory holding ``.weft/``. Commands find the nearest one searching upward
from the working directory (like git); ``--context DIR`` or ``WEFT_CONTEXT`` override that.
Settings come from the environment first, then ``.weft/config.json``, then defaults.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from weft.errors import UsageError, WeftError

N = TypeVar("N", int, float)

if TYPE_CHECKING:
    from simplebroker import BrokerTarget, Config

WEFT_DIR = ".weft"
CONFIG_FILE = "config.json"
BROKER_FILE = "broker.db"
SUBDIRS = ("outputs", "logs")
AUTOSTART_DIR = "autostart"

ENV_CONTEXT = "WEFT_CONTEXT"
DEFAULT_IDLE_TIMEOUT = 600.0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90', '30s', '15m', '12h', '7d', '2w' -> seconds."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise UsageError(f"invalid duration {text!r}: use e.g. 30s, 15m, 12h, 7d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{name}={raw!r} is not a boolean: use true or false")


def _env_number(name: str, default: N, parse: Callable[[str], N], what: str) -> N:
    """A non-negative number from the environment; a bad one is a one-line UsageError."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not {what}") from None
    if value < 0:
        raise UsageError(f"{name}={raw!r} must not be negative")
    return value


def _env_float(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number of seconds")


def _env_count(name: str, default: int) -> int:
    return _env_number(name, default, int, "a whole number")


def _env_retention() -> float | None:
    raw = os.environ.get("WEFT_RETENTION", "").strip()
    if not raw or raw.lower() in ("off", "none", "never"):
        return None
    try:
        return parse_duration(raw)
    except UsageError:
        raise UsageError(f"WEFT_RETENTION={raw!r} is not a duration (e.g. 7d, 12h)") from None


@dataclass(frozen=True)
class Settings:
    """Run-time knobs, read once per process from the environment."""

    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    manager_reuse: bool = True
    autostart: bool = True
    retention: float | None = None  # finished tasks older than this are pruned by the manager
    warm_task_processes: int = 8  # idle task processes kept for the next tasks (task_pool)
    warm_task_idle: float = 5.0  # seconds an idle task process waits before it is retired

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            idle_timeout=_env_float("WEFT_MANAGER_LIFETIME_TIMEOUT", DEFAULT_IDLE_TIMEOUT),
            manager_reuse=_env_bool("WEFT_MANAGER_REUSE_ENABLED", True),
            autostart=_env_bool("WEFT_AUTOSTART_TASKS", True),
            retention=_env_retention(),
            warm_task_processes=_env_count("WEFT_WARM_TASK_PROCESSES", 8),
            warm_task_idle=_env_float("WEFT_WARM_TASK_IDLE_SECONDS", 5.0),
        )


@dataclass(frozen=True)
class WeftContext:
    """One project: where it lives and how to reach its broker."""

    root: Path
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def weft_dir(self) -> Path:
        return self.root / WEFT_DIR

    @property
    def name(self) -> str:
        """Short project name used in process titles."""
        return self.root.name or "root"

    @property
    def outputs_dir(self) -> Path:
        return self.weft_dir / "outputs"

    @property
    def logs_dir(self) -> Path:
        return self.weft_dir / "logs"

    @property
    def autostart_dir(self) -> Path:
        return self.weft_dir / AUTOSTART_DIR

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgres``: ``WEFT_BACKEND``, else the config file (weft.backends)."""
        from weft.backends import backend_name

        return backend_name(self.config)

    @cached_property
    def broker_config(self) -> Config:
        """SimpleBroker's resolved config (BROKER_* env applied), shared by every queue handle.

        One default differs from SimpleBroker's: SQLite's ``synchronous=NORMAL`` instead of
        ``FULL``. In WAL mode a commit then survives any crash of a process (what Weft's
        guarantees are about) but not an OS crash or power cut, and no commit waits for a
        disk flush while holding the write lock: several times the task throughput.
        ``BROKER_SYNC_MODE=FULL`` restores SimpleBroker's default (docs/reliability.md).
        """
        from simplebroker import resolve_config

        env = dict(os.environ)
        env.setdefault("BROKER_SYNC_MODE", "NORMAL")
        return resolve_config(env=env)

    @cached_property
    def broker_target(self) -> str | BrokerTarget:
        """The one place that decides which database the project's queues live in."""
        if self.backend == "sqlite":
            return str(self.weft_dir / BROKER_FILE)
        from weft.backends import postgres_settings, postgres_target

        settings = postgres_settings(self.config, config_path=str(self.weft_dir / CONFIG_FILE))
        return postgres_target(settings)

    def to_env(self) -> dict[str, str]:
        """Environment that points a child process at this same project."""
        return {ENV_CONTEXT: str(self.root)}


def _read_config(weft_dir: Path) -> dict[str, Any]:
    path = weft_dir / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise WeftError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise WeftError(f"{path} must hold a JSON object")
    return data


def find_root(start: Path) -> Path | None:
    """Nearest directory at or above ``start`` that holds ``.weft/``."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / WEFT_DIR).is_dir():
            return directory
    return None


def _explicit_root(explicit: str | Path | None) -> Path | None:
    raw = explicit if explicit is not None else os.environ.get(ENV_CONTEXT) or None
    if raw is None:
        return None
    path = Path(raw).expanduser()
    source = "--context" if explicit is not None else ENV_CONTEXT
    if not path.is_dir():
        raise UsageError(f"{source} directory {str(raw)!r} does not exist")
    path = path.resolve()
    if path.name == WEFT_DIR:
        path = path.parent
    return path


def init_project(
    directory: Path, *, autostart: bool = True, config: dict[str, Any] | None = None
) -> tuple[WeftContext, bool]:
    """Create ``.weft/`` in ``directory`` (or complete an existing one). Returns (ctx, created).

    ``config`` entries override the stored ones (a ``None`` value removes one). A PostgreSQL
    backend is checked (DSN, server, database) before anything is written.
    """
    weft_dir = directory / WEFT_DIR
    created = not weft_dir.exists()
    config_path = weft_dir / CONFIG_FILE
    existing = _read_config(weft_dir)
    changed = not config_path.exists() or bool(config and config != existing)
    if changed:
        merged = {"version": 1, "backend": "sqlite", **existing, **(config or {})}
        existing = {k: v for k, v in merged.items() if v is not None}
    ctx = WeftContext(root=directory.resolve(), config=existing)
    if ctx.backend != "sqlite":
        ctx.broker_target  # noqa: B018 - reach the server before writing anything
    weft_dir.mkdir(parents=True, exist_ok=True)
    for sub in SUBDIRS:
        (weft_dir / sub).mkdir(exist_ok=True)
    if autostart:
        (weft_dir / AUTOSTART_DIR).mkdir(exist_ok=True)
    if changed:
        tmp = config_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(existing, indent=2) + "\n", encoding="utf-8")
        tmp.replace(config_path)
    from weft.broker import Broker

    with Broker(ctx) as broker:
        broker.ensure_created()
    return ctx, created


def load_context(explicit: str | Path | None = None, *, create: bool = True) -> WeftContext:
    """The project for this command: explicit, else discovered upward, else created here.

    Creating one prints a single line on stderr so a user is never surprised by a new ``.weft/``.
    """
    root = _explicit_root(explicit)
    if root is None:
        root = find_root(Path.cwd())
    if root is not None and (root / WEFT_DIR).is_dir():
        return WeftContext(root=root, config=_read_config(root / WEFT_DIR))
    if not create:
        where = root if root is not None else Path.cwd()
        raise UsageError(f"no weft project at or above {where}: run 'weft init' first")
    target = root if root is not None else Path.cwd().resolve()
    ctx, _ = init_project(target)
    print(f"weft: created a new project in {ctx.weft_dir}", file=sys.stderr)
    return ctx
