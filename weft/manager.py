"""The manager: claims spawn requests and gives each to an isolated task process.

Life cycle, as states you can read off ``ps`` (``weft-{ctx}-{id}:manager:{state}``):
starting -> recovering -> idle/busy -> stopping. One manager per project per host, held by a
file lock; it registers in ``weft.workers.registry`` and exits after its idle timeout.

Task processes come from a multiprocessing fork server started before the manager opens any
broker connection, with Weft's task module preloaded: a fork costs milliseconds and the
child inherits nothing of the manager (no connections, no threads, no handles). A task
process that finished its task waits for the next one (``weft.task_pool``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

from weft import events, queues, registry, results
from weft.broker import Activity, Broker
from weft.context import Settings, WeftContext, load_context
from weft.task_pool import Assignment, TaskPool

log = logging.getLogger("weft.manager")

LOCK_FILE = "manager.lock"
LOG_FILE = "manager.log"
REAP_INTERVAL = 0.1  # how often to look at task processes while some run
BUSY_TASKS = 2 * (os.cpu_count() or 1)  # running tasks beyond which a launch waits briefly
LAUNCH_PATIENCE = 0.005  # seconds that launch waits for a task process to come free
STOP_GRACE = float(os.environ.get("WEFT_MANAGER_STOP_GRACE", "10"))
PRUNE_INTERVAL = 3600.0  # seconds between retention passes
FAULT_ENV = "WEFT_TEST_FAULT"  # test-only fault injection; see docs/reliability.md


def _set_title(ctx: WeftContext, manager_id: str, state: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(f"weft-{ctx.name}-{manager_id[-10:]}:manager:{state}")
    except Exception:
        pass


class Manager:
    def __init__(self, ctx: WeftContext, settings: Settings) -> None:
        self.ctx = ctx
        self.settings = settings
        self.host = registry.host_name()
        self.broker: Broker | None = None
        self.mp: ForkServerContext | None = None
        self.pool: TaskPool | None = None  # task processes by the task they run
        self.adopted: dict[str, int] = {}  # tasks of a previous manager still running: tid -> pid
        self.entry: registry.ManagerEntry | None = None
        self.stopping = False
        self.did_work = False
        self.last_activity = time.monotonic()
        self._lock_fd: int | None = None
        self.known_records: dict[str, events.TaskRecord] = {}
        self.waiter: Activity | None = None
        self.last_beat = 0.0  # monotonic time of the last heartbeat
        self.next_prune = 0.0

    # -- start-up ----------------------------------------------------------------------

    def acquire_lock(self, wait: float = 10.0) -> bool:
        """Take the per-host manager lock; give up if another live manager holds it."""
        path = self.ctx.weft_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        delay = 0.01
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_fd = fd
                return True
            except BlockingIOError:
                pass
            # Someone holds it. If that someone is a registered live manager, we are surplus.
            with Broker(self.ctx) as probe:
                if registry.local_manager(probe) is not None:
                    os.close(fd)
                    return False
            if time.monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(delay)  # a predecessor is shutting down; retry its lock shortly
            delay = min(delay * 2, 0.2)

    def start_fork_server(self) -> None:
        mp = multiprocessing.get_context("forkserver")
        # A PostgreSQL project's tasks would each import psycopg (~80 ms): load it once here.
        backend = ["simplebroker_pg.plugin"] if self.ctx.backend == "postgres" else []
        mp.set_forkserver_preload(["weft.task", "weft.manager", *backend, "weft.forkserver_prep"])
        from multiprocessing import forkserver

        forkserver.ensure_running()
        self.mp = mp
        self.pool = TaskPool(
            mp,
            _run_task,
            str(self.ctx.root),
            warm=self.settings.warm_task_processes,
            idle_seconds=self.settings.warm_task_idle,
        )

    def register(self) -> None:
        assert self.broker is not None
        now = time.time_ns()
        body = json.dumps({"pending": True, "pid": os.getpid(), "host": self.host})
        first_id = self.broker.write(queues.WORKERS_REGISTRY, body)
        self.entry = registry.ManagerEntry(
            message_id=first_id,
            manager_id=str(first_id),
            pid=os.getpid(),
            host=self.host,
            started=now,
            heartbeat=now,
            idle_timeout=self.settings.idle_timeout,
            context=str(self.ctx.root),
        )
        _set_title(self.ctx, self.entry.manager_id, "starting")
        self.heartbeat()
        self.broker.delete(queues.WORKERS_REGISTRY, first_id)

    def heartbeat(self) -> None:
        assert self.broker is not None and self.entry is not None
        old = self.entry.message_id
        self.last_beat = time.monotonic()
        self.entry.heartbeat = time.time_ns()
        self.entry.message_id = self.broker.write(queues.WORKERS_REGISTRY, self.entry.body())
        if old != self.entry.message_id:
            self.broker.delete(queues.WORKERS_REGISTRY, old)

    def deregister(self) -> None:
        if self.broker is not None and self.entry is not None:
            self.broker.delete(queues.WORKERS_REGISTRY, self.entry.message_id)

    # -- recovery ----------------------------------------------------------------------

    def recover(self) -> None:
        """Take over from dead managers: give back their claims, settle their lost tasks."""
        assert self.broker is not None and self.entry is not None
        live_ids = set()
        for message_id in registry.foreign_entries(self.broker):
            self.broker.delete(queues.WORKERS_REGISTRY, message_id)
        for entry in registry.entries(self.broker):
            if entry.manager_id == self.entry.manager_id:
                continue
            if entry.is_alive():
                live_ids.add(entry.manager_id)
                continue
            self.broker.delete(queues.WORKERS_REGISTRY, entry.message_id)
            log.info(
                "removed dead manager %s (pid %s on %s)", entry.manager_id, entry.pid, entry.host
            )
        for name, _ in self.broker.list_queues(pattern=queues.spawn_claims("*")):
            owner = name.rsplit(".", 1)[-1]
            if owner != self.entry.manager_id and owner not in live_ids:
                moved = self.broker.move_all(name, queues.SPAWN_REQUESTS)
                log.info("gave back %d claimed request(s) of dead manager %s", moved, owner)
        live_hosts = {e.host for e in registry.live_entries(self.broker)}
        from weft.state import current_records

        records = current_records(self.broker)
        self.known_records = records
        for record in records.values():
            if record.status not in (events.RUNNING, events.PAUSED):
                continue
            if (record.host or self.host) == self.host:
                if record.task_pid and registry.pid_is_weft(record.task_pid):
                    self.adopted[record.tid] = record.task_pid
                else:
                    settle_lost_task(
                        self.broker, record.tid, f"task process {record.task_pid} vanished"
                    )
            elif record.host not in live_hosts:
                settle_lost_task(
                    self.broker,
                    record.tid,
                    f"host {record.host} was lost (no live manager there)",
                    host=record.host,
                )

    def check_peers(self) -> None:
        """Take over from managers elsewhere that stopped heartbeating (a lost host).

        Runs on every heartbeat. Whoever deletes a dead manager's registry entry does its
        recovery, so two survivors never both settle the same tasks: its claimed requests go
        back to ``weft.spawn.requests``; tasks still running on a host left with no live
        manager are settled as failed, naming that host.
        """
        assert self.broker is not None and self.entry is not None
        dead = [
            e
            for e in registry.entries(self.broker)
            if e.manager_id != self.entry.manager_id and not e.is_alive()
        ]
        won = [e for e in dead if self.broker.delete(queues.WORKERS_REGISTRY, e.message_id)]
        for entry in won:
            moved = self.broker.move_all(
                queues.spawn_claims(entry.manager_id), queues.SPAWN_REQUESTS
            )
            log.warning(
                "manager %s (pid %s on %s) missed its heartbeats; gave back %d request(s)",
                entry.manager_id,
                entry.pid,
                entry.host,
                moved,
            )
        live_hosts = {e.host for e in registry.live_entries(self.broker)}
        lost_hosts = {e.host for e in won} - live_hosts - {self.host}
        if not lost_hosts:
            return
        from weft.state import current_records

        for record in current_records(self.broker).values():
            if record.status in (events.RUNNING, events.PAUSED) and record.host in lost_hosts:
                settle_lost_task(
                    self.broker,
                    record.tid,
                    f"host {record.host} was lost (its manager stopped heartbeating)",
                    host=record.host,
                )

    # -- the loop ----------------------------------------------------------------------

    def claim_and_launch(self) -> int:
        assert self.broker is not None and self.entry is not None and self.pool is not None
        launched = 0
        claims = queues.spawn_claims(self.entry.manager_id)
        while not self.stopping:
            # A read first: most wake-ups are other commits, and a claim attempt would take
            # the database's write lock for nothing.
            if not self.broker.has_messages(queues.SPAWN_REQUESTS):
                break
            # Reap before the claim, never between claim and launch: a task process that
            # requeued this very request must not find it claimed and settle it as lost.
            if not self.pool.idle:
                self.reap()  # a task process that just finished costs less than a new one
            # With this many running, one is likely to finish within moments, and a new
            # process would only compete with them for the CPU: give them a moment.
            crowded = not self.pool.idle and len(self.pool.running) >= BUSY_TASKS
            if crowded and self.pool.wait_for_news(LAUNCH_PATIENCE):
                self.reap()
            claimed = self.broker.move_one(queues.SPAWN_REQUESTS, claims)
            if claimed is None:
                break
            if os.environ.get(FAULT_ENV) == "crash_after_claim":
                os._exit(99)
            self.pool.launch(Assignment(str(claimed.id), claims, _runs_functions(claimed.body)))
            launched += 1
            if time.monotonic() - self.last_beat >= registry.HEARTBEAT_SECONDS:
                self.heartbeat()  # a long burst of launches must not look like a lost host
        if launched:
            self.did_work = True
            self.last_activity = time.monotonic()
        return launched

    def reap(self) -> None:
        assert self.broker is not None and self.pool is not None
        for ended in self.pool.collect():
            tid, code = ended.tid, ended.exitcode
            self.last_activity = time.monotonic()
            if code:
                from weft.runner import describe_exit

                settle_lost_task(self.broker, tid, f"task process {describe_exit(code)}")
            elif self.entry is not None and self.broker.peek_one(
                queues.spawn_claims(self.entry.manager_id), message_id=int(tid)
            ):
                # It finished cleanly yet never took its request: it must not wait forever.
                settle_lost_task(self.broker, tid, "task process ended before taking its work")
        for tid, pid in list(self.adopted.items()):
            if registry.pid_is_weft(pid):
                continue
            del self.adopted[tid]
            self.last_activity = time.monotonic()
            history = events.events_for(self.broker, tid)
            if not history or history[-1].get("status") not in events.FINAL_STATUSES:
                settle_lost_task(self.broker, tid, f"task process {pid} vanished")

    def apply_retention(self) -> None:
        """With WEFT_RETENTION set, prune old finished tasks while idle, at most hourly."""
        if self.settings.retention is None or time.monotonic() < self.next_prune:
            return
        self.next_prune = time.monotonic() + PRUNE_INTERVAL
        from weft.client import WeftClient

        with WeftClient(self.ctx) as client:
            summary = client.prune(older_than=self.settings.retention)
        log.info("retention: %s", summary)

    def busy(self) -> bool:
        return bool((self.pool and self.pool.running) or self.adopted)

    def should_exit(self) -> bool:
        if self.busy():
            return False
        if not self.settings.manager_reuse:
            return True
        return time.monotonic() - self.last_activity >= self.settings.idle_timeout

    def run(self) -> int:
        # Clients wake a registered manager with SIGUSR1 (whose default would end us), so
        # the handlers come before anything else. The signal's byte on this pipe ends the
        # wait at once: an idle manager can poll the database slowly and still start fast.
        wake_r, wake_w = os.pipe()
        for fd in (wake_r, wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if not self.acquire_lock():
            return 0
        self.start_fork_server()
        self.broker = Broker(self.ctx)
        self.register()
        assert self.entry is not None
        _set_title(self.ctx, self.entry.manager_id, "recovering")
        self.recover()
        if self.settings.autostart:
            self.launch_autostart()
        waiter = self.waiter = self.broker.waiter([queues.SPAWN_REQUESTS], wake_fd=wake_r)
        next_beat = time.monotonic() + registry.HEARTBEAT_SECONDS
        state = ""
        try:
            while not self.stopping:
                # Reap first: settling a lost task may requeue its request, and our own
                # writes never wake our waiter (SQLite's data_version counts other
                # connections' commits only), so it must be claimed in this same pass.
                self.reap()
                self.claim_and_launch()
                now = time.monotonic()
                if now >= next_beat:
                    self.heartbeat()
                    self.check_peers()
                    next_beat = now + registry.HEARTBEAT_SECONDS
                new_state = "busy" if self.busy() else "idle"
                if new_state != state:
                    state = new_state
                    _set_title(self.ctx, self.entry.manager_id, state)
                if not self.busy():
                    self.apply_retention()
                if self.should_exit() and self._exit_safely():
                    break
                timeout = next_beat - now
                if self.busy():
                    timeout = min(timeout, REAP_INTERVAL)
                elif self.settings.manager_reuse:
                    timeout = min(timeout, self.settings.idle_timeout - (now - self.last_activity))
                retire_in = self.pool.until_next_retirement() if self.pool else None
                if retire_in is not None:
                    timeout = min(timeout, retire_in)
                waiter.wait(max(0.0, timeout))
        finally:
            waiter.close()
            self.shutdown()
        return 0

    def _exit_safely(self) -> bool:
        """Deregister, then look once more: a client that saw us alive may have just submitted."""
        assert self.broker is not None
        self.deregister()
        if self.broker.has_messages(queues.SPAWN_REQUESTS):
            self.heartbeat()
            return False
        self.entry = None
        return True

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if self.waiter is not None:
            self.waiter.poke()

    def shutdown(self) -> None:
        """Stop claiming; give running tasks a grace period, then STOP them."""
        if self.entry is not None:
            _set_title(self.ctx, self.entry.manager_id, "stopping")
        assert self.broker is not None
        pool = self.pool
        if pool is not None:
            deadline = time.monotonic() + STOP_GRACE
            while pool.running and time.monotonic() < deadline:
                self.reap()
                time.sleep(REAP_INTERVAL)
            for tid in pool.running:
                self.broker.write(queues.ctrl_in(tid), json.dumps({"command": "STOP"}))
            deadline = time.monotonic() + 5
            while pool.running and time.monotonic() < deadline:
                self.reap()
                time.sleep(REAP_INTERVAL)
            pool.kill_running()
            pool.close()
        if self.entry is not None:
            self.deregister()
            self.broker.move_all(queues.spawn_claims(self.entry.manager_id), queues.SPAWN_REQUESTS)
        self.broker.close()

    # -- autostart ---------------------------------------------------------------------

    def launch_autostart(self) -> None:
        """Submit each ``.weft/autostart/*.json`` template unless a copy already runs."""
        from weft.autostart import launch_templates

        assert self.broker is not None
        launch_templates(self.ctx, self.broker, self.known_records)


def _run_task(root: str, tid: str, claims: str, functions: bool, conn: Connection | None) -> None:
    """Runs in the forked task process (the fork server has ``weft.task`` preloaded)."""
    from weft.task import task_main

    task_main(root, tid, claims, functions=functions, conn=conn)


def _runs_functions(body: str) -> bool:
    """Whether a request runs a Python function (its task process needs a forker)."""
    try:
        return bool(json.loads(body)["spec"].get("type") == "function")
    except (ValueError, KeyError, TypeError, AttributeError):
        return False


def settle_lost_task(broker: Broker, tid: str, reason: str, *, host: str | None = None) -> None:
    """Record a task whose process died without finishing: failed event, result, policy.

    ``host`` is where the task ran when that is not here (a lost host); the event keeps
    naming it, and ``settled_by`` names this host.
    """
    from weft.reserved import apply_reserved_policy

    last = (events.events_for(broker, tid) or [{}])[-1]
    if last.get("status") in events.FINAL_STATUSES and not last.get("requeued"):
        # It finished (result written, final event logged) and died only after: a second,
        # failed ending would contradict the result its client may already have read.
        _end_orphaned_target(broker, tid)
        return
    claim_names = [name for name, _ in broker.list_queues(pattern=queues.spawn_claims("*"))]
    for name in claim_names:  # died before it could reserve its request
        broker.move_one(name, queues.reserved(tid), message_id=int(tid))
    _end_orphaned_target(broker, tid)
    spec: dict[str, Any] | None = None
    reserved = broker.peek_one(queues.reserved(tid), message_id=int(tid))
    if reserved is not None:
        try:
            spec = json.loads(reserved.body)
        except json.JSONDecodeError:
            spec = None
    from weft.reserved import effective_policy

    policy = str(((spec or {}).get("spec") or {}).get("reserved_policy") or "keep")
    policy = effective_policy(broker, tid, policy)
    requeue = policy == "requeue"
    if not requeue:
        broker.write(
            queues.outbox(tid),
            results.encode(
                results.make_result(tid, events.FAILED, return_code=1, output="", error=reason)
            ),
        )
    events.log_event(
        broker,
        events.make_event(
            events.WORK_FAILED,
            tid,
            events.FAILED,
            taskspec=spec,
            return_code=1,
            error=reason,
            host=host or registry.host_name(),
            settled_by=registry.host_name() if host else None,
            requeued=requeue or None,
        ),
    )
    inputs = list((((spec or {}).get("io") or {}).get("inputs") or {}).values())
    apply_reserved_policy(broker, tid, policy, success=False, inputs=inputs)


def _end_orphaned_target(broker: Broker, tid: str) -> None:
    """Kill the process tree of a dead task's target, if it still runs on this host."""
    host = registry.host_name()
    history = events.events_for(broker, tid)
    for event in history:
        target_pid = event.get("target_pid")
        if event.get("event") != events.WORK_STARTED or not target_pid or event.get("host") != host:
            continue
        try:
            if os.getpgid(target_pid) == target_pid:  # still the session leader we started
                os.killpg(target_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if not any(event.get("host") == host for event in history):
        return
    # A queue-fed task starts a target per input item and logs no PID for it: find what
    # is left by the WEFT_TID every target (and whatever it started) has in its environment.
    import psutil

    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get("WEFT_TID") == tid:
                proc.kill()
        except (psutil.Error, OSError):
            continue


def spawn_manager(ctx: WeftContext, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a manager detached in its own session; its output goes to ``.weft/logs/``."""
    ctx.logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = ctx.logs_dir / LOG_FILE
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            # -c, not -m: the fork server would otherwise re-import this module as __main__.
            [sys.executable, "-c", "import weft.manager as m; m.entry()", str(ctx.root)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=str(ctx.root),
            env={**os.environ, **ctx.to_env(), **(env or {})},
        )
    return proc


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0]) if args else None
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(process)d %(levelname)s %(message)s"
    )
    ctx = load_context(root, create=False)
    return Manager(ctx, Settings.from_env()).run()


def entry() -> None:
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # skip multiprocessing's exit handler, which would join task processes


if __name__ == "__main__":
    entry()
