"""WeftClient: the one API. The CLI, the MCP server and user code all drive Weft through it.

Everything here is a short sequence of broker operations; the engine's moving parts (the
manager, the task processes) only ever meet the client through queues.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from weft import events, queues, registry, results
from weft.broker import Broker
from weft.context import WeftContext, load_context
from weft.errors import NotFoundError, UsageError, WaitTimeout, WeftError
from weft.spec_options import PreparedSpec
from weft.tid import is_full, short

if TYPE_CHECKING:
    import subprocess

    from weft.queue_api import QueueAPI
    from weft.taskspec import TaskSpec

# Result fields whose text a task wrote to a file under .weft/outputs/ (too big for a message).
SPILLED = (("output_ref", "output"), ("stdout_ref", "stdout"), ("stderr_ref", "stderr"))
EVENT_HEADROOM = 16 * 1024  # bytes an event adds to the spec it carries (status, error...)
FAST_WAIT_SECONDS = 2.0  # most results land this soon: poll briskly that long, then ease off
MANAGER_CHECK_SECONDS = 2.0  # while a task is pending, how often to make sure a manager runs
# A manager this client started may take this long to register (a cold machine compiling
# its bytecode) before the client starts another.
MANAGER_START_GRACE_SECONDS = 30.0


class WeftClient:
    """A handle on one project. Cheap to create; close it (or use ``with``) when done."""

    def __init__(self, ctx: WeftContext) -> None:
        self.ctx = ctx
        self.broker = Broker(ctx)
        self._fresh: set[str] = set()  # TIDs this client submitted: no history to look up
        self._manager_starting: tuple[subprocess.Popen[bytes], float] | None = None

    @classmethod
    def open(cls, context: str | Path | None = None, *, create: bool = True) -> WeftClient:
        """The project at ``context``, else the nearest ``.weft/`` above the working directory."""
        return cls(load_context(context, create=create))

    @cached_property
    def queue(self) -> QueueAPI:
        """Direct queue access: write, read, peek, move, list, watch, broadcast, aliases."""
        from weft.queue_api import QueueAPI

        return QueueAPI(self.broker)

    def close(self) -> None:
        self.broker.close()

    def __enter__(self) -> WeftClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- submitting --------------------------------------------------------------------

    def submit(
        self,
        spec: TaskSpec | PreparedSpec | dict[str, Any] | str,
        *,
        ensure_manager: bool = True,
        manager_env: dict[str, str] | None = None,
    ) -> str:
        """Queue a task; returns its TID. Starts a manager if none runs on this host.

        ``spec`` is a TaskSpec, its JSON or dict form, or a ``PreparedSpec`` from
        ``weft.spec_options`` (already checked: written without loading the model).
        """
        if ensure_manager:
            from weft.context import Settings

            Settings.from_env()  # a bad setting fails here, before anything is written
        if isinstance(spec, PreparedSpec) and self._fits_fast_path(spec.body):
            body = spec.body
        else:
            body = self._model_body(spec.body if isinstance(spec, PreparedSpec) else spec)
        tid = str(self.broker.write(queues.SPAWN_REQUESTS, body))
        self._fresh.add(tid)
        if ensure_manager:
            self.ensure_manager(env=manager_env)
        return tid

    def _model_body(self, spec: TaskSpec | dict[str, Any] | str) -> str:
        from weft.taskspec import TaskSpec, parse_taskspec

        task = spec if isinstance(spec, TaskSpec) else parse_taskspec(spec)
        try:
            body = task.model_dump_json(exclude={"state", "tid"})
        except ValueError as exc:  # pydantic's serialisation error: lone surrogates
            raise UsageError(
                "the task holds text that is not valid UTF-8 (a raw byte in an argument, an "
                "environment value or a path?); pass binary data through a file instead"
            ) from exc
        self._check_size(task, body)
        return body

    def _fits_fast_path(self, body: str) -> bool:
        """A prepared body goes straight in unless it is near the size limit; then the
        model path measures what the task log will need (see ``_check_size``)."""
        limit = int(self.ctx.broker_config["MAX_MESSAGE_SIZE"])
        return len(body) * 6 <= limit - min(EVENT_HEADROOM, limit // 2)

    def _check_size(self, task: TaskSpec, body: str) -> None:
        """Refuse a spec that the task log could not carry in its events.

        Every event repeats the spec (as ASCII JSON: up to 6 bytes per byte of the request)
        plus a few fields; an event over the broker's message limit would crash the task
        process after it started, so the spec must leave room for them.
        """
        limit = int(self.ctx.broker_config["MAX_MESSAGE_SIZE"])
        budget = limit - min(EVENT_HEADROOM, limit // 2)
        size = len(body.encode())
        if size * 6 > budget:
            dumped = task.model_dump(mode="json", exclude={"state"})
            size = max(size, len(json.dumps(dumped, separators=(",", ":"))))
        if size > budget:
            raise UsageError(
                f"the task is too big to store: its spec is {size} bytes and the broker's "
                f"message limit is {limit} (BROKER_MAX_MESSAGE_SIZE), with room needed for the "
                "task log; pass large data through a queue or a file instead"
            )

    def run(self, command: Sequence[str] | str, **options: Any) -> str:
        """Submit a command (argv list, or a string split like a shell would); returns the TID.

        ``options`` are those of ``weft.spec_options.spec_data`` (timeout, memory, cpu, env,
        tags, name, ...).
        """
        argv = command.split() if isinstance(command, str) else list(command)
        return self.submit_options(command=argv, **options)

    def run_function(
        self, target: str, *args: Any, kwargs: dict[str, Any] | None = None, **options: Any
    ) -> str:
        """Submit ``module:function`` with arguments; returns the TID."""
        return self.submit_options(function=target, args=list(args), kwargs=kwargs or {}, **options)

    def submit_options(self, *, manager_env: dict[str, str] | None = None, **options: Any) -> str:
        """Submit a task described by task options (see ``spec_options.spec_data``)."""
        from weft.spec_options import prepare, spec_data

        data = spec_data(**options)
        prepared = prepare(data)
        return self.submit(prepared if prepared is not None else data, manager_env=manager_env)

    def ensure_manager(self, env: dict[str, str] | None = None) -> int | None:
        """Start a manager on this host unless one is alive (then wake it: there may be
        work). Returns the PID of a manager started now."""
        alive = registry.local_manager(self.broker)
        if alive is not None:
            import os
            import signal

            self._manager_starting = None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(alive.pid, signal.SIGUSR1)
            return None
        if self._manager_starting is not None:
            # Without this a burst of submits before the first manager registers would
            # start a manager for each of them (all but one then lose the lock race).
            proc, started = self._manager_starting
            if proc.poll() is None and time.monotonic() - started < MANAGER_START_GRACE_SECONDS:
                return None
        from weft.context import Settings
        from weft.manager import spawn_manager

        Settings.from_env()  # a bad setting is the caller's one-line error, not a crash loop

        proc = spawn_manager(self.ctx, env=env)
        self._manager_starting = (proc, time.monotonic())
        return proc.pid

    # -- TIDs --------------------------------------------------------------------------

    def _pending_requests(self) -> dict[str, dict[str, Any]]:
        """Spawn requests not yet started (waiting or claimed), by TID."""
        found: dict[str, dict[str, Any]] = {}
        names = [queues.SPAWN_REQUESTS] + [
            n for n, _ in self.broker.list_queues(pattern=queues.spawn_claims("*"))
        ]
        for name in names:
            for message in self.broker.peek_many(name, 10_000):
                try:
                    found[str(message.id)] = json.loads(message.body)
                except json.JSONDecodeError:
                    found[str(message.id)] = {}
        return found

    def resolve_tid(self, text: str | int) -> str:
        """A full TID from a full TID, a short TID or a unique suffix of 6+ digits."""
        from weft import tid as tids

        text = tids.check_partial(str(text))
        if is_full(text) and (text in self._fresh or self._exists(text)):
            return text
        from weft.state import tids_ending_with

        candidates = tids_ending_with(self.broker, text)
        candidates |= {t for t in self._pending_requests() if t.endswith(text)}
        if is_full(text) and self.broker.has_messages(queues.outbox(text)):
            candidates.add(text)
        return tids.resolve(text, candidates)

    def _starting(self, tid: str) -> dict[str, Any] | None:
        """The spec of a task whose process has reserved its request but not yet logged."""
        message = self.broker.peek_one(queues.reserved(tid), message_id=int(tid))
        if message is None:
            return None
        try:
            spec = json.loads(message.body)
        except json.JSONDecodeError:
            return {}
        return spec if isinstance(spec, dict) else {}

    def _exists(self, tid: str) -> bool:
        if self.broker.has_messages(queues.outbox(tid)):
            return True
        if self.broker.find_ids(queues.TASKS_LOG, f'"tid":"{tid}"', limit=1, after=int(tid) - 1):
            return True
        return tid in self._pending_requests() or self._starting(tid) is not None

    # -- results -----------------------------------------------------------------------

    def _find_result(self, tid: str) -> results.Message | None:
        for message in self.broker.peek_all(queues.outbox(tid)):
            decoded = results.decode(message.body)
            if decoded.get("type") == results.RESULT:
                return results.Message(message.id, decoded)
        return None

    def _deliver(self, tid: str, found: results.Message, *, peek: bool) -> dict[str, Any]:
        result = results.public(found.data)
        for key, field in SPILLED:
            ref = result.get(key)
            if ref:
                try:
                    result[field] = Path(ref).read_bytes().decode("utf-8", errors="replace")
                except FileNotFoundError:
                    raise WeftError(f"the spilled output of {tid} is missing: {ref}") from None
        if result.pop("output_json", False):  # a function's value too big for a message
            result["output"] = json.loads(result["output"])
        if not peek:
            self.broker.delete_queue(queues.outbox(tid))
            for key, _ in SPILLED:
                if result.get(key):
                    Path(result[key]).unlink(missing_ok=True)
                    result.pop(key)
        return result

    def result(
        self, tid: str, *, timeout: float | None = None, peek: bool = False
    ) -> dict[str, Any]:
        """Wait up to ``timeout`` seconds (None: forever) for a task's result and return it.

        Reading consumes the result unless ``peek``. Raises ``WaitTimeout`` (exit 124) when
        the task is still running at the deadline, ``NotFoundError`` (exit 2) for an unknown
        TID or a result that was already read.
        """
        tid = self.resolve_tid(tid)
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = self.broker.waiter([queues.outbox(tid)], fast_for=FAST_WAIT_SECONDS)
        checked_history = tid in self._fresh
        next_manager_check = time.monotonic() + MANAGER_CHECK_SECONDS
        try:
            while True:
                found = self._find_result(tid)
                if found is not None:
                    return self._deliver(tid, found, peek=peek)
                if not checked_history:
                    checked_history = True
                    self._fail_if_consumed(tid)
                now = time.monotonic()
                if now >= next_manager_check:
                    next_manager_check = now + MANAGER_CHECK_SECONDS
                    # Not only for a pending request: a task whose process died while no
                    # manager lived is settled by the next manager's recovery, so without
                    # one we would wait for its result forever.
                    self.ensure_manager()
                if deadline is not None and now >= deadline:
                    record = self.task(tid)
                    raise WaitTimeout(
                        f"task {short(tid)} is still {record.status} after {timeout:g}s "
                        f"(try again: weft result {short(tid)})"
                    )
                wait = 1.0 if deadline is None else min(1.0, deadline - now)
                waiter.wait(max(0.0, wait))
        finally:
            waiter.close()

    def _fail_if_consumed(self, tid: str) -> None:
        history = events.events_for(self.broker, tid)
        # A requeued failure left no result: the same TID runs again, so keep waiting.
        if (
            history
            and history[-1].get("status") in events.FINAL_STATUSES
            and not history[-1].get("requeued")
        ):
            last = history[-1]
            raise NotFoundError(
                f"the result of task {short(tid)} was already read (status {last.get('status')}, "
                f"return code {last.get('return_code')}); results are read once unless peeked"
            )

    def all_results(self, *, peek: bool = False) -> list[dict[str, Any]]:
        """Every result waiting in an outbox, oldest task first."""
        out = []
        for name, _ in self.broker.list_queues(pattern="T*.outbox"):
            tid = name[1:].split(".", 1)[0]
            found = self._find_result(tid)
            if found is not None:
                out.append(self._deliver(tid, found, peek=peek))
        return out

    def stream(self, tid: str, *, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield output chunks as they arrive, then the final result (consumed)."""
        tid = self.resolve_tid(tid)
        deadline = None if timeout is None else time.monotonic() + timeout
        outbox = queues.outbox(tid)
        waiter = self.broker.waiter([outbox], fast_for=FAST_WAIT_SECONDS)
        cursor: int | None = None
        try:
            while True:
                for message in self.broker.peek_many(outbox, 1000, after=cursor):
                    cursor = message.id
                    decoded = results.decode(message.body)
                    if decoded.get("type") == results.RESULT:
                        yield self._deliver(tid, results.Message(message.id, decoded), peek=False)
                        return
                    yield decoded
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"task {short(tid)} still running after {timeout:g}s")
                waiter.wait(0.5)
        finally:
            waiter.close()

    # -- status ------------------------------------------------------------------------

    def task(self, tid: str) -> events.TaskRecord:
        """What is known about one task (its events folded; pending if not started yet)."""
        tid = self.resolve_tid(tid)
        history = events.events_for(self.broker, tid)
        if history:
            return events.fold(history)[tid]
        pending = self._pending_requests().get(tid) or self._starting(tid)
        if pending is None:
            raise NotFoundError(f"no task with TID {tid}")
        return events.fold([events.make_event("pending", tid, events.PENDING, taskspec=pending)])[
            tid
        ]

    def tasks(self) -> dict[str, events.TaskRecord]:
        """Every task's record: the log folded, plus requests not started yet."""
        from weft.state import current_records

        records = current_records(self.broker)
        self._add_pending(records)
        return records

    def _add_pending(
        self, records: dict[str, events.TaskRecord], counts: dict[str, int] | None = None
    ) -> None:
        """Requests not started yet join ``records`` (and ``counts``) as pending tasks."""
        for tid, spec in self._pending_requests().items():
            if tid not in records:
                records[tid] = events.fold(
                    [events.make_event("pending", tid, events.PENDING, taskspec=spec)]
                )[tid]
                if counts is not None:
                    counts[events.PENDING] = counts.get(events.PENDING, 0) + 1

    def managers(self) -> list[registry.ManagerEntry]:
        return registry.live_entries(self.broker)

    def status(self, *, include_finished: bool = False) -> dict[str, Any]:
        """Managers, task counts by status, and the tasks themselves (active ones by default).

        Without finished tasks this reads no finished task's record, so its cost does not
        grow with the number of tasks ever run (see ``weft.state``).
        """
        if include_finished:
            records = self.tasks()
            counts: dict[str, int] = {}
            for record in records.values():
                counts[record.status] = counts.get(record.status, 0) + 1
        else:
            from weft.state import summary

            counts, records = summary(self.broker)
            self._add_pending(records, counts)
        shown = [
            r.to_dict()
            for r in sorted(records.values(), key=lambda r: r.tid)
            if include_finished or not r.is_final
        ]
        return {
            "managers": [m.to_dict() for m in self.managers()],
            "total": sum(counts.values()),
            "counts": counts,
            "tasks": shown,
        }

    def log(
        self,
        *,
        after: int | None = None,
        tid: str | None = None,
        event: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Events from the shared task log after a cursor (the ``log_id`` of the last one seen)."""
        full_tid = self.resolve_tid(tid) if tid else None
        out: list[dict[str, Any]] = []
        for message_id, record in events.read_events(self.broker, after=after):
            if full_tid and record.get("tid") != full_tid:
                continue
            if event and record.get("event") != event:
                continue
            out.append({"log_id": message_id, **record})
            if len(out) >= limit:
                break
        return out

    # -- interactive input -------------------------------------------------------------

    def send_input(self, tid: str, data: str) -> None:
        """Text for an interactive task's stdin (it travels through the task's inbox)."""
        self.broker.write(queues.inbox(tid), results.encode(results.make_input(data)))

    def close_input(self, tid: str) -> None:
        """End-of-input: the task closes its target's stdin."""
        self.broker.write(queues.inbox(tid), results.encode(results.make_eof()))

    # -- control -----------------------------------------------------------------------

    def control(self, tid: str, command: str, *, timeout: float = 5.0) -> dict[str, Any]:
        """Send STOP/KILL/PAUSE/RESUME/STATUS/PING to a running task; return its answer."""
        from weft.events import CONTROL_COMMANDS

        command = command.upper()
        if command not in CONTROL_COMMANDS:
            raise UsageError(
                f"unknown control command {command!r}: use one of {', '.join(CONTROL_COMMANDS)}"
            )
        tid = self.resolve_tid(tid)
        record = self.task(tid)
        if record.is_final:
            raise NotFoundError(f"task {short(tid)} is not running (status {record.status})")
        reply_queue = queues.ctrl_out(tid)
        waiter = self.broker.waiter([reply_queue])
        start_cursor = None
        last = self.broker.peek_many(reply_queue, 10_000)
        if last:
            start_cursor = last[-1].id
        self.broker.write(queues.ctrl_in(tid), json.dumps({"command": command}))
        deadline = time.monotonic() + timeout
        try:
            while True:
                for message in self.broker.peek_many(reply_queue, 100, after=start_cursor):
                    reply = json.loads(message.body)
                    if reply.get("command") == command:
                        self.broker.delete(reply_queue, message.id)
                        return dict(reply)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(
                        f"task {short(tid)} did not answer {command} within {timeout:g}s "
                        f"(status {record.status})"
                    )
                waiter.wait(min(remaining, 0.5))
        finally:
            waiter.close()

    # -- retention ---------------------------------------------------------------------

    def prune(self, *, older_than: float = 0.0, include_unread: bool = False) -> dict[str, Any]:
        """Remove finished tasks older than ``older_than`` seconds: their log events and queues.

        A task whose result nobody has read is kept unless ``include_unread``; running and
        pending tasks are never touched.
        """
        from weft.state import fold_current, forget

        records, _, _ = fold_current(self.broker)
        cutoff = time.time_ns() - int(older_than * 1e9)
        doomed: set[str] = set()
        kept_unread = 0
        for tid, record in records.items():
            if not record.is_final or (record.finished_at or 0) > cutoff:
                continue
            if not include_unread and self.broker.has_messages(queues.outbox(tid)):
                kept_unread += 1
                continue
            doomed.add(tid)
        if not doomed:
            return {"pruned_tasks": 0, "pruned_events": 0, "kept_unread": kept_unread}
        event_ids = [
            message_id
            for message_id, event in events.read_events(self.broker)
            if event.get("tid") in doomed
        ]
        for start in range(0, len(event_ids), 500):
            self.broker.delete_many(queues.TASKS_LOG, event_ids[start : start + 500])
        for tid in doomed:
            for suffix in queues.TASK_QUEUE_SUFFIXES:
                name = queues.task_queue(tid, suffix)
                if suffix != queues.OUTBOX or include_unread:
                    self.broker.delete_queue(name)
                self.broker.forget(name)
            for spilled in self.ctx.outputs_dir.glob(f"{tid}.*"):
                spilled.unlink(missing_ok=True)
        forget(self.broker, doomed)
        with self.broker.connection() as conn:
            conn.vacuum()
        return {
            "pruned_tasks": len(doomed),
            "pruned_events": len(event_ids),
            "kept_unread": kept_unread,
        }

    # -- manager -----------------------------------------------------------------------

    def stop_manager(self, *, timeout: float = 30.0) -> list[int]:
        """Ask this host's manager to stop (SIGTERM); wait for it, up to ``timeout``."""
        import os
        import signal

        stopped = []
        here = registry.host_name()
        for entry in registry.entries(self.broker):
            if entry.host != here:
                continue
            if not entry.is_alive():
                self.broker.delete(queues.WORKERS_REGISTRY, entry.message_id)
                continue
            os.kill(entry.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while registry.pid_is_weft(entry.pid, "manager") and time.monotonic() < deadline:
                time.sleep(0.05)
            if registry.pid_is_weft(entry.pid, "manager"):
                os.kill(entry.pid, signal.SIGKILL)
            stopped.append(entry.pid)
        return stopped
