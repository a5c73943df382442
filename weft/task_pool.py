"""The manager's task processes, kept warm between tasks.

A task process that finished its task tells the manager so on its pipe and waits there for
the next one; the manager hands a claimed request to such an idle process before it forks a
new one. One task at a time per process, and every target still starts in a process of its
own (a command's exec, a function's fresh fork): what is reused is the supervisor, whose
fork, start-up and broker connection are most of a short task's cost.

The manager decides when a process ends, never the process itself: it retires an idle one
by closing its pipe (the process sees end-of-file and exits). A process that wanted to leave
on its own could do so just as the manager handed it a request, and the request would be
lost. A manager that dies closes every pipe with it, so no idle process outlives it.

``WEFT_WARM_TASK_PROCESSES`` caps how many idle processes are kept (0: one process per
task, as a plain fork server gives), ``WEFT_WARM_TASK_IDLE_SECONDS`` how long one waits for
work before it is retired. A process serves at most ``TASKS_PER_PROCESS`` tasks, so whatever
a task leaves behind in its supervisor is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

TASKS_PER_PROCESS = 200  # then the process is retired instead of being reused
RETIRE_GRACE_SECONDS = 10.0  # a retired process still alive after this is killed


@dataclass
class Assignment:
    """What a task process needs to run one task."""

    tid: str
    claims: str  # the manager's claim queue holding the request
    functions: bool  # it runs a Python function: the process needs a function forker

    def message(self) -> tuple[str, str, bool]:
        return (self.tid, self.claims, self.functions)


@dataclass
class Worker:
    process: BaseProcess
    conn: Connection | None  # the manager's end of the process's pipe (None: not reused)
    tid: str | None  # the task it runs; None while idle
    served: int = 1
    idle_since: float = field(default_factory=time.monotonic)


@dataclass
class Ended:
    """A task whose process is done with it: ``exitcode`` None means it finished and the
    process lives on; otherwise the process exited with that code."""

    tid: str
    exitcode: int | None


class TaskPool:
    """Task processes by what they run; idle ones wait for the next request."""

    def __init__(
        self,
        mp: ForkServerContext,
        target: Callable[..., None],
        root: str,
        *,
        warm: int,
        idle_seconds: float = 5.0,
    ) -> None:
        self.mp = mp
        self.target = target  # runs in the task process: (root, tid, claims, functions, conn)
        self.root = root
        self.warm = warm
        self.idle_seconds = idle_seconds
        self.running: dict[str, Worker] = {}  # tid -> the process running it
        self.idle: list[Worker] = []  # most recently idle last: it is reused first
        # Processes whose task was requeued and started again elsewhere before they reported
        # it done: what they report is no longer news about that task.
        self.superseded: list[Worker] = []
        # Pipe closed, waiting for them to exit; killed if they have not by the deadline.
        self.retiring: list[tuple[BaseProcess, float]] = []

    def launch(self, job: Assignment) -> None:
        earlier = self.running.pop(job.tid, None)
        if earlier is not None:
            self.superseded.append(earlier)
        while self.idle:
            worker = self.idle.pop()
            assert worker.conn is not None
            try:
                worker.conn.send(job.message())
            except OSError:  # it died while idle: collect its exit, try the next one
                self._retire(worker)
                continue
            worker.tid = job.tid
            worker.served += 1
            self.running[job.tid] = worker
            return
        ours, theirs = self.mp.Pipe() if self.warm else (None, None)
        proc = self.mp.Process(
            target=self.target,
            args=(self.root, job.tid, job.claims, job.functions, theirs),
            name=f"weft-task-{job.tid}",
        )
        proc.start()
        if theirs is not None:
            theirs.close()  # the task process has its own copy of this end
        self.running[job.tid] = Worker(proc, ours, job.tid)

    def wait_for_news(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for a running task process to report (or exit)."""
        conns = [w.conn for w in self.running.values() if w.conn is not None]
        return bool(conns) and bool(wait(conns, timeout=timeout))

    def collect(self) -> list[Ended]:
        """Tasks that ended since the last call, and processes that exited."""
        ended: list[Ended] = []
        for _, tid, news in self._news(list(self.running.values())):
            del self.running[tid]
            ended.append(Ended(tid, news))
        # A superseded process's task runs again elsewhere: what it says is not reported.
        for worker, _, _ in self._news(self.superseded):
            self.superseded.remove(worker)
        self._retire_stale()
        return ended

    def _news(self, workers: list[Worker]) -> list[tuple[Worker, str, int | None]]:
        """The workers that finished their task (None: each now rests) or exited (their exit
        code: each now closed), with the task they were running, as ``Ended`` tells it."""
        conns = [w.conn for w in workers if w.conn is not None]
        ready = set(wait(conns, timeout=0)) if conns else set()
        news: list[tuple[Worker, str, int | None]] = []
        for worker in workers:
            tid = worker.tid
            assert tid is not None
            if worker.conn is not None and worker.conn in ready:
                try:
                    worker.conn.recv()  # the TID it finished
                except (EOFError, OSError):
                    worker.process.join(1.0)  # the pipe closed: it is exiting
                else:
                    news.append((worker, tid, None))
                    self._rest(worker)
                    continue
            code = worker.process.exitcode
            if code is not None:
                news.append((worker, tid, code))
                if worker.conn is not None:
                    worker.conn.close()
                worker.process.close()
        return news

    def _rest(self, worker: Worker) -> None:
        worker.tid = None
        worker.idle_since = time.monotonic()
        if worker.served >= TASKS_PER_PROCESS or len(self.idle) >= self.warm:
            self._retire(worker)
        else:
            self.idle.append(worker)

    def _retire(self, worker: Worker) -> None:
        if worker.conn is not None:
            worker.conn.close()
        self.retiring.append((worker.process, time.monotonic() + RETIRE_GRACE_SECONDS))

    def until_next_retirement(self) -> float | None:
        """Seconds until an idle process is due to be retired (or exits); None if none is."""
        if self.retiring:
            return 0.1  # look again soon: they exit as soon as they read end-of-file
        if not self.idle:
            return None
        oldest = min(w.idle_since for w in self.idle)
        return max(0.0, oldest + self.idle_seconds - time.monotonic())

    def _retire_stale(self) -> None:
        now = time.monotonic()
        stale = [w for w in self.idle if now - w.idle_since >= self.idle_seconds]
        for worker in stale:
            self.idle.remove(worker)
            self._retire(worker)
        for entry in list(self.retiring):
            proc, deadline = entry
            if proc.exitcode is None and now >= deadline:
                proc.kill()
                proc.join(1.0)
            if proc.exitcode is not None:
                self.retiring.remove(entry)
                proc.close()

    def kill_running(self) -> None:
        for worker in (*self.running.values(), *self.superseded):
            worker.process.kill()

    def close(self, wait_seconds: float = 2.0) -> None:
        """Retire every idle process and wait (briefly) for the retired ones to exit."""
        for worker in self.idle:
            self._retire(worker)
        self.idle = []
        deadline = time.monotonic() + wait_seconds
        for proc, _ in self.retiring:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join(1.0)
        self.retiring = []
