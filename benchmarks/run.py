#!/usr/bin/env python3
"""Weft benchmarks: one command, its own temporary projects, a table and a JSON file.

    python benchmarks/run.py                 # full run (about 1.5-2.5 minutes on 2 cores)
    python benchmarks/run.py --quick         # fewer repetitions (about 40 s)
    python benchmarks/run.py --smoke         # tiny N, for the test suite: checks every row runs
    python benchmarks/run.py --json-out FILE # default: benchmarks/results-latest.json

CLI rows time ``subprocess.run`` of the real ``weft`` console script (the one installed next
to this Python, else ``weft`` on PATH, else ``python -m weft``) with ``time.perf_counter``.
API rows drive ``weft.client.WeftClient`` in this process. Every manager and task process
the benchmark starts is stopped at the end, on error and on Ctrl-C as well.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

DEFAULT_JSON = REPO / "benchmarks" / "results-latest.json"
FUNC_MODULE = "weft_bench_funcs"
FUNC_SOURCE = '''"""Written by benchmarks/run.py: trivial functions for function-task throughput."""


def noop(i=0):
    return i
'''


# -- sizes per mode -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    warm_runs: int
    nowait_runs: int
    status_runs: int
    cold_runs: int
    cold_runs_large_log: int
    throughput_tasks: int
    throughput_deadline: float  # seconds allowed per throughput row
    sleep_seconds: int
    idle_cpu_seconds: float
    mcp_runs: int
    queue_messages: int
    growth_tasks: int  # finished tasks put into a project to see how calls scale


MODES = {
    "full": Sizes(20, 15, 15, 8, 3, 500, 75.0, 5, 10.0, 15, 2000, 10_000),
    "quick": Sizes(6, 5, 5, 3, 1, 150, 40.0, 3, 3.0, 5, 1000, 1000),
    "smoke": Sizes(2, 2, 2, 1, 1, 8, 20.0, 2, 0.5, 2, 50, 50),
}


# -- rows ---------------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    metric: str
    unit: str
    target: float | None = None
    op: str = "<="  # the value must be <= target (or >= for throughputs)
    value: float | None = None  # the median for timings, the rate or size otherwise
    status: str = "pending"  # ok | skipped | error | pending
    note: str = ""
    samples: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.status != "ok" or self.value is None or self.target is None:
            return None
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    def set_samples(self, samples: list[float]) -> None:
        self.samples = [round(s, 3) for s in samples]
        self.value = round(statistics.median(samples), 3)
        self.extra.update(
            min=round(min(samples), 3),
            max=round(max(samples), 3),
            p90=round(_percentile(samples, 90), 3),
            n=len(samples),
        )
        self.status = "ok"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pass"] = self.passed
        return data


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * pct / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def make_rows() -> dict[str, Row]:
    rows = [
        Row("warm_run", "warm `weft run echo hi`", "ms", 150),
        Row("nowait_run", "`weft run --no-wait echo hi`", "ms", 120),
        Row("status", "`weft status` (small project)", "ms", 150),
        Row("cold_run", "cold `weft run echo hi` (no manager)", "ms", 600),
        Row("throughput_command", "throughput, command tasks (API)", "tasks/s", 100, ">="),
        Row("throughput_function", "throughput, function tasks (API)", "tasks/s", 100, ">="),
        Row("task_uss", "task process USS (`sleep`)", "MB", 10),
        Row("manager_rss", "idle manager RSS", "MB", 40),
        Row("manager_idle_cpu", "idle manager CPU", "% core", 1),
        Row("mcp_round_trip", "MCP run_task + get_result (echo)", "ms", 100),
        Row("queue_throughput", "queue write + read (API), slower side", "msg/s", 2000, ">="),
        Row("monitor_cpu", "resource monitor CPU per limited `sleep` task", "ms"),
        # Informational: how the figures above move once the task log holds ~1000 tasks.
        Row("status_large", "`weft status` after the throughput rows", "ms"),
        Row("cold_run_large", "cold `weft run echo hi` after the throughput rows", "ms"),
        # Cost as work grows: each figure with N finished tasks over the same on an empty project.
        Row("growth_run", "`weft run echo hi` with N finished tasks / empty", "x", 1.5),
        Row("growth_status", "`weft status` with N finished tasks / empty", "x", 1.5),
        Row("growth_result", "`weft result TID` with N finished tasks / empty", "x", 1.5),
    ]
    return {row.key: row for row in rows}


# -- the harness ----------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def weft_command() -> list[str]:
    """The console script installed with this Python, else ``weft`` on PATH, else ``-m weft``.

    A pyenv shim on PATH is a bash script that re-execs pyenv (~40-50 ms): the real script
    next to ``sys.executable`` is what a user of this environment runs.
    """
    sibling = Path(sys.executable).parent / "weft"
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return [str(sibling)]
    found = shutil.which("weft")
    if found:
        return [found]
    return [sys.executable, "-m", "weft"]


def bench_env(pycache: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEFT_", "BROKER_"))}
    if pycache is not None:
        # An installed Weft has its bytecode compiled. A development shell with
        # PYTHONDONTWRITEBYTECODE=1 recompiles every changed module on each command (~20 ms
        # for `weft run`): measure the installed case, in a private cache outside the repo.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    # Safety nets only (no effect on the figures): a manager we fail to stop exits by itself
    # after 5 idle minutes, and a stop does not wait 10 s for a task we are abandoning.
    env["WEFT_MANAGER_LIFETIME_TIMEOUT"] = "300"
    env["WEFT_MANAGER_STOP_GRACE"] = "2"
    return env


class Project:
    """A temporary Weft project plus everything needed to find (and end) its processes."""

    def __init__(self, base: Path, label: str, env: dict[str, str], cli: list[str]) -> None:
        # The directory name is the context name in process titles: make it unique.
        self.root = (base / f"wb{os.getpid()}{label}").resolve()
        self.root.mkdir(parents=True)
        self.name = self.root.name
        self.env = env
        self.cli = cli
        self.client: Any = None
        self.extra_clients: list[Any] = []
        (self.root / f"{FUNC_MODULE}.py").write_text(FUNC_SOURCE, encoding="utf-8")

    def open_client(self) -> Any:
        if self.client is None:
            from weft.client import WeftClient

            self.client = WeftClient.open(self.root, create=True)
        return self.client

    def close_client(self) -> None:
        for client in [self.client, *self.extra_clients]:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()
        self.client = None
        self.extra_clients = []

    def weft(
        self, *args: str, timeout: float = 60
    ) -> tuple[float, subprocess.CompletedProcess[str]]:
        start = time.perf_counter()
        proc = subprocess.run(
            [*self.cli, *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return (time.perf_counter() - start) * 1000, proc

    def checked(self, *args: str, expect: str | None = None) -> float:
        ms, proc = self.weft(*args)
        if proc.returncode != 0 or (expect is not None and proc.stdout != expect):
            raise RuntimeError(
                f"weft {' '.join(args)} -> exit {proc.returncode}, stdout {proc.stdout[:200]!r}, "
                f"stderr {proc.stderr[-400:]!r}"
            )
        return ms

    # -- processes ------------------------------------------------------------------------

    def title_prefix(self) -> str:
        return f"weft-{self.name}-"

    def processes(self) -> list[psutil.Process]:
        """Managers, fork servers, task processes of this project, and their descendants."""
        found: dict[int, psutil.Process] = {}
        root = str(self.root)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if not cmdline:
                continue
            ours = cmdline[0].startswith(self.title_prefix()) or (
                "forkserver" in " ".join(cmdline) and root in " ".join(cmdline)
            )
            if ours and proc.pid != os.getpid():
                found[proc.pid] = proc
                with contextlib.suppress(psutil.Error):
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
        return list(found.values())

    def find_titled(self, rest_re: str) -> list[psutil.Process]:
        """Processes titled ``weft-{context}-`` + ``rest_re`` (``{id}:{name}:{status}``)."""
        pattern = re.compile(re.escape(self.title_prefix()) + rest_re)
        out = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if cmdline and pattern.fullmatch(cmdline[0].strip()):
                out.append(proc)
        return out

    def managers(self) -> list[psutil.Process]:
        return self.find_titled(r"\d+:manager:\w+")

    def wait_no_manager(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.processes():
                return
            time.sleep(0.02)
        raise RuntimeError(f"processes of {self.name} still alive after stop: {self.processes()}")

    def stop_everything(self) -> list[int]:
        """`weft manager stop`, then end (by PID) whatever of ours is left. Returns leftovers."""
        self.close_client()
        before = self.processes()
        if (self.root / ".weft").is_dir():
            with contextlib.suppress(Exception):
                self.weft("manager", "stop", "--timeout", "10", timeout=30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(p.is_running() for p in before):
            time.sleep(0.05)
        leftovers = [p for p in {p.pid: p for p in before + self.processes()}.values()]
        killed = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = []
            for proc in leftovers:
                with contextlib.suppress(psutil.Error):
                    if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                        proc.send_signal(sig)
                        alive.append(proc)
                        killed.append(proc.pid)
            if not alive:
                break
            psutil.wait_procs(alive, timeout=3)
        return sorted(set(killed))


# -- measurements ---------------------------------------------------------------------------


PHASES = (
    "cli_start_to_submit",  # interpreter, imports, TaskSpec, first broker write (the TID)
    "submit_to_task_initialized",  # manager wake-up (or start), claim, fork, task set-up
    "task_initialized_to_final_event",  # run `echo`, write the result, log the events
    "final_event_to_cli_exit",  # the CLI notices the result, prints, exits
)


def timed_run(proj: Project, windows: list[tuple[int, int]]) -> float:
    """`weft run echo hi`, timed; its wall-clock window goes to ``windows`` for ``phases``."""
    start = time.time_ns()
    ms = proj.checked("run", "echo", "hi", expect="hi\n")
    windows.append((start, time.time_ns()))
    return ms


def phases(proj: Project, windows: list[tuple[int, int]]) -> dict[str, float]:
    """Median ms of each phase, from the TID (a time_ns-based broker ID) and the task's events.

    A message ID is ``time_ns()`` with its low 12 bits replaced by a counter, so
    ``tid & ~0xFFF`` is the moment the spawn request was written, on the same clock as
    ``time.time_ns()`` here and the ``timestamp`` of every event.
    """
    records = proj.open_client().tasks()
    by_time = sorted((int(tid) & ~0xFFF, rec) for tid, rec in records.items() if str(tid).isdigit())
    found: dict[str, list[float]] = {name: [] for name in PHASES}
    for start, end in windows:
        inside = [(t, rec) for t, rec in by_time if start <= t <= end]
        if len(inside) != 1:
            continue
        submitted, rec = inside[0]
        created = getattr(rec, "created_at", None)
        finished = getattr(rec, "finished_at", None)
        if not created or not finished:
            continue
        for name, value in zip(
            PHASES,
            (submitted - start, created - submitted, finished - created, end - finished),
            strict=True,
        ):
            found[name].append(value / 1e6)
    return {name: round(statistics.median(v), 1) for name, v in found.items() if v}


def bench_warm(proj: Project, rows: dict[str, Row], n: int) -> None:
    proj.checked("run", "echo", "hi", expect="hi\n")  # starts the manager; not timed
    row = rows["warm_run"]
    windows: list[tuple[int, int]] = []
    row.set_samples([timed_run(proj, windows) for _ in range(n)])
    with contextlib.suppress(Exception):
        row.extra["phases_ms"] = phases(proj, windows)


def bench_nowait(proj: Project, rows: dict[str, Row], n: int) -> None:
    client = proj.open_client()
    samples = []
    for _ in range(n):
        ms, proc = proj.weft("run", "--no-wait", "echo", "hi")
        tid = proc.stdout.strip()
        if proc.returncode != 0 or not tid.isdigit():
            raise RuntimeError(
                f"--no-wait gave exit {proc.returncode}: {proc.stdout!r} {proc.stderr!r}"
            )
        samples.append(ms)
        client.result(tid, timeout=30)  # let it finish before the next sample (not timed)
    rows["nowait_run"].set_samples(samples)


def bench_status(proj: Project, row: Row, n: int) -> None:
    row.set_samples([proj.checked("status") for _ in range(n)])
    row.extra["tasks_in_log"] = _task_count(proj)


def _task_count(proj: Project) -> int:
    client = proj.open_client()
    return sum(1 for _ in client.tasks())


def _seed_finished_tasks(proj: Project, count: int) -> None:
    """Put ``count`` finished tasks into the project's log, as real tasks leave them
    (task_initialized, work_started, work_completed, each carrying the spec)."""
    from weft import events

    client = proj.open_client()
    spec = {
        "name": "echo",
        "spec": {"type": "command", "process_target": ["echo", "hi"], "timeout": None},
        "io": {"inputs": {}, "outputs": {}},
        "metadata": {"tags": []},
    }
    base = 1_700_000_000_000_000_000
    for i in range(count):
        tid = str(base + i * 4096)
        for name, status in (
            (events.TASK_INITIALIZED, events.RUNNING),
            (events.WORK_STARTED, events.RUNNING),
            (events.WORK_COMPLETED, events.COMPLETED),
        ):
            event = events.make_event(name, tid, status, taskspec=spec, task_pid=1, return_code=0)
            events.log_event(client.broker, event)


def _growth_figures(proj: Project, n: int) -> dict[str, float]:
    client = proj.open_client()
    run = statistics.median(timed_run(proj, []) for _ in range(n))
    status = statistics.median(proj.checked("status") for _ in range(n))
    results = []
    for _ in range(n):
        tid = client.run(["echo", "hi"])
        client.result(tid, timeout=30, peek=True)
        ms, _proc = proj.weft("result", tid[-10:])
        results.append(ms)
    return {"run": run, "status": status, "result": statistics.median(results)}


def bench_growth(proj: Project, rows: dict[str, Row], tasks: int, n: int) -> None:
    proj.checked("run", "echo", "hi", expect="hi\n")  # project and manager: not timed
    empty = _growth_figures(proj, n)
    started = time.perf_counter()
    _seed_finished_tasks(proj, tasks)
    seeded_s = time.perf_counter() - started
    proj.checked("status")  # the first reader after the seeding refreshes the snapshot
    full = _growth_figures(proj, n)
    for key in ("run", "status", "result"):
        row = rows[f"growth_{key}"]
        row.value = round(full[key] / empty[key], 2)
        row.status = "ok"
        row.extra.update(
            empty_ms=round(empty[key], 1), with_tasks_ms=round(full[key], 1), tasks=tasks
        )
    rows["growth_run"].extra["seed_seconds"] = round(seeded_s, 1)


def bench_cold(proj: Project, row: Row, n: int) -> None:
    if not (proj.root / ".weft").is_dir():
        proj.checked("run", "echo", "hi", expect="hi\n")  # creates the project: not timed
    samples = []
    windows: list[tuple[int, int]] = []
    for _ in range(n):
        proj.weft("manager", "stop", timeout=60)
        proj.wait_no_manager()
        samples.append(timed_run(proj, windows))
    row.set_samples(samples)
    with contextlib.suppress(Exception):
        row.extra["phases_ms"] = phases(proj, windows)
    row.extra["tasks_in_log"] = _task_count(proj)


def weft_cpu_seconds(proj: Project) -> float:
    """CPU used so far by this process, the project's managers and every process below them:
    the fork server, live task processes (kept warm between tasks) and their helpers, and,
    through each parent's reaped-children times, every process that has exited."""
    total = sum(os.times()[:2])
    for manager in proj.managers():
        with contextlib.suppress(psutil.Error):
            for proc in (manager, *manager.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    t = proc.cpu_times()
                    total += t.user + t.system + t.children_user + t.children_system
    return total


def bench_throughput(
    proj: Project, row: Row, n: int, deadline_s: float, submit: Callable[[Any, int], str]
) -> None:
    client = proj.open_client()
    cpu_before = weft_cpu_seconds(proj)
    start = time.perf_counter()
    tids = [submit(client, i) for i in range(n)]
    submitted = time.perf_counter()
    stop_at = time.monotonic() + deadline_s
    done = failed = 0
    peak = 0
    for tid in tids:
        remaining = stop_at - time.monotonic()
        if remaining <= 0:
            break
        try:
            result = client.result(tid, timeout=remaining)
        except Exception as exc:  # a WaitTimeout at the deadline
            row.note = f"stopped at the {deadline_s:g}s deadline: {type(exc).__name__}"
            break
        done += 1
        if result.get("status") != "completed":
            failed += 1
        if done % 50 == 1:
            peak = max(peak, len(proj.find_titled(r"\d+:[^:]+:running")))
    elapsed = time.perf_counter() - start
    time.sleep(0.2)  # let the last task processes exit and be reaped: their CPU counts
    cpu_used = weft_cpu_seconds(proj) - cpu_before
    row.value = round(done / elapsed, 1)
    row.status = "ok"
    row.extra.update(
        n=n,
        completed=done,
        failed=failed,
        seconds=round(elapsed, 3),
        submit_rate_per_s=round(n / (submitted - start), 1),
        submit_ms_each=round((submitted - start) * 1000 / n, 2),
        running_tasks_sampled_peak=peak,
        cpu_ms_per_task=round(1000 * cpu_used / max(done, 1), 1),
        note_cpu="client + manager + every process below it, live or reaped",
    )
    if done < n:
        row.note = row.note or f"only {done}/{n} finished"
        # Let the rest drain (not timed) so later rows measure a quiet machine.
        with contextlib.suppress(Exception):
            for tid in tids[done:]:
                client.result(tid, timeout=30)
    if failed:
        row.note = (row.note + "; " if row.note else "") + f"{failed} task(s) did not complete"


def _submit_command(client: Any, i: int) -> str:
    return str(client.run(["true"]))


def _submit_function(root: Path) -> Callable[[Any, int], str]:
    def submit(client: Any, i: int) -> str:
        return str(client.run_function(f"{FUNC_MODULE}:noop", i, cwd=str(root)))

    return submit


def _mb(n: int) -> float:
    return round(n / (1024 * 1024), 2)


def bench_task_memory(proj: Project, row: Row, seconds: int) -> None:
    from weft.tid import short

    client = proj.open_client()
    tid = client.run(["sleep", str(seconds)])
    suffix = re.escape(short(tid)) + r":sleep:running"

    def find() -> psutil.Process | None:
        # Between fork and exec, the task's `sleep` child briefly carries the task's title:
        # take the process whose child is `sleep`, i.e. the task process itself.
        for proc in proj.find_titled(suffix):
            with contextlib.suppress(psutil.Error):
                if any(c.name() == "sleep" for c in proc.children()):
                    return proc
        return None

    deadline = time.monotonic() + 15
    proc = find()
    while proc is None and time.monotonic() < deadline:
        time.sleep(0.02)
        proc = find()
    if proc is None:
        row.status = "error"
        row.note = f"no process titled weft-{proj.name}-{short(tid)}:sleep:running within 15 s"
        client.result(tid, timeout=seconds + 30)
        return
    time.sleep(0.3)  # let it settle into its wait loop
    proc = find() or proc
    info = proc.memory_full_info()
    row.value = _mb(info.uss)
    row.status = "ok"
    row.extra.update(
        pid=proc.pid,
        title=proc.cmdline()[0].strip(),
        rss_mb=_mb(info.rss),
        pss_mb=_mb(getattr(info, "pss", 0)),
        threads=proc.num_threads(),
        children=[c.name() for c in proc.children()],
    )
    manager = proj.managers()
    if manager:
        row.extra["manager_rss_busy_mb"] = _mb(manager[0].memory_info().rss)
    client.result(tid, timeout=seconds + 30)


def bench_monitor(proj: Project, row: Row, seconds: int) -> None:
    """The resource monitor's own CPU for one task, as the task records it in its metrics:
    a `sleep` with a memory limit (polled every WEFT_MONITOR_INTERVAL) and one without."""
    client = proj.open_client()
    limited = client.result(client.run(["sleep", str(seconds)], memory=500), timeout=seconds + 30)
    plain = client.result(client.run(["sleep", str(seconds)]), timeout=seconds + 30)
    cost = limited.get("metrics", {}).get("monitor_cpu_seconds")
    if cost is None:
        row.status = "error"
        row.note = "the task's metrics carry no monitor_cpu_seconds"
        return
    row.value = round(1000 * cost, 2)
    row.status = "ok"
    row.extra.update(
        seconds=seconds,
        polls=limited["metrics"].get("monitor_polls"),
        share_of_core_pct=round(100 * cost / seconds, 3),
        without_limits_ms=round(1000 * plain.get("metrics", {}).get("monitor_cpu_seconds", 0), 2),
        without_limits_polls=plain.get("metrics", {}).get("monitor_polls"),
    )


def _wait_idle_manager(proj: Project, timeout: float = 15) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        idle = proj.find_titled(r"\d+:manager:idle")
        if idle:
            return idle[0]
        time.sleep(0.05)
    raise RuntimeError(f"no idle manager of {proj.name} within {timeout:g}s")


def bench_manager_idle(proj: Project, rows: dict[str, Row], seconds: float) -> None:
    manager = _wait_idle_manager(proj)
    time.sleep(min(1.0, seconds))  # the poll interval backs off to its maximum within ~0.1 s
    manager = _wait_idle_manager(proj)
    servers = [c for c in manager.children() if "forkserver" in " ".join(c.cmdline())]
    info = manager.memory_full_info()
    rss = rows["manager_rss"]
    rss.value = _mb(info.rss)
    rss.status = "ok"
    rss.extra.update(
        pid=manager.pid,
        title=manager.cmdline()[0],
        uss_mb=_mb(info.uss),
        pss_mb=_mb(getattr(info, "pss", 0)),
        fork_server_rss_mb=[_mb(s.memory_info().rss) for s in servers],
        fork_server_uss_mb=[_mb(s.memory_full_info().uss) for s in servers],
        tasks_in_log=_task_count(proj),
    )
    procs = [manager, *servers]
    before = [p.cpu_times() for p in procs]
    start = time.perf_counter()
    time.sleep(seconds)
    wall = time.perf_counter() - start
    after = [p.cpu_times() for p in procs]
    used = [(a.user + a.system) - (b.user + b.system) for a, b in zip(after, before, strict=True)]
    cpu = rows["manager_idle_cpu"]
    cpu.value = round(100 * used[0] / wall, 3)
    cpu.status = "ok"
    cpu.extra.update(
        window_s=round(wall, 2),
        cpu_seconds=round(used[0], 4),
        fork_server_percent=[round(100 * u / wall, 3) for u in used[1:]],
        still_idle=manager.cmdline()[0].endswith(":manager:idle"),
    )


def bench_queue(proj: Project, row: Row, n: int) -> None:
    client = proj.open_client()
    api = getattr(client, "queue", None)
    body = "x" * 64
    name = "bench.q"
    if api is not None and hasattr(api, "write") and hasattr(api, "read"):
        write: Callable[[], Any] = lambda: api.write(name, body)  # noqa: E731
        read: Callable[[], Any] = lambda: api.read(name)  # noqa: E731
        via = "client.queue (QueueAPI)"
    else:
        write = lambda: client.broker.write(name, body)  # noqa: E731
        read = lambda: client.broker.read_one(name)  # noqa: E731
        via = "client.broker"
    write()
    read()  # open the handle first: not timed
    t0 = time.perf_counter()
    for _ in range(n):
        write()
    t1 = time.perf_counter()
    for _ in range(n):
        read()
    t2 = time.perf_counter()
    write_rate, read_rate = n / (t1 - t0), n / (t2 - t1)
    # A queue between a producer and a consumer moves messages at the pace of the slower side.
    row.value = round(min(write_rate, read_rate), 1)
    row.status = "ok"
    row.note = "the slower of write and read, one message per call (serial: see extra)"
    row.extra.update(
        n=n,
        via=via,
        body_bytes=len(body),
        write_per_s=round(write_rate, 1),
        read_per_s=round(read_rate, 1),
        serial_write_then_read_per_s=round(n / (t2 - t0), 1),
    )


# -- MCP ------------------------------------------------------------------------------------


def _find_mcp_server(proj: Project) -> tuple[Any, str]:
    import importlib
    import inspect

    try:
        module = importlib.import_module("weft_mcp.server")
    except Exception as exc:
        raise LookupError(f"weft_mcp.server not importable: {type(exc).__name__}: {exc}") from None
    server_cls: type | None
    try:
        from mcp.server import MCPServer as server_cls
    except Exception:  # pragma: no cover - another SDK
        server_cls = None
    for name in ("server", "mcp", "app"):
        obj = getattr(module, name, None)
        if obj is not None and (server_cls is None or isinstance(obj, server_cls)):
            return obj, f"weft_mcp.server.{name}"
    if server_cls is not None:
        for name, obj in vars(module).items():
            if isinstance(obj, server_cls):
                return obj, f"weft_mcp.server.{name}"
    for name in ("build_server", "create_server", "make_server", "get_server"):
        factory = getattr(module, name, None)
        if not callable(factory):
            continue
        params = [
            p
            for p in inspect.signature(factory).parameters.values()
            if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
        if not params:
            return factory(), f"weft_mcp.server.{name}()"
        if len(params) == 1 and params[0].name == "client":
            from weft.client import WeftClient

            # Its own client (not the benchmark's): the server may use it from worker threads.
            proj.extra_clients.append(WeftClient.open(proj.root))
            return factory(proj.extra_clients[-1]), f"weft_mcp.server.{name}(client)"
    raise LookupError("weft_mcp.server exposes no MCPServer object or factory")


def _props(tool: Any) -> tuple[dict[str, Any], list[str]]:
    schema = getattr(tool, "input_schema", None) or getattr(tool, "inputSchema", None) or {}
    return dict(schema.get("properties") or {}), list(schema.get("required") or [])


def _accepts(prop: dict[str, Any], kind: str) -> bool:
    """Whether a JSON-schema property accepts ``kind`` at its top level (not in its items)."""
    options = [prop, *prop.get("anyOf", []), *prop.get("oneOf", [])]
    for option in options:
        declared = option.get("type")
        if declared == kind or (isinstance(declared, list) and kind in declared):
            return True
    return False


def _tool_payload(result: Any) -> Any:
    structured = getattr(result, "structured_content", None)
    if structured is None:
        structured = getattr(result, "structuredContent", None)
    if structured is not None:
        return structured
    texts = [getattr(c, "text", "") for c in getattr(result, "content", []) or []]
    return "\n".join(t for t in texts if t)


def _find_tid(payload: Any) -> str | None:
    text = json.dumps(payload) if not isinstance(payload, str) else payload
    match = re.search(r"\b\d{19}\b", text)
    return match.group(0) if match else None


async def _mcp_samples(server: Any, n: int) -> tuple[list[float], dict[str, Any]]:
    import mcp

    async with mcp.Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        if "run_task" not in tools or "get_result" not in tools:
            raise LookupError(f"tools run_task/get_result not offered (have {sorted(tools)})")
        run_props, run_required = _props(tools["run_task"])
        res_props, res_required = _props(tools["get_result"])
        run_args: dict[str, Any] = {}
        if "command" not in run_props:
            raise LookupError(f"run_task takes no 'command' (takes {sorted(run_props)})")
        command = run_props["command"]
        run_args["command"] = ["echo", "hi"] if _accepts(command, "array") else "echo hi"
        if "wait" in run_props:
            run_args["wait"] = False
        if "wait_seconds" in run_props:
            run_args["wait_seconds"] = 0  # return the TID at once: get_result does the waiting
        missing = [r for r in run_required if r not in run_args]
        if missing:
            raise LookupError(f"run_task requires {missing}, which the benchmark cannot guess")
        samples = []
        detail: dict[str, Any] = {"run_task_args": run_args}
        for i in range(n + 1):  # the first round trip warms the session up: not counted
            start = time.perf_counter()
            ran = await client.call_tool("run_task", run_args)
            if getattr(ran, "is_error", False):
                raise RuntimeError(f"run_task failed: {_tool_payload(ran)}")
            tid = _find_tid(_tool_payload(ran))
            if tid is None:
                raise RuntimeError(f"no TID in run_task's answer: {_tool_payload(ran)!r:.300}")
            res_args: dict[str, Any] = {"tid": tid}
            if "timeout" in res_props:
                res_args["timeout"] = 30
            if "wait" in res_props:
                res_args["wait"] = True
            if "wait_seconds" in res_props:
                res_args["wait_seconds"] = 30
            missing = [r for r in res_required if r not in res_args]
            if missing:
                raise LookupError(f"get_result requires {missing}")
            got = await client.call_tool("get_result", res_args)
            elapsed = (time.perf_counter() - start) * 1000
            payload = _tool_payload(got)
            if getattr(got, "is_error", False) or "hi" not in json.dumps(payload):
                raise RuntimeError(f"get_result gave {payload!r:.300}")
            if i:
                samples.append(elapsed)
        detail["get_result_args"] = {k: v for k, v in res_args.items() if k != "tid"}
        return samples, detail


def bench_mcp(proj: Project, row: Row, n: int) -> None:
    old_cwd = os.getcwd()
    old_ctx = os.environ.get("WEFT_CONTEXT")
    os.environ["WEFT_CONTEXT"] = str(proj.root)
    os.chdir(proj.root)
    try:
        try:
            server, where = _find_mcp_server(proj)
        except LookupError as exc:
            row.status = "skipped"
            row.note = f"not available yet ({exc})"
            return
        try:
            samples, detail = asyncio.run(_mcp_samples(server, n))
        except LookupError as exc:
            row.status = "skipped"
            row.note = f"not available yet ({exc})"
            return
        row.set_samples(samples)
        row.extra.update(server=where, **detail)
    finally:
        os.chdir(old_cwd)
        if old_ctx is None:
            os.environ.pop("WEFT_CONTEXT", None)
        else:
            os.environ["WEFT_CONTEXT"] = old_ctx


# -- reporting ------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("simplebroker", "pydantic", "typer", "mcp", "psutil"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[dist] = version(dist)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": versions,
    }


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("ms", "tasks/s", "msg/s"):
        return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def render_table(rows: dict[str, Row]) -> str:
    header = ("metric", "median/value", "target", "result")
    lines = []
    for row in rows.values():
        target = "-" if row.target is None else f"{row.op} {_fmt(row.target, row.unit)}"
        if row.status in ("skipped", "error", "pending"):
            verdict = row.status.upper() if row.status != "skipped" else "skipped"
        elif row.passed is None:
            verdict = "info"
        else:
            verdict = "PASS" if row.passed else "MISS"
        lines.append((row.metric, _fmt(row.value, row.unit), target, verdict))
    widths = [max(len(r[i]) for r in [header, *lines]) for i in range(4)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    for line in lines:
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
    notes = [f"  {r.key}: {r.note}" for r in rows.values() if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


# -- main -----------------------------------------------------------------------------------


_ONLY: set[str] = set()  # row keys chosen with --only; empty means every row


def _step(rows: dict[str, Row], keys: list[str], func: Callable[[], None]) -> None:
    """Run one measurement; a failure marks its rows as errors and the run goes on."""
    label = ", ".join(keys)
    if _ONLY and not _ONLY.intersection(keys):
        for key in keys:
            rows[key].status = "skipped"
            rows[key].note = "not chosen with --only"
        return
    log(f"measuring {label}")
    for key in keys:  # other work on a shared machine moves timings: keep the context
        rows[key].extra["load_avg_1m_before"] = round(os.getloadavg()[0], 2)
    try:
        func()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        for key in keys:
            if rows[key].status == "pending":
                rows[key].status = "error"
                rows[key].note = f"{type(exc).__name__}: {exc}"[:500]
        log(f"  {label} failed: {type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False
        )
        return proc.stdout.rstrip("\n")

    try:
        return {
            "head": git("rev-parse", "--short", "HEAD"),
            "modified": [
                line[3:] for line in git("status", "--short").splitlines() if line[:2].strip()
            ],
        }
    except Exception:
        return {}


def run(
    mode: str, json_out: Path, keep: bool = False, bytecode_cache: bool = True
) -> dict[str, Any]:
    sizes = MODES[mode]
    rows = make_rows()
    cli = weft_command()
    base = Path(tempfile.mkdtemp(prefix="weft-bench-"))
    env = bench_env(base / "pycache" if bytecode_cache else None)
    # API rows run in this process and may start a manager: give it the same environment.
    saved_env = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    projects: list[Project] = []
    started = time.perf_counter()
    leftovers: dict[str, list[int]] = {}
    info = machine_info()
    interrupted = False
    try:
        with _sigterm_as_interrupt():
            main = Project(base, "a", env, cli)
            projects.append(main)
            log(f"mode {mode}; project {main.root}; cli {' '.join(cli)}")
            _step(rows, ["warm_run"], lambda: bench_warm(main, rows, sizes.warm_runs))
            _step(rows, ["nowait_run"], lambda: bench_nowait(main, rows, sizes.nowait_runs))
            _step(rows, ["status"], lambda: bench_status(main, rows["status"], sizes.status_runs))
            _step(
                rows,
                ["queue_throughput"],
                lambda: bench_queue(main, rows["queue_throughput"], sizes.queue_messages),
            )
            _step(
                rows,
                ["mcp_round_trip"],
                lambda: bench_mcp(main, rows["mcp_round_trip"], sizes.mcp_runs),
            )
            n, limit = sizes.throughput_tasks, sizes.throughput_deadline
            _step(
                rows,
                ["throughput_command"],
                lambda: bench_throughput(
                    main, rows["throughput_command"], n, limit, _submit_command
                ),
            )
            _step(
                rows,
                ["throughput_function"],
                lambda: bench_throughput(
                    main, rows["throughput_function"], n, limit, _submit_function(main.root)
                ),
            )
            _step(
                rows,
                ["status_large"],
                lambda: bench_status(main, rows["status_large"], sizes.status_runs),
            )
            _step(
                rows,
                ["task_uss"],
                lambda: bench_task_memory(main, rows["task_uss"], sizes.sleep_seconds),
            )
            _step(
                rows,
                ["monitor_cpu"],
                lambda: bench_monitor(main, rows["monitor_cpu"], sizes.sleep_seconds),
            )
            _step(
                rows,
                ["manager_rss", "manager_idle_cpu"],
                lambda: bench_manager_idle(main, rows, sizes.idle_cpu_seconds),
            )
            _step(
                rows,
                ["cold_run_large"],
                lambda: bench_cold(main, rows["cold_run_large"], sizes.cold_runs_large_log),
            )
            leftovers[main.name] = main.stop_everything()
            fresh = Project(base, "b", env, cli)
            projects.append(fresh)
            _step(rows, ["cold_run"], lambda: bench_cold(fresh, rows["cold_run"], sizes.cold_runs))
            leftovers[fresh.name] = fresh.stop_everything()
            growing = Project(base, "c", env, cli)
            projects.append(growing)
            _step(
                rows,
                ["growth_run", "growth_status", "growth_result"],
                lambda: bench_growth(growing, rows, sizes.growth_tasks, sizes.status_runs),
            )
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping everything the benchmark started")
    finally:
        for proj in projects:
            killed = proj.stop_everything()
            if killed:
                leftovers.setdefault(proj.name, []).extend(killed)
        stray = [p.pid for proj in projects for p in proj.processes()]
        os.environ.clear()
        os.environ.update(saved_env)
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    for row in rows.values():
        if row.status == "pending":
            row.status = "error"
            row.note = row.note or ("interrupted" if interrupted else "not measured")
    info["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report = {
        "date": dt.date.today().isoformat(),
        "mode": mode,
        "duration_s": round(time.perf_counter() - started, 1),
        "interrupted": interrupted,
        "cli": cli,
        "bytecode_cache": (
            "private PYTHONPYCACHEPREFIX (as installed)"
            if bytecode_cache
            else "as the shell has it (PYTHONDONTWRITEBYTECODE="
            + saved_env.get("PYTHONDONTWRITEBYTECODE", "")
            + ")"
        ),
        "git": git_state(),
        "machine": info,
        "processes_killed_at_cleanup": leftovers,
        "processes_left": stray,
        "rows": [row.to_dict() for row in rows.values()],
    }
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(render_table(rows))
    print(
        f"\n{mode} run in {report['duration_s']}s on {info['nproc']} x {info['cpu_model']}, "
        f"Python {info['python']}; JSON: {json_out}"
    )
    if stray:
        print(f"WARNING: processes still alive after cleanup: {stray}", file=sys.stderr)
    if interrupted:
        raise SystemExit(130)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="fewer repetitions (about 40 s)")
    group.add_argument("--smoke", action="store_true", help="tiny N: checks that every row runs")
    parser.add_argument("--json-out", type=Path, default=DEFAULT_JSON, help="where to write JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep the shell's PYTHONDONTWRITEBYTECODE (default: a private bytecode cache)",
    )
    parser.add_argument(
        "--only",
        metavar="ROW[,ROW...]",
        default="",
        help="measure just these rows (keys as in the JSON, e.g. throughput_command)",
    )
    args = parser.parse_args(argv)
    chosen = {key for key in args.only.split(",") if key}
    unknown = chosen - set(make_rows())
    if unknown:
        parser.error(f"unknown row(s) {sorted(unknown)}; rows: {', '.join(make_rows())}")
    _ONLY.update(chosen)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    report = run(
        mode, args.json_out.resolve(), keep=args.keep, bytecode_cache=not args.no_bytecode_cache
    )
    return 0 if not report["processes_left"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
