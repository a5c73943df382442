"""Resource monitoring and limit enforcement for one task's process tree.

The task process owns one ``ResourceMonitor`` per target and calls ``tick()`` from its wait
loop; ``timeout()`` tells the loop how long it may sleep before the monitor is due again. The
tree is the target pid and all its descendants. On Linux it is walked through
``/proc/PID/task/TID/children`` and each process read from ``/proc/PID/stat``, ``statm``
and ``fd/`` (about 40 us a process; psutil's objects cost ~3x that, and its
``children(recursive=True)`` scans every process on the machine). Elsewhere psutil does it.

What is measured, per poll, summed over the tree:

* memory: RSS (``/proc/PID/statm``: O(1) per process). RSS counts shared pages once per
  process that maps them, so it over-counts (a forked function starts with its parent's
  copy-on-write pages); the limit therefore errs on the side of stopping early, never late.
  USS would not over-count but costs ~15x more per read and grows with the mapping size.
* CPU seconds: user+system of every live process plus its reaped children's
  (``children_user/system``), plus the last value seen of processes that left the tree
  without being reaped by it. At the end the kernel's exact figure for the reaped target
  (``getrusage(RUSAGE_CHILDREN)`` of the task process) is used when it is larger.
* open files (``num_fds``) and inet connections: TCP (any state, listening included) and UDP
  sockets held by the tree, each socket once. Reading ``/proc/net/tcp`` costs milliseconds
  (the kernel walks its whole hash table), so the socket inodes of the tree's fds are read
  first and the table is scanned only when they could exceed the limit, and for the metric
  at most about once a second (less often if a scan is slow).

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
from typing import Any, NamedTuple

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


_HAVE_PROC_NET = os.path.exists("/proc/self/net/tcp")
_INET_TABLES = ("tcp", "tcp6", "udp", "udp6")
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _has_proc_children() -> bool:
    pid = os.getpid()
    return os.path.exists(f"/proc/{pid}/task/{pid}/children")


# Linux with CONFIG_PROC_CHILDREN: read /proc directly (about 3x cheaper than psutil's
# objects). Elsewhere psutil does the work.
_LINUX_FAST = _has_proc_children() and os.path.exists("/proc/self/statm")


class ProcInfo(NamedTuple):
    """What one poll reads about one process."""

    cpu: float  # user + system, its own and its reaped children's, seconds
    ppid: int
    rss: int  # bytes
    threads: int = 1


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _proc_info(pid: int) -> ProcInfo:
    """One process from /proc/PID/stat and /proc/PID/statm (raises OSError if it is gone)."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat[stat.rindex(b")") + 2 :].split()
    # fields[0] is field 3 of proc(5): ppid=4, utime..cstime=14..17, num_threads=20
    ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    rss_pages = int(_read(f"/proc/{pid}/statm").split()[1])
    return ProcInfo(ticks / _CLK_TCK, int(fields[1]), rss_pages * _PAGE, int(fields[17]))


def _proc_children(pid: int, threads: int = 0) -> list[int]:
    """Direct children of ``pid`` from /proc: every thread's list (any thread may fork)."""
    try:
        tids = [str(pid)] if threads == 1 else os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found: list[int] = []
    for tid in tids:
        try:
            found.extend(int(x) for x in _read(f"/proc/{pid}/task/{tid}/children").split())
        except OSError:
            continue
    return found


def _psutil_info(proc: Any) -> ProcInfo:
    with proc.oneshot():
        t = proc.cpu_times()
        return ProcInfo(
            t.user + t.system + t.children_user + t.children_system,
            proc.ppid(),
            proc.memory_info().rss,
        )


def tree_pids(root: int) -> list[int]:
    """``root`` and its live descendants, root first."""
    if not _LINUX_FAST:
        import psutil

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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _fd_sockets(pid: int, into: set[int] | None) -> int:
    """Count ``pid``'s open fds; with ``into``, add the inodes of its sockets to it."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return 0
    if into is None:
        return len(names)
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if link.startswith("socket:["):
            into.add(int(link[8:-1]))
    return len(names)


def inet_sockets(root: int, inodes: set[int]) -> int:
    """How many of the socket ``inodes`` are TCP or UDP sockets (in ``root``'s namespace)."""
    found: set[int] = set()
    for table in _INET_TABLES:
        for base in (f"/proc/{root}/net", "/proc/self/net"):
            try:
                with open(f"{base}/{table}", "rb") as f:
                    lines = f.read().splitlines()[1:]
                break
            except OSError:
                lines = []
        for line in lines:
            fields = line.split(None, 10)
            if len(fields) > 9 and fields[9].isdigit():
                inode = int(fields[9])
                if inode in inodes:
                    found.add(inode)
    return len(found)


def _psutil_connections(found: dict[int, Any]) -> int:
    import psutil

    conns: set[tuple[Any, ...]] = set()
    for pid in found:
        try:
            for c in psutil.Process(pid).net_connections(kind="inet"):
                conns.add((c.family, c.type, c.laddr, c.raddr, c.status))
        except psutil.Error:
            continue
    return len(conns)


class Violation(NamedTuple):
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


class Sample:
    """One poll of the tree. (Plain classes here: ``@dataclass`` costs ~1.5 ms to import.)"""

    __slots__ = ("connections", "cpu_seconds", "open_files", "pids", "rss_bytes", "sockets")

    def __init__(self, pids: int = 0, sockets: set[int] | None = None) -> None:
        self.pids = pids
        self.rss_bytes = 0
        self.cpu_seconds = 0.0
        self.open_files = 0
        self.sockets = sockets  # socket inodes in the tree, if read this poll
        self.connections: int | None = None  # None: not measured this poll


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
        self._procs: dict[int, Any] = {}  # psutil.Process objects, off the Linux path
        self._last: dict[int, tuple[float, int]] = {}  # pid -> (cpu incl. reaped children, ppid)
        self._gone_cpu = 0.0
        self._pids: list[int] = []
        self._next_due = self.started  # the first poll happens at once
        self._idle_step = FIRST_IDLE_POLL
        self._conn_due = self.started  # the next connection scan for the metric
        self._conn_limit_due = self.started  # the next scan allowed for the limit
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
        want_sockets = self.limits.max_connections is not None or now >= self._conn_due
        sample = self.sample(connections=want_sockets)
        self._count_connections(now, sample)
        self._record(sample)
        new: Violation | None = None
        if enforce and self.violation is None:
            new = self._check(sample)
            if new is not None:
                self.violation = new
                self._stopped = None
                self._signal(signal.SIGKILL, self._pids)  # at once: the group and what we saw
        wait = self._schedule(now, sample, paused=paused, enforce=enforce and new is None)
        self._next_due = now + max(wait, MIN_SLEEP)
        self.own_cpu += time.thread_time() - t0
        self.polls += 1
        if new is not None and self.kill_tree is not None:
            self.kill_tree(signal.SIGKILL)  # and any straggler (a one-off cost, not counted)
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

    def _count_connections(self, now: float, sample: Sample) -> None:
        """Fill ``sample.connections`` when it is worth a scan of the inet tables."""
        if sample.sockets is None or sample.connections is not None:
            return
        limit = self.limits.max_connections
        for_limit = limit is not None and len(sample.sockets) > limit
        if not (now >= self._conn_due or (for_limit and now >= self._conn_limit_due)):
            return
        if not sample.sockets:
            sample.connections = 0
            self._conn_due = now + self.idle_interval
            return
        t0 = time.perf_counter()
        sample.connections = inet_sockets(self.pid, sample.sockets)
        cost = time.perf_counter() - t0
        # Keep the scans under ~1% of a core for the metric, ~10% while near the limit.
        self._conn_due = now + max(self.idle_interval, 100 * cost)
        self._conn_limit_due = now + max(self.interval, 10 * cost)

    # -- measuring -------------------------------------------------------------------

    def _walk(self, sockets: set[int] | None) -> dict[int, tuple[ProcInfo, int]]:
        """Every process in the tree: pid -> (info, open fds)."""
        found: dict[int, tuple[ProcInfo, int]] = {}
        if _LINUX_FAST:
            queue = [self.pid]
            while queue:
                pid = queue.pop()
                if pid in found:
                    continue
                try:
                    info = _proc_info(pid)
                except (OSError, ValueError, IndexError):
                    continue
                found[pid] = (info, _fd_sockets(pid, sockets))
                queue.extend(_proc_children(pid, info.threads))
            return found
        import psutil

        for pid in tree_pids(self.pid):
            try:
                proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                found[pid] = (_psutil_info(proc), proc.num_fds())
            except psutil.Error:
                continue
        for pid in set(self._procs) - set(found):
            del self._procs[pid]
        return found

    def sample(self, *, connections: bool = False) -> Sample:
        """Measure the tree now (no limits are checked)."""
        sockets: set[int] | None = set() if connections and _HAVE_PROC_NET else None
        found = self._walk(sockets)
        out = Sample(pids=len(found), sockets=sockets)
        for info, fds in found.values():
            out.rss_bytes += info.rss
            out.open_files += fds
        for pid, (cpu, ppid) in self._last.items():
            if pid in found or ppid in found:
                continue  # still here, or reaped by a parent in the tree (in its children_*)
            if pid == self.pid or _alive(pid):
                self._gone_cpu += cpu  # the root (reaped by us), or escaped the tree
        self._last = {pid: (info.cpu, info.ppid) for pid, (info, _) in found.items()}
        self._pids = list(found)
        total = self._gone_cpu + sum(info.cpu for info, _ in found.values())
        self.cpu_seconds = max(self.cpu_seconds, total)
        out.cpu_seconds = self.cpu_seconds
        if connections and sockets is None:  # no /proc/net: psutil's (slower) way
            out.connections = _psutil_connections(found)
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
    """CPU seconds one poll of ``pid``'s tree costs this process (for benchmarks/).

    ``connections=True`` includes reading the tree's sockets and, if it has any, one scan of
    the inet tables (what a poll costs a task with ``max_connections`` near its limit).
    Tasks also report their monitor's own cost in ``metrics["monitor_cpu_seconds"]``."""
    monitor = ResourceMonitor(pid)

    def once() -> None:
        sample = monitor.sample(connections=connections)
        if sample.sockets:
            inet_sockets(pid, sample.sockets)

    once()  # warm the per-process cache
    t0 = time.thread_time()
    for _ in range(samples):
        once()
    return (time.thread_time() - t0) / samples
