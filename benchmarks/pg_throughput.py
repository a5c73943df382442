#!/usr/bin/env python3
"""Throughput across backends: SQLite with one manager against PostgreSQL with one and two.

    python benchmarks/pg_throughput.py                # 200 tasks x 3 rounds per setup
    python benchmarks/pg_throughput.py --tasks 50 --rounds 1
    python benchmarks/pg_throughput.py --dsn postgresql://user@host:5432/db   # existing server

Each round submits N trivial command tasks (``true``) through ``WeftClient.submit`` and then
reads every result (``WeftClient.result``); the figure is N / (last result - first submit).
The managers are already running and warm (10 untimed tasks first). PostgreSQL runs on a
throwaway local cluster (tests/pg_cluster.py) unless ``--dsn`` names a server; two managers
are two working directories with their own WEFT_HOST sharing one schema, on this machine,
so they share its cores: the figure shows the cost of the shared database and of claiming
across managers, not the gain of a second machine. Everything started is stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEFT_", "BROKER_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["HOME"] = str(home)
    env["WEFT_MANAGER_LIFETIME_TIMEOUT"] = "300"  # a manager we failed to stop ends by itself
    env["WEFT_MANAGER_STOP_GRACE"] = "2"
    return env


class Host:
    def __init__(self, name: str, root: Path, env: dict[str, str]) -> None:
        self.name = name
        self.root = root
        self.env = {**env, "WEFT_HOST": name}
        root.mkdir(parents=True)

    def weft(self, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "weft", *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"weft {' '.join(args)} on {self.name}: {proc.stderr.strip()}")
        return proc.stdout


def tree_cpu(pids: list[int]) -> float:
    """CPU seconds of processes and all their descendants, the reaped ones included."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            t = root.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
            for child in root.children(recursive=True):  # (a fork server reaps its tasks)
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += c.user + c.system + c.children_user + c.children_system
        except psutil.Error:
            continue
    return total


def cpu_now(weft_pids: list[int], pg_pid: int | None) -> tuple[float, float, float]:
    """(this client, managers with fork servers and tasks, PostgreSQL server) CPU seconds."""
    me = os.times()
    return (
        me.user + me.system,
        tree_cpu(weft_pids),
        tree_cpu([pg_pid]) if pg_pid else 0.0,
    )


def run_round(
    client: Any, n: int, weft_pids: list[int] | None = None, pg_pid: int | None = None
) -> dict[str, Any]:
    spec = {"spec": {"type": "command", "process_target": ["true"]}}
    before = cpu_now(weft_pids or [], pg_pid)
    start = time.perf_counter()
    tids = [client.submit(spec, ensure_manager=False) for _ in range(n)]
    submitted = time.perf_counter()
    statuses = Counter(client.result(tid, timeout=120)["status"] for tid in tids)
    elapsed = time.perf_counter() - start
    time.sleep(0.3)  # the last task processes exit and are reaped: their CPU counts
    after = cpu_now(weft_pids or [], pg_pid)
    cpu = [round(1000 * (a - b) / n, 1) for a, b in zip(after, before, strict=True)]
    return {
        "tids": tids,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(n / elapsed, 1),
        "submit_per_s": round(n / (submitted - start), 1),
        "statuses": dict(statuses),
        "cpu_ms_per_task": {"client": cpu[0], "weft": cpu[1], "postgres": cpu[2],
                            "total": round(sum(cpu), 1)},
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }  # fmt: skip


def hosts_of(client: Any, tids: list[str]) -> dict[str, int]:
    from weft import events

    wanted = set(tids)
    found = Counter(
        str(e.get("host"))
        for _, e in events.read_events(client.broker)
        if e.get("event") == events.TASK_INITIALIZED and e.get("tid") in wanted
    )
    return dict(sorted(found.items()))


@contextlib.contextmanager
def setup(
    label: str, base: Path, env: dict[str, str], managers: int, dsn: str | None
) -> Iterator[Any]:
    """Projects (one per manager) on one backend; yields a client on the first host."""
    from weft.client import WeftClient

    schema = f"weft_bench_{uuid.uuid4().hex[:8]}"
    hosts = [Host(f"h{i + 1}", base / f"{label}-h{i + 1}", env) for i in range(managers)]
    saved = {k: os.environ.get(k) for k in ("WEFT_HOST",)}
    os.environ["WEFT_HOST"] = hosts[0].name  # this process is a client on the first host
    try:
        for host in hosts:
            if dsn is None:
                host.weft("init")
            else:
                host.weft("init", "--dsn", dsn, "--schema", schema)
            host.weft("manager", "start")
        with WeftClient.open(hosts[0].root, create=False) as client:
            run_round(client, 10)  # warm: fork servers up, connections open
            client.bench_pids = [m.pid for m in client.managers()]
            yield client
    finally:
        for host in hosts:
            with contextlib.suppress(Exception):
                host.weft("manager", "stop", "--timeout", "20")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if dsn is not None:
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def machine() -> dict[str, Any]:
    import psutil

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200, help="tasks per round (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setup (default 3)")
    parser.add_argument("--dsn", help="an existing PostgreSQL database (default: a local one)")
    parser.add_argument("--json-out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()

    from tests import pg_cluster

    info = machine()
    results: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        dsn = args.dsn
        pg_pid = None
        if dsn is None:
            cluster = stack.enter_context(pg_cluster.running_cluster())
            dsn = cluster.dsn
            info["postgres"] = f"local throwaway cluster, {cluster.bin_dir}"
            pid_file = cluster.directory / "data" / "postmaster.pid"
            pg_pid = int(pid_file.read_text().split()[0])
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="weft-pgbench-")))
        env = clean_env(base)
        setups = [
            ("sqlite-1-manager", 1, None),
            ("postgres-1-manager", 1, dsn),
            ("postgres-2-managers", 2, dsn),
        ]
        for label, managers, target in setups:
            with setup(label, base, env, managers, target) as client:
                server = pg_pid if target else None
                rounds = [
                    run_round(client, args.tasks, client.bench_pids, server)
                    for _ in range(args.rounds)
                ]
                split = hosts_of(client, [t for r in rounds for t in r["tids"]])
            rates = [r["tasks_per_s"] for r in rounds]
            cpu = statistics.median(r["cpu_ms_per_task"]["total"] for r in rounds)
            results[label] = {
                "managers": managers,
                "tasks": args.tasks,
                "rounds": [{k: v for k, v in r.items() if k != "tids"} for r in rounds],
                "median_tasks_per_s": statistics.median(rates),
                "median_submit_per_s": statistics.median(r["submit_per_s"] for r in rounds),
                "median_cpu_ms_per_task": cpu,
                "tasks_by_host": split,
            }
            print(
                f"{label:<22} {statistics.median(rates):7.1f} tasks/s, {cpu:5.1f} ms CPU/task "
                f"(rounds: {', '.join(f'{x:g}' for x in rates)}; by host: {split}; "
                f"CPU: {[r['cpu_ms_per_task'] for r in rounds]})",
                flush=True,
            )
    report = {"machine": info, "results": results}
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
