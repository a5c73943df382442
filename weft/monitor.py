"""Resource monitoring and limit enforcement for one task's process tree (psutil).

The task process owns one ``ResourceMonitor`` per target and calls ``tick()`` from its wait
loop; ``timeout()`` tells the loop how long it may sleep before the monitor is due again. The
tree is the target pid and all its descendants, found by walking
``/proc/PID/task/TID/children`` (a few file reads for a small tree; psutil's
``children(recursive=True)`` scans every process on the machine and is the fallback).

What is measured, per poll, summed over the tree:

* memory: RSS (``/proc/PID/statm``: O(1) per process). RSS counts shared pages once per
  process that maps them, so it over-counts (a forked function starts with its parent's
  copy-on-write pages); the limit therefore errs on the side of stopping early, never late.
  USS would not over-count but costs ~15x more per read and grows with the mapping size.
* CPU seconds: user+system of every live process plus its reaped children's
  (``children_user/system``), plus the last value seen of processes that left the tree
  without being reaped by it. At the end the kernel's exact figure for the reaped target
  (``getrusage(RUSAGE_CHILDREN)`` of the task process) is used when it is larger.
* open files (``num_fds``) and inet connections (deduplicated across the tree).

Memory, open files and connections are hard limits: crossing one SIGKILLs the tree at once
(a grace period would let memory keep growing) and records a ``Violation``. CPU is a ceiling:
the tree is duty-cycled with SIGSTOP/SIGCONT by a token bucket (see ``_throttle`` and
docs/limits.md).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from weft.taskspec import Limits

DEFAULT_INTERVAL = 0.1  # seconds between polls for a task with limits (WEFT_MONITOR_INTERVAL)
IDLE_INTERVAL = 1.0  # slowest poll for a task without limits (WEFT_MONITOR_IDLE_INTERVAL)
FIRST_IDLE_POLL = 0.05  # without limits: poll at start, then 0.05 s, doubling to IDLE_INTERVAL
CPU_PERIOD = 0.1  # seconds per run+stop cycle of the CPU ceiling (WEFT_MONITOR_CPU_PERIOD)
MIN_SLEEP = 0.005  # never schedule the next poll sooner than this
LIMIT_EXIT_CODE = 137  # 128 + SIGKILL: what the tree died of, as docker reports an OOM kill

KillTree = Callable[[int], None]

_LABELS = {
    "memory_mb": ("memory", " MB"),
    "max_fds": ("open files", ""),
    "max_connections": ("connections", ""),
}


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default


def _has_proc_children() -> bool:
    pid = os.getpid()
    return os.path.exists(f"/proc/{pid}/task/{pid}/children")


_PROC_CHILDREN = _has_proc_children()


def _proc_children(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (every thread's list: a thread may have forked)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in threads:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found.extend(int(x) for x in f.read().split())
        except OSError:
            continue
    return found


def tree_pids(root: int) -> list[int]:
    """``root`` and its live descendants, root first."""
    if not _PROC_CHILDREN:
        try:
            return [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
        except psutil.Error:
            return [root]
    pids = [root]
    seen = {root}
    i = 0
    while i < len(pids):
        for child in _proc_children(pids[i]):
            if child not in seen:
                seen.add(child)
                pids.append(child)
        i += 1
    return pids


@dataclass(frozen=True)
class Violation:
    """A hard limit the tree crossed, and the value seen when it did."""

    limit: str  # the Limits field: memory_mb, max_fds, max_connections
    value: float
    threshold: float

    @property
    def message(self) -> str:
        label, unit = _LABELS.get(self.limit, (self.limit, ""))
        return f"{label} limit exceeded: {self.value:.0f}{unit} > {self.threshold:.0f}{unit}"

    def detail(self) -> dict[str, Any]:
        return {"limit": self.limit, "value": round(self.value, 1), "threshold": self.threshold}


@dataclass
class Sample:
    """One poll of the tree."""

    pids: int = 0
    rss_bytes: int = 0
    cpu_seconds: float = 0.0
    open_files: int = 0
    connections: int | None = None  # None: not measured this poll


class ResourceMonitor:
    """Measures a target's process tree, enforces its limits and reports metrics.

    ``kill_tree(sig)`` signals the whole tree (``runner.Target.signal_tree``); it is used to
    end the tree on a violation. SIGSTOP/SIGCONT for the CPU ceiling go to the pids this
    monitor has just walked (and the target's process group), which is cheaper.
    """

    def __init__(
        self,
        pid: int,
        limits: Limits | None = None,
        kill_tree: KillTree | None = None,
        *,
        interval: float | None = None,
        idle_interval: float | None = None,
        cpu_period: float | None = None,
    ) -> None:
        self.pid = pid
        self.limits = limits or Limits()
        self.kill_tree = kill_tree
        self.interval = interval or _env_seconds("WEFT_MONITOR_INTERVAL", DEFAULT_INTERVAL)
        self.idle_interval = idle_interval or _env_seconds(
            "WEFT_MONITOR_IDLE_INTERVAL", IDLE_INTERVAL
        )
        self.has_limits = not self.limits.is_empty()
        self.violation: Violation | None = None
        self.started = time.monotonic()
        self.ended: float | None = None
        self._rusage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._procs: dict[int, psutil.Process] = {}
        self._last: dict[int, tuple[float, int]] = {}  # pid -> (cpu incl. reaped children, ppid)
        self._gone_cpu = 0.0
        self._pids: list[int] = []
        self._next_due = self.started  # the first poll happens at once
        self._idle_step = FIRST_IDLE_POLL
        self._last_conn_poll = -1e9
        # observations
        self.polls = 0
        self.own_cpu = 0.0
        self.cpu_seconds = 0.0
        self.peak_rss = 0
        self.peak_open_files = 0
        self.peak_connections: int | None = None
        self.peak_pids = 0
        # the CPU ceiling (token bucket, in CPU seconds)
        self._frac = (self.limits.cpu_percent or 100) / 100.0
        self._throttling = self.limits.cpu_percent is not None
        period = cpu_period or _env_seconds("WEFT_MONITOR_CPU_PERIOD", CPU_PERIOD)
        # Two clock ticks at least: /proc CPU times move in 10 ms steps.
        self._cap = max(period * self._frac * (1.0 - self._frac), 0.02)
        self._bucket = self._cap
        self._run_rate = 1.0  # CPU/s the tree used while last running; assume one busy core
        self._stopped: set[int] | None = None  # pids we SIGSTOPped, while the tree is held
        self._t_last = self.started
        self._cpu_last = 0.0
        self.throttled_seconds = 0.0

    # -- scheduling ------------------------------------------------------------------

    def timeout(self, tick: float) -> float:
        """How long the caller may wait before calling ``tick()`` again (at most ``tick``)."""
        if self.ended is not None:
            return tick
        return max(0.0, min(tick, self._next_due - time.monotonic()))

    def tick(self, *, paused: bool = False, enforce: bool = True) -> Violation | None:
        """Poll if due. ``paused``: the user has paused the tree (do not resume it).
        ``enforce=False``: the tree is being ended anyway (timeout, STOP): only measure.
        Returns a new violation (the tree has already been sent SIGKILL), else None."""
        now = time.monotonic()
        if self.ended is not None or now < self._next_due - 0.001:
            return None
        t0 = time.thread_time()
        sample = self.sample(connections=self._want_connections(now))
        self._record(sample)
        new: Violation | None = None
        if enforce and self.violation is None:
            new = self._check(sample)
            if new is not None:
                self.violation = new
                self._release()
                if self.kill_tree is not None:
                    self.kill_tree(signal.SIGKILL)
        wait = self._schedule(now, sample, paused=paused, enforce=enforce and new is None)
        self._next_due = now + max(wait, MIN_SLEEP)
        self.own_cpu += time.thread_time() - t0
        self.polls += 1
        return new

    def _schedule(self, now: float, sample: Sample, *, paused: bool, enforce: bool) -> float:
        if self._throttling:
            if paused or not enforce:
                # The user holds the tree (PAUSE: RESUME will continue it) or it is being
                # ended: stop holding it, and let no credit pile up meanwhile.
                if paused:
                    self._stopped = None
                else:
                    self._release()
                self._t_last, self._cpu_last = now, sample.cpu_seconds
                return self.interval
            return self._throttle(now, sample.cpu_seconds)
        if self.has_limits:
            return self.interval
        step = self._idle_step
        self._idle_step = min(step * 2, self.idle_interval)
        return step

    def _want_connections(self, now: float) -> bool:
        if self.limits.max_connections is not None:
            return True
        if now - self._last_conn_poll >= self.idle_interval:
            self._last_conn_poll = now
            return True
        return False

    # -- measuring -------------------------------------------------------------------

    def _process(self, pid: int) -> psutil.Process:
        proc = self._procs.get(pid)
        if proc is None:
            proc = self._procs[pid] = psutil.Process(pid)
        return proc

    def sample(self, *, connections: bool = False) -> Sample:
        """Measure the tree now (no limits are checked)."""
        pids = tree_pids(self.pid)
        out = Sample()
        live: dict[int, tuple[float, int]] = {}
        conns: set[tuple[Any, ...]] = set()
        for pid in pids:
            try:
                proc = self._process(pid)
                with proc.oneshot():
                    times = proc.cpu_times()
                    ppid = proc.ppid()
                    rss = proc.memory_info().rss
                    fds = proc.num_fds()
                    if connections:
                        for c in proc.net_connections(kind="inet"):
                            conns.add((c.family, c.type, c.laddr, c.raddr, c.status))
            except psutil.Error:
                continue
            own = times.user + times.system + times.children_user + times.children_system
            live[pid] = (own, ppid)
            out.rss_bytes += rss
            out.open_files += fds
        for pid, (cpu, ppid) in self._last.items():
            if pid in live or ppid in live:
                continue  # still here, or reaped by a parent in the tree (in its children_*)
            if pid == self.pid or psutil.pid_exists(pid):
                self._gone_cpu += cpu  # the root (reaped by us), or escaped the tree
        for pid in set(self._procs) - set(live):
            del self._procs[pid]
        self._last = live
        self._pids = list(live)
        out.pids = len(live)
        total = self._gone_cpu + sum(cpu for cpu, _ in live.values())
        self.cpu_seconds = max(self.cpu_seconds, total)
        out.cpu_seconds = self.cpu_seconds
        if connections:
            out.connections = len(conns)
        return out

    def _record(self, sample: Sample) -> None:
        self.peak_rss = max(self.peak_rss, sample.rss_bytes)
        self.peak_open_files = max(self.peak_open_files, sample.open_files)
        self.peak_pids = max(self.peak_pids, sample.pids)
        if sample.connections is not None:
            self.peak_connections = max(self.peak_connections or 0, sample.connections)

    def _check(self, sample: Sample) -> Violation | None:
        lim = self.limits
        mb = sample.rss_bytes / (1024 * 1024)
        if lim.memory_mb is not None and mb > lim.memory_mb:
            return Violation("memory_mb", mb, lim.memory_mb)
        if lim.max_fds is not None and sample.open_files > lim.max_fds:
            return Violation("max_fds", sample.open_files, lim.max_fds)
        if (
            lim.max_connections is not None
            and sample.connections is not None
            and sample.connections > lim.max_connections
        ):
            return Violation("max_connections", sample.connections, lim.max_connections)
        return None

    # -- the CPU ceiling -------------------------------------------------------------

    def _throttle(self, now: float, cpu: float) -> float:
        """Token bucket: credit grows at ``cpu_percent`` of a core per second of wall time and
        is spent by the tree's CPU use; at zero the tree is stopped until the bucket is full
        again. Full bucket = period * f * (1 - f) CPU seconds, so one busy core runs
        ``period * f`` and stops ``period * (1 - f)``. Returns seconds to the next poll."""
        frac = self._frac
        dt = max(now - self._t_last, 0.0)
        used = max(cpu - self._cpu_last, 0.0)
        if self._stopped is None and dt >= MIN_SLEEP:
            self._run_rate = used / dt
        elif self._stopped is not None:
            self.throttled_seconds += dt
        self._t_last, self._cpu_last = now, cpu
        self._bucket = min(self._bucket + frac * dt - used, self._cap)
        if self._stopped is not None:
            if self._bucket < self._cap - frac * MIN_SLEEP:
                self._signal(signal.SIGSTOP, self._pids)  # and any child that appeared since
                self._stopped.update(self._pids)
                return (self._cap - self._bucket) / frac
            self._release()
        elif self._bucket <= 0:
            self._stopped = set(self._pids)
            self._signal(signal.SIGSTOP, self._pids)
            return (self._cap - self._bucket) / frac
        excess = self._run_rate - frac
        if excess <= 0.01:
            return self.interval  # the tree is not using more than its share
        return min(max(self._bucket / excess, MIN_SLEEP), self.interval)

    def _signal(self, sig: int, pids: list[int]) -> None:
        with contextlib.suppress(OSError):
            os.killpg(self.pid, sig)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)

    def _release(self) -> None:
        """SIGCONT whatever the CPU ceiling holds."""
        if self._stopped is not None:
            self._signal(signal.SIGCONT, sorted(self._stopped | set(self._pids)))
            self._stopped = None

    # -- the end ---------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """The target has exited (and been reaped): release the tree, return the metrics."""
        if self.ended is None:
            self.ended = time.monotonic()
            self._release()
        return self.metrics()

    def metrics(self) -> dict[str, Any]:
        end = self.ended if self.ended is not None else time.monotonic()
        cpu = self.cpu_seconds
        if self.ended is not None:
            now = resource.getrusage(resource.RUSAGE_CHILDREN)
            base = self._rusage0
            reaped = (now.ru_utime - base.ru_utime) + (now.ru_stime - base.ru_stime)
            cpu = max(cpu, reaped)
        out: dict[str, Any] = {
            "peak_memory_mb": round(self.peak_rss / (1024 * 1024), 1),
            "cpu_seconds": round(cpu, 3),
            "wall_seconds": round(end - self.started, 3),
            "peak_open_files": self.peak_open_files,
        }
        if self.peak_connections is not None:
            out["peak_connections"] = self.peak_connections
        if self.peak_pids > 1:
            out["peak_processes"] = self.peak_pids
        if self._throttling:
            out["cpu_throttled_seconds"] = round(self.throttled_seconds, 3)
        out["monitor_polls"] = self.polls
        out["monitor_cpu_seconds"] = round(self.own_cpu, 4)
        return out


def poll_cost(pid: int, samples: int = 200, *, connections: bool = False) -> float:
    """CPU seconds one poll of ``pid``'s tree costs this process (for benchmarks/)."""
    monitor = ResourceMonitor(pid)
    monitor.sample(connections=connections)  # warm the per-process cache
    t0 = time.thread_time()
    for _ in range(samples):
        monitor.sample(connections=connections)
    return (time.thread_time() - t0) / samples
