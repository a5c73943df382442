"""The PostgreSQL backend and many managers, against a real server the suite starts itself.

The core behaviour runs on both backends (``backend`` is parametrized): what works on SQLite
must work unchanged on PostgreSQL. Then the scale-out cases, PostgreSQL only: two managers,
each in its own working directory with its own WEFT_HOST, share one database; every request
is claimed exactly once; losing a host (SIGKILL of its manager and everything under it)
hands its claimed requests to the survivor and fails its running tasks, naming the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests import pg_cluster as pgc
from tests.conftest import Weft, _clean_env, _stop_managers
from tests.helpers import wait_for

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def cluster() -> Iterator[pgc.PgCluster]:
    yield from pgc.session_cluster()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def project(
    backend: str, weft: Weft, workdir: Path, request: pytest.FixtureRequest
) -> Iterator[Path]:
    """An initialised project on the backend under test; its schema is dropped afterwards."""
    if backend == "sqlite":
        r = weft("init")
        assert r.returncode == 0, r.stderr
        yield workdir
        return
    cluster: pgc.PgCluster = request.getfixturevalue("cluster")
    schema = cluster.new_schema()
    try:
        r = weft("init", "--backend", "postgres", "--dsn", cluster.dsn, "--schema", schema)
        assert r.returncode == 0, r.stderr
        assert f"schema {schema}" in r.stdout
        yield workdir
    finally:
        _stop_managers(workdir)
        cluster.drop_schema(schema)


def _log(cluster: pgc.PgCluster, schema: str) -> list[dict[str, object]]:
    """The task log read straight from PostgreSQL (independent of Weft's reader)."""
    import psycopg

    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        rows = conn.execute(
            f'SELECT body FROM "{schema}".messages WHERE queue = %s ORDER BY ts',
            ("weft.tasks.log",),
        ).fetchall()
    return [json.loads(body) for (body,) in rows]


# -- the same behaviour on both backends --------------------------------------------------


def test_init_records_the_backend(backend: str, project: Path) -> None:
    config = json.loads((project / ".weft" / "config.json").read_text())
    assert config["backend"] == backend
    if backend == "postgres":
        assert config["dsn"].startswith("postgresql://postgres@127.0.0.1:")
        assert ":" not in config["dsn"].split("//")[1].split("@")[0]  # no password stored
        assert not (project / ".weft" / "broker.db").exists()


def test_run_output_and_exit_codes(weft: Weft, project: Path) -> None:
    r = weft("run", "echo", "hello world")
    assert (r.returncode, r.stdout, r.stderr) == (0, "hello world\n", "")
    r = weft("run", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
    r = weft("run", "no-such-command-xyz")
    assert r.returncode == 127 and "command not found" in r.stderr


def test_no_wait_then_result(weft: Weft, project: Path) -> None:
    tid = weft("run", "--no-wait", "echo", "later").stdout.strip()
    assert len(tid) == 19 and tid.isdigit()
    r = weft("result", tid[-10:], "--timeout", "30")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert (data["tid"], data["status"], data["output"]) == (tid, "completed", "later\n")
    gone = weft("result", tid, "--timeout", "5")
    assert gone.returncode == 2 and "already read" in gone.stderr


def test_status_shows_manager_and_tasks(backend: str, weft: Weft, project: Path) -> None:
    assert weft("run", "true").returncode == 0
    assert weft("run", "false").returncode == 1
    r = weft("status", "--all")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Manager: Running (PID ")
    if backend == "postgres":  # several hosts may share it: say which one runs what
        assert lines[0].endswith(f", host {_default_host()})")
        assert "HOST" in lines[3]
    else:
        assert lines[0].endswith("idle timeout: 600s)") and "HOST" not in r.stdout
    assert lines[1] == "Tasks: 2 total (1 completed, 1 failed)"
    data = json.loads(weft("status", "--all", "--json").stdout)
    assert {t["host"] for t in data["tasks"]} == {_default_host()}
    assert [m["host"] for m in data["managers"]] == [_default_host()]


def test_queue_write_peek_read_and_empty(weft: Weft, project: Path) -> None:
    assert weft("queue", "write", "jobs", "first").returncode == 0
    assert weft("queue", "write", "jobs", "second").returncode == 0
    assert weft("queue", "peek", "jobs").stdout == "first\n"
    assert weft("queue", "read", "jobs", "--all").stdout == "first\nsecond\n"
    empty = weft("queue", "read", "jobs")
    assert empty.returncode == 2 and empty.stderr.count("\n") == 1


def test_python_api_submit_and_result(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from weft.client import WeftClient

    for key in [k for k in os.environ if k.startswith(("WEFT_", "BROKER_"))]:
        monkeypatch.delenv(key)
    with WeftClient.open(project) as client:
        tid = client.run(["sh", "-c", "echo api; exit 0"])
        result = client.result(tid, timeout=30)
        assert (result["status"], result["output"]) == ("completed", "api\n")
        failed = client.result(client.run(["sh", "-c", "exit 5"]), timeout=30)
        assert (failed["status"], failed["return_code"]) == ("failed", 5)


def _default_host() -> str:
    import socket

    return socket.gethostname()


# -- choosing the backend: clear errors, nothing half-written -----------------------------


def test_init_rejects_password_and_bad_servers(
    cluster: pgc.PgCluster, weft: Weft, workdir: Path
) -> None:
    with_password = cluster.dsn.replace("postgres@", "postgres:s3cret@")
    r = weft("init", "--backend", "postgres", "--dsn", with_password)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "password" in r.stderr and "PGPASSWORD" in r.stderr and "s3cret" not in r.stderr

    start = time.monotonic()
    r = weft("init", "--dsn", f"postgresql://postgres@127.0.0.1:{_closed_port()}/weft")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "cannot reach the PostgreSQL server" in r.stderr and "connection refused" in r.stderr
    assert time.monotonic() - start < 10

    r = weft("init", "--dsn", cluster.dsn_for("no_such_db"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert "'no_such_db' does not exist" in r.stderr
    r = weft("init", "--backend", "postgres")
    assert r.returncode == 2 and "--dsn" in r.stderr
    down = {
        "WEFT_BACKEND": "postgres",
        "WEFT_PG_DSN": f"postgresql://x@127.0.0.1:{_closed_port()}/w",
    }
    r = weft("queue", "write", "q", "lost?", env=down)
    assert r.returncode == 1 and r.stderr.startswith("weft: cannot reach the PostgreSQL server")
    assert r.stderr.count("\n") == 1
    assert not (workdir / ".weft").exists()  # a failed init writes nothing


def test_backend_from_environment(cluster: pgc.PgCluster, weft: Weft, workdir: Path) -> None:
    """WEFT_BACKEND / WEFT_PG_DSN / WEFT_PG_SCHEMA choose PostgreSQL without a config entry."""
    schema = cluster.new_schema()
    env = {"WEFT_BACKEND": "postgres", "WEFT_PG_DSN": cluster.dsn, "WEFT_PG_SCHEMA": schema}
    try:
        r = weft("queue", "write", "envq", "via env", env=env)
        assert r.returncode == 0, r.stderr
        assert weft("queue", "read", "envq", env=env).stdout == "via env\n"
        assert not (workdir / ".weft" / "broker.db").exists()
        assert weft("queue", "read", "envq").returncode == 2  # without the env: SQLite, empty
    finally:
        _stop_managers(workdir)
        cluster.drop_schema(schema)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- many managers --------------------------------------------------------------------------


class Host:
    """One simulated host: its own working directory and WEFT_HOST, the shared database."""

    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name = name
        self.root = root
        self.env = {**env, "WEFT_HOST": name}

    def weft(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "weft", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def manager_pid(self) -> int:
        from weft.broker import Broker
        from weft.context import load_context
        from weft.registry import entries

        with Broker(load_context(self.root, create=False)) as broker:
            pids = [e.pid for e in entries(broker) if e.host == self.name]
        assert len(pids) == 1, pids
        return pids[0]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.weft("manager", "stop", "--timeout", "15")
        _stop_managers(self.root)


@pytest.fixture
def hosts(
    cluster: pgc.PgCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Host, Host]]:
    """Hosts a and b, each with a running manager, sharing one fresh schema."""
    schema = cluster.new_schema()
    env = _clean_env(tmp_path)
    env["WEFT_HEARTBEAT_SECONDS"] = "1"  # a lost host is noticed after 4 s, not 20 s
    pair = []
    for name in ("a", "b"):
        root = tmp_path / f"host-{name}"
        root.mkdir()
        host = Host(name, root, env)
        r = host.weft("init", "--dsn", cluster.dsn, "--schema", schema)
        assert r.returncode == 0, r.stderr
        pair.append(host)
    # This test process acts as a client on host a (so it never starts a manager of its own).
    for key in [k for k in os.environ if k.startswith(("WEFT_", "BROKER_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WEFT_HOST", "a")
    try:
        for host in pair:
            r = host.weft("manager", "start")
            assert r.returncode == 0 and f"host {host.name}" in r.stdout, r.stdout + r.stderr
        yield pair[0], pair[1]
    finally:
        for host in pair:
            host.stop()
        cluster.drop_schema(schema)


def _spec(*argv: str, name: str = "") -> dict[str, object]:
    spec: dict[str, object] = {"spec": {"type": "command", "process_target": list(argv)}}
    if name:
        spec["name"] = name
    return spec


def test_two_managers_share_requests_each_claimed_once(
    cluster: pgc.PgCluster, hosts: tuple[Host, Host]
) -> None:
    from weft.client import WeftClient

    a, b = hosts
    with WeftClient.open(a.root) as on_a, WeftClient.open(b.root) as on_b:
        tids = [on_a.submit(_spec("echo", str(i)), ensure_manager=False) for i in range(50)]
        # A result is readable from any host: half are read through host b's project.
        for i, tid in enumerate(tids):
            reader = on_b if i % 2 else on_a
            result = reader.result(tid, timeout=60)
            assert (result["status"], result["output"]) == ("completed", f"{i}\n")
        schema = json.loads((a.root / ".weft" / "config.json").read_text())["schema"]
    log = _log(cluster, schema)
    initialized = Counter(e["tid"] for e in log if e["event"] == "task_initialized")
    assert {tid: initialized[tid] for tid in tids} == dict.fromkeys(tids, 1)
    ran_on = Counter(e["host"] for e in log if e["event"] == "task_initialized")
    assert set(ran_on) == {"a", "b"}, ran_on  # both managers took a share

    status = a.weft("status", "--all")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == "Managers: 2 running"
    assert lines[1].startswith("  host a: PID ") and lines[2].startswith("  host b: PID ")
    assert lines[3] == "Tasks: 50 total (50 completed)"
    rows = lines[6:]
    assert {row.split()[2] for row in rows} == {"a", "b"}  # the HOST column
    on_b_status = json.loads(b.weft("status", "--json").stdout)
    assert sorted(m["host"] for m in on_b_status["managers"]) == ["a", "b"]


def _tree(pid: int) -> list[psutil.Process]:
    proc = psutil.Process(pid)
    return [proc, *proc.children(recursive=True)]


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie (orphans wait for init to reap them)."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_losing_a_host_hands_over_claims_and_fails_its_running_tasks(
    cluster: pgc.PgCluster, hosts: tuple[Host, Host]
) -> None:
    from weft import queues
    from weft.client import WeftClient

    a, b = hosts
    a_pid, b_pid = a.manager_pid(), b.manager_pid()
    with WeftClient.open(a.root) as client:
        b_id = next(m.manager_id for m in client.managers() if m.host == "b")
        # Steer work to b: a is paused while b takes a long task and one more request.
        os.kill(a_pid, signal.SIGSTOP)
        try:
            victim = client.submit(_spec("sleep", "60", name="victim"), ensure_manager=False)
            wait_for(lambda: client.task(victim).status == "running", 20, "the victim to run on b")
            assert client.task(victim).host == "b"
            # b's fork server stops answering, so b claims the next request but cannot start it.
            fork_server = next(
                p for p in psutil.Process(b_pid).children() if "forkserver" in " ".join(p.cmdline())
            )
            fork_server.send_signal(signal.SIGSTOP)
            rescued = client.submit(_spec("echo", "rescued"), ensure_manager=False)
            claims = queues.spawn_claims(b_id)
            wait_for(
                lambda: client.broker.peek_one(claims, message_id=int(rescued)) is not None,
                10,
                "b to claim the request",
            )
        finally:
            os.kill(a_pid, signal.SIGCONT)
        # Host b is lost: its manager, fork server, task process and the task's target.
        doomed = _tree(b_pid)
        for proc in doomed:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        wait_for(lambda: not any(_running(p) for p in doomed), 10, "host b's processes to die")

        # a notices b's stale heartbeat, takes the claimed request and runs it itself...
        result = client.result(rescued, timeout=30)
        assert (result["status"], result["output"]) == ("completed", "rescued\n")
        assert client.task(rescued).host == "a"
        # ...and settles b's running task as failed, naming the lost host.
        lost = client.result(victim, timeout=30)
        assert lost["status"] == "failed" and "host b was lost" in lost["error"]
        assert not client.broker.has_messages(claims)
        assert [m.host for m in client.managers()] == ["a"]
    schema = json.loads((a.root / ".weft" / "config.json").read_text())["schema"]
    log = _log(cluster, schema)
    started = [e["host"] for e in log if e["tid"] == rescued and e["event"] == "task_initialized"]
    assert started == ["a"]  # claimed by b, started once, by a
    failed = [e for e in log if e["tid"] == victim and e["event"] == "work_failed"]
    assert len(failed) == 1 and failed[0]["host"] == "b" and failed[0]["settled_by"] == "a"
    status = a.weft("status", "--all").stdout
    assert "Manager: Running (PID" in status and "host a" in status and "host b:" not in status
