"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb, start, yield a DSN, remove.

PostgreSQL refuses to run as root, so as root the cluster belongs to the unprivileged
``postgres`` user (``runuser -u postgres -- initdb ...``); as anyone else it belongs to that
user. The server listens on 127.0.0.1 on a free port (and a Unix socket inside the data
directory), trusts local connections, and is stopped and deleted at the end - also when a
test fails. Without PostgreSQL's server binaries the fixture skips with the reason.

Use it as the session fixture ``pg_cluster`` (import it into a test module) or, outside
pytest, as ``with running_cluster() as cluster: ...``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"
DATABASE = "weft_test"
START_TIMEOUT = 30


class ClusterUnavailable(RuntimeError):
    """PostgreSQL cannot be started here (no binaries, no postgres user)."""


@dataclass(frozen=True)
class PgCluster:
    directory: Path
    port: int
    bin_dir: Path
    database: str = DATABASE

    @property
    def dsn(self) -> str:
        """The test database, as the cluster's (passwordless, trusted) superuser."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_schema(self) -> str:
        """A schema name no one else uses (drop it with ``drop_schema``)."""
        return f"weft_t_{uuid.uuid4().hex[:12]}"

    def drop_schema(self, schema: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def find_bin_dir() -> Path | None:
    """Where ``initdb`` and ``pg_ctl`` live: PATH first, then Debian's versioned directories."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(os.path.realpath(initdb)).parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if (directory / "initdb").exists() and (directory / "pg_ctl").exists():
            return directory
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(argv: list[str]) -> list[str]:
    """Run as the cluster's owner: the ``postgres`` user when we are root, else ourselves."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SUPERUSER, "--", *argv]
    return argv


def _run(argv: list[str], what: str, timeout: float = 60) -> None:
    proc = subprocess.run(
        _as_owner(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ClusterUnavailable(f"{what} failed: {detail[-1] if detail else proc.returncode}")


def start_cluster() -> PgCluster:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise ClusterUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed "
            "(apt-get install postgresql; .ci/run does this)"
        )
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise ClusterUnavailable(
                f"running as root and there is no unprivileged {SUPERUSER!r} user to own a cluster"
            ) from None
        if shutil.which("runuser") is None:
            raise ClusterUnavailable("running as root and runuser is missing")
    # Directly under the system temp dir: pytest's own temp dirs are private to root.
    directory = Path(tempfile.mkdtemp(prefix="weft-pg-"))
    if os.geteuid() == 0:
        os.chown(directory, owner.pw_uid, owner.pw_gid)
    data = directory / "data"
    try:
        _run(
            [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", SUPERUSER,
             "-E", "UTF8", "--no-sync"],
            "initdb",
        )  # fmt: skip
        port = _free_port()
        options = (
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200 -c shared_buffers=32MB"
        )
        _run(
            [str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options,
             "-l", str(directory / "server.log"), "-w", "-t", str(START_TIMEOUT), "start"],
            "pg_ctl start",
            timeout=START_TIMEOUT + 10,
        )  # fmt: skip
        cluster = PgCluster(directory=directory, port=port, bin_dir=bin_dir)
        import psycopg

        with psycopg.connect(
            cluster.dsn_for("postgres"), autocommit=True, connect_timeout=10
        ) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        return cluster
    except BaseException:
        _stop(bin_dir, directory)
        raise


def _stop(bin_dir: Path, directory: Path) -> None:
    data = directory / "data"
    if (data / "postmaster.pid").exists():
        with contextlib.suppress(Exception):
            subprocess.run(
                _as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                           "stop"]),
                capture_output=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
    shutil.rmtree(directory, ignore_errors=True)


def stop_cluster(cluster: PgCluster) -> None:
    """Stop the server (immediately: tests leave nothing worth a checkpoint) and delete it."""
    _stop(cluster.bin_dir, cluster.directory)


@contextlib.contextmanager
def running_cluster() -> Iterator[PgCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


def session_cluster() -> Iterator[PgCluster]:
    """Body of a session fixture: start, yield, stop and remove; skip where none can run."""
    try:
        cluster = start_cluster()
    except ClusterUnavailable as exc:
        pytest.skip(f"PostgreSQL tests skipped: {exc}")
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A PostgreSQL server for the whole session; skips (with the reason) where none can run."""
    yield from session_cluster()
