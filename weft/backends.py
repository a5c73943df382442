"""Where a project's queues live: a SQLite file (one host) or a PostgreSQL schema (many hosts).

The choice comes from the environment first, then ``.weft/config.json``:

- ``WEFT_BACKEND`` / ``"backend"``: ``sqlite`` (default) or ``postgres``;
- ``WEFT_PG_DSN`` / ``"dsn"``: ``postgresql://user@host:port/database`` (or libpq conninfo);
- ``WEFT_PG_SCHEMA`` / ``"schema"``: the schema that holds Weft's tables (default ``weft``).

A password never lives in the config file: it comes from ``PGPASSWORD`` (read by libpq
itself), ``WEFT_PG_PASSWORD``, or libpq's ``~/.pgpass``. Before handing the target to
SimpleBroker, each process checks once that the server answers: the connection pool would
otherwise retry for 30 seconds or more before failing, and its message would be a
traceback rather than one line a person can act on.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from weft.errors import UsageError, WeftError

if TYPE_CHECKING:
    from simplebroker import BrokerTarget

SQLITE = "sqlite"
POSTGRES = "postgres"
BACKENDS = (SQLITE, POSTGRES)
DEFAULT_SCHEMA = "weft"

ENV_BACKEND = "WEFT_BACKEND"
ENV_DSN = "WEFT_PG_DSN"
ENV_SCHEMA = "WEFT_PG_SCHEMA"
ENV_PASSWORD = "WEFT_PG_PASSWORD"
CONNECT_TIMEOUT = float(os.environ.get("WEFT_PG_CONNECT_TIMEOUT", "5"))

PASSWORD_HINT = "set PGPASSWORD or WEFT_PG_PASSWORD (or use ~/.pgpass) instead"
INSTALL_HINT = "pip install 'weft[postgres]' (it adds simplebroker-pg)"

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_CONNINFO_PASSWORD_RE = re.compile(r"(?i)(?:^|\s)password\s*=")


def backend_name(config: Mapping[str, Any]) -> str:
    """The backend this process uses: ``WEFT_BACKEND``, else the config file, else sqlite."""
    if os.environ.get(ENV_BACKEND):
        return normalize_backend(os.environ[ENV_BACKEND], source=ENV_BACKEND)
    return normalize_backend(str(config.get("backend") or SQLITE), source="the config file")


def normalize_backend(raw: str, *, source: str) -> str:
    name = raw.strip().lower()
    if name in ("postgresql", "pg"):
        name = POSTGRES
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {raw!r} ({source}): use sqlite or postgres")
    return name


def is_url(dsn: str) -> bool:
    return dsn.startswith(("postgresql://", "postgres://"))


def dsn_has_password(dsn: str) -> bool:
    """Whether a DSN (URL or ``key=value`` conninfo) carries a password."""
    if is_url(dsn):
        rest = dsn.split("://", 1)[1]
        authority = re.split(r"[/?]", rest, maxsplit=1)[0]
        userinfo, at, _ = authority.rpartition("@")
        query = rest.partition("?")[2]
        return bool(at and ":" in userinfo) or bool(re.search(r"(?i)(^|&)password=", query))
    return bool(_CONNINFO_PASSWORD_RE.search(dsn))


def check_dsn(dsn: str, *, source: str) -> str:
    """A DSN fit to store: non-empty, parseable, password-free. Returns it stripped."""
    dsn = dsn.strip()
    if not dsn:
        raise UsageError(f"{source} is empty: give postgresql://user@host:port/database")
    if dsn_has_password(dsn):
        raise UsageError(
            f"{source} contains a password, which Weft never stores: remove it from the DSN "
            f"and {PASSWORD_HINT}"
        )
    if is_url(dsn):
        try:
            parts = urlsplit(dsn)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError as exc:
            raise UsageError(f"{source} is not a valid PostgreSQL URL: {exc}") from None
        if not parts.path.strip("/"):
            raise UsageError(
                f"{source} names no database: use postgresql://user@host:port/database"
            )
    elif "=" not in dsn:
        raise UsageError(
            f"{source} {dsn!r} is neither a postgresql:// URL nor key=value conninfo "
            "(e.g. postgresql://user@host:5432/weft)"
        )
    return dsn


def check_schema(schema: str, *, source: str) -> str:
    schema = schema.strip()
    if schema == "public":
        raise UsageError(f"{source}: Weft keeps its tables out of schema 'public'; name another")
    if not _SCHEMA_RE.match(schema):
        raise UsageError(
            f"{source} {schema!r} is not a plain identifier (letters, digits and _, "
            "not starting with a digit)"
        )
    return schema


@dataclass(frozen=True)
class PostgresSettings:
    dsn: str
    schema: str

    @property
    def display(self) -> str:
        return describe(self.dsn)


def postgres_settings(config: Mapping[str, Any], *, config_path: str) -> PostgresSettings:
    """DSN and schema from the environment or the config file, validated."""
    env_dsn = os.environ.get(ENV_DSN, "").strip()
    if env_dsn:
        dsn = env_dsn  # the environment may carry a password; it is never written anywhere
        if not dsn_has_password(dsn):
            dsn = check_dsn(dsn, source=ENV_DSN)
    else:
        raw = config.get("dsn")
        if not raw:
            raise UsageError(
                f'the postgres backend needs a DSN: set "dsn" in {config_path} '
                f"(weft init --backend postgres --dsn postgresql://user@host:5432/db) "
                f"or {ENV_DSN}"
            )
        dsn = check_dsn(str(raw), source=f"the dsn in {config_path}")
    env_schema = os.environ.get(ENV_SCHEMA, "").strip()
    if env_schema:
        schema = check_schema(env_schema, source=ENV_SCHEMA)
    else:
        schema = check_schema(
            str(config.get("schema") or DEFAULT_SCHEMA), source=f"the schema in {config_path}"
        )
    return PostgresSettings(dsn=dsn, schema=schema)


def describe(dsn: str) -> str:
    """``user@host:port/database`` for messages: never a password."""
    if is_url(dsn):
        try:
            parts = urlsplit(dsn)
            user = unquote(parts.username or "")
            host = parts.hostname or "localhost"
            port = parts.port or 5432
            database = unquote(parts.path.lstrip("/")) or user
        except ValueError:
            return "the configured PostgreSQL server"
    else:
        pairs = re.findall(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", dsn)
        fields: dict[str, str] = {str(k).lower(): str(v).strip("'") for k, v in pairs}
        user = fields.get("user", "")
        host = fields.get("host", "localhost")
        port = int(fields.get("port", "5432")) if fields.get("port", "").isdigit() else 5432
        database = fields.get("dbname", user)
    return f"{user + '@' if user else ''}{host}:{port}/{database}"


def _plugin_available() -> bool:
    try:
        import simplebroker_pg  # noqa: F401
    except ImportError:
        return False
    return True


def connection_string(settings: PostgresSettings) -> str:
    """The DSN with ``WEFT_PG_PASSWORD`` applied (kept in memory only)."""
    password = os.environ.get(ENV_PASSWORD)
    if not password:
        return settings.dsn
    from psycopg import conninfo

    return str(conninfo.make_conninfo(settings.dsn, password=password))


_checked: set[tuple[int, str]] = set()
_checked_lock = threading.Lock()


def preflight(dsn: str, display: str) -> None:
    """Connect once per process and DSN, so a bad server fails in seconds and in one line."""
    from multiprocessing import parent_process

    if parent_process() is not None:
        # A task process, forked for a manager that reached this server moments ago: a
        # third connection per task (PostgreSQL forks a backend for each) buys nothing.
        return
    key = (os.getpid(), dsn)
    with _checked_lock:
        if key in _checked:
            return
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(CONNECT_TIMEOUT))):
            pass
    except psycopg.Error as exc:
        raise connection_error(exc, display) from None
    with _checked_lock:
        _checked.add(key)


def connection_error(exc: BaseException, display: str) -> WeftError:
    """One actionable line for a failed connection to the PostgreSQL server."""
    text = " ".join(str(exc).split())
    lower = text.lower()
    server = display.rsplit("/", 1)[0]
    host = server.rpartition("@")[2]
    missing_db = re.search(r'database "([^"]+)" does not exist', text)
    if missing_db:
        name = missing_db.group(1)
        return WeftError(
            f"PostgreSQL database {name!r} does not exist on {host}: create it first "
            f"(createdb {name}), or fix the DSN"
        )
    missing_role = re.search(r'role "([^"]+)" does not exist', text)
    if missing_role:
        return WeftError(
            f"PostgreSQL at {host} has no user {missing_role.group(1)!r}: fix the DSN's user"
        )
    if "password" in lower or "authentication failed" in lower:
        return WeftError(
            f"PostgreSQL at {host} refused the login ({_after_failed(text)}): check the DSN's "
            f"user, and {PASSWORD_HINT.removesuffix(' instead')}"
        )
    if "too many" in lower or "connection slots" in lower:
        return WeftError(
            f"PostgreSQL at {host} has no free connections: raise max_connections or run "
            "fewer Weft processes (docs/scale-out.md, connection budget)"
        )
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("resolve host", "unknown host name"),
        ("timeout", f"no answer within {CONNECT_TIMEOUT:g}s"),
        ("no route to host", "no route to host"),
        ("network is unreachable", "network unreachable"),
        ("no such file or directory", "no server socket there"),
    ):
        if needle in lower:
            return WeftError(
                f"cannot reach the PostgreSQL server at {host} ({reason}): "
                "is it running, and is the DSN right?"
            )
    return WeftError(f"cannot connect to PostgreSQL at {display}: {_after_failed(text)}")


def _after_failed(text: str) -> str:
    """The server's own words from a libpq error, without the connection preamble."""
    tail = text.rsplit("failed:", 1)[-1].strip()
    return tail.removeprefix("FATAL:").strip() or text


def postgres_target(settings: PostgresSettings, *, check: bool = True) -> BrokerTarget:
    """A SimpleBroker target for the ``simplebroker_pg`` plugin, after a reachability check."""
    if not _plugin_available():
        raise WeftError(f"the postgres backend is not installed: {INSTALL_HINT}")
    dsn = connection_string(settings)
    if check:
        preflight(dsn, settings.display)
    target: BrokerTarget = _target_class()(
        backend_name=POSTGRES,
        target=dsn,
        backend_options={"schema": settings.schema},
    )
    return target


@functools.cache
def _plugin() -> Any:
    from simplebroker._backend_plugins import get_backend_plugin

    return get_backend_plugin(POSTGRES)


@functools.cache
def _target_class() -> type[BrokerTarget]:
    """``BrokerTarget`` that finds its plugin once per process.

    SimpleBroker resolves ``target.plugin`` through ``importlib.metadata`` entry points on
    every access (about 8 ms each, several per queue handle): a task process paid ~50 ms
    for it. The plugin object is the same every time, so it is looked up once and kept.
    """
    from simplebroker import BrokerTarget

    class CachedPluginTarget(BrokerTarget):
        @property
        def plugin(self) -> Any:
            return _plugin()

    return CachedPluginTarget
