"""The task process: reserve -> run -> complete, answering control messages as it goes.

One task at a time per task process, forked from the manager's clean fork server, so it
inherits no manager state, and kept for the next task while the manager wants it (see
``weft.task_pool``). It is the supervisor of its target (see ``runner``): it logs each state
change, enforces the timeout, answers STOP/KILL/PAUSE/RESUME/STATUS/PING, and writes the
result to its outbox.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

from weft import events, queues, registry, results, runner
from weft.broker import Broker
from weft.context import WeftContext, load_context
from weft.events import CONTROL_COMMANDS
from weft.reserved import apply_reserved_policy, effective_policy
from weft.taskspec import TaskSpec, parse_taskspec
from weft.tid import short

TICK = 0.05  # seconds between control/timeout checks while the target runs
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL on STOP and timeout
SPILL_BYTES = int(os.environ.get("WEFT_SPILL_BYTES", str(1024 * 1024)))


def title(ctx: WeftContext, tid: str, name: str, status: str) -> str:
    """A task's process title, as the seed names it: ``weft-{context}-{short_tid}:...``."""
    return f"weft-{ctx.name}-{short(tid)}:{name}:{status}"


def set_title(ctx: WeftContext, tid: str, name: str, status: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(title(ctx, tid, name, status))
    except Exception:
        pass


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


class TaskProcess:
    """Runs one task from its claimed spawn request to its final event."""

    def __init__(
        self, ctx: WeftContext, tid: str, claim_queue: str, broker: Broker | None = None
    ) -> None:
        self.ctx = ctx
        self.tid = tid
        self.claim_queue = claim_queue
        self.broker = broker if broker is not None else Broker(ctx)
        self.spec: TaskSpec | None = None
        self.spec_dump: dict[str, Any] | None = None
        self.status = events.RUNNING
        self.target: runner.Target | None = None
        self.host = registry.host_name()  # WEFT_HOST, the same name its manager uses
        self.stop_requested: str | None = None  # "STOP" or "KILL"
        self.streamed = False
        self.forker: runner.FunctionForker | None = None  # forks function targets

    # -- logging ---------------------------------------------------------------------

    def log(self, event: str, status: str, **detail: Any) -> None:
        self.status = status
        events.log_event(
            self.broker,
            events.make_event(
                event,
                self.tid,
                status,
                taskspec=self.spec_dump,
                task_pid=os.getpid(),
                host=self.host,
                **detail,
            ),
        )
        if self.spec is not None:
            set_title(self.ctx, self.tid, self.spec.name, status)

    # -- the life of a task ----------------------------------------------------------

    def run(self) -> int:
        claimed = self.broker.move_one(
            self.claim_queue, queues.reserved(self.tid), message_id=int(self.tid)
        )
        if claimed is None:
            return 0  # someone else took it (a successor manager gave it back): not ours
        try:
            spec = parse_taskspec(claimed.body, source="spawn request")
        except Exception as exc:  # a one-line UsageError; the request stays in reserved
            self.spec_dump = None
            # The result first: if this process dies in between, the final event is missing
            # and the manager settles the task; the other way round nobody would.
            self._write_result(events.FAILED, 1, "", "", str(exc))
            self.log(events.WORK_FAILED, events.FAILED, error=str(exc))
            return 0
        spec.tid = self.tid
        spec.state.task_pid = os.getpid()
        self.spec = spec
        self.spec_dump = spec.model_dump(mode="json", exclude={"state"})
        self.log(events.TASK_INITIALIZED, events.RUNNING)
        if spec.is_queue_fed:
            self._serve(spec)
            return 0
        final_status, return_code, out, err, error, value = self._execute(spec)
        self._finish(spec, final_status, return_code, out, err, error, value)
        return 0

    def _execute(
        self, spec: TaskSpec, item: str | None = None
    ) -> tuple[str, int, bytes, bytes, str | None, Any]:
        """Run the target once (for a queue-fed task: on one input message) and supervise it."""
        interactive = spec.spec.interactive and item is None
        sink = self._stream_chunk if spec.spec.stream_output or interactive else None
        env = {**self.ctx.to_env(), "WEFT_TID": self.tid}
        try:
            if spec.spec.type == "command":
                self.target = runner.start_command(
                    spec.spec,
                    env=env,
                    sink=sink,
                    interactive=interactive,
                    stdin_data=None if item is None else item.encode(),
                )
            else:
                call = runner.FunctionCall.of(spec.spec, env)
                if item is not None:
                    call = dataclasses.replace(call, args=[item, *call.args])
                self.target = self._start_function(call, sink, spec.name)
        except FileNotFoundError:
            if spec.spec.cwd and not os.path.isdir(spec.spec.cwd):
                missing = f"working directory not found: {spec.spec.cwd}"
                return events.FAILED, 1, b"", b"", missing, None
            program = (spec.spec.process_target or ["?"])[0]
            return events.FAILED, 127, b"", b"", f"command not found: {program}", None
        except PermissionError:
            program = (spec.spec.process_target or ["?"])[0]
            return events.FAILED, 126, b"", b"", f"command is not executable: {program}", None
        except OSError as exc:
            return events.FAILED, 126, b"", b"", f"cannot start command: {exc}", None

        target = self.target
        if item is None:
            # The target's PID lets a successor end its tree if this process dies.
            self.log(events.WORK_STARTED, events.RUNNING, target_pid=target.pid)
        deadline = time.monotonic() + spec.spec.timeout if spec.spec.timeout else None
        timed_out = False
        code: int | None = None
        from weft.monitor import ResourceMonitor  # preloaded by the manager's fork server

        monitor = self.monitor = ResourceMonitor(target.pid, spec.spec.limits, target.signal_tree)
        while code is None:
            code = target.wait(monitor.timeout(TICK))
            if code is not None:
                break
            self._check_control(target)
            if deadline is not None and time.monotonic() >= deadline and not timed_out:
                timed_out = True
                self._end_tree(target)
            monitor.tick(  # measures; on a violation it SIGKILLs the tree (see _finish)
                paused=self.status == events.PAUSED,
                enforce=not timed_out and self.stop_requested is None,
            )
        monitor.finish()
        outcome = target.collect(code)

        if timed_out:
            return (
                events.TIMEOUT,
                124,
                outcome.stdout,
                outcome.stderr,
                f"timed out after {spec.spec.timeout:g}s",
                None,
            )
        if self.stop_requested == "KILL":
            return events.KILLED, 137, outcome.stdout, outcome.stderr, "killed by request", None
        if self.stop_requested == "STOP":
            return events.STOPPED, 143, outcome.stdout, outcome.stderr, "stopped by request", None
        rc = outcome.return_code
        if rc < 0:
            error = runner.describe_exit(rc)
            rc = 128 - rc
        elif outcome.error:
            error = outcome.error
        elif rc != 0:
            error = runner.describe_exit(rc)
        else:
            error = None
        status = events.COMPLETED if rc == 0 and error is None else events.FAILED
        return status, rc, outcome.stdout, outcome.stderr, error, outcome.value

    def _start_function(
        self, call: runner.FunctionCall, sink: runner.ChunkSink | None, name: str
    ) -> runner.Target:
        if self.forker is not None:
            try:
                return self.forker.launch(
                    call, sink=sink, title=title(self.ctx, self.tid, name, "function")
                )
            except (OSError, EOFError):  # the helper died: fork from here, as below
                self.forker.close()
                self.forker = None
        # SQLite state must not cross a fork: a function that opens the broker in the child
        # would hang on the parent's inherited locks. Close every handle first; ours reopen
        # on next use.
        self.broker.close()
        return runner.start_function(call, sink=sink)

    def _end_tree(self, target: runner.Target) -> None:
        """SIGTERM the target's tree, SIGKILL it after a grace period."""
        target.signal_tree(signal.SIGCONT)
        target.signal_tree(signal.SIGTERM)
        if target.wait(STOP_GRACE) is None:
            target.signal_tree(signal.SIGKILL)
        else:
            target.signal_tree(signal.SIGKILL)  # stragglers in the tree

    # -- control ---------------------------------------------------------------------

    def _check_control(self, target: runner.Target) -> None:
        if self.spec is not None and self.spec.spec.interactive:
            self._forward_input(target)
        ctrl = queues.ctrl_in(self.tid)
        if not self.broker.has_messages(ctrl):
            return
        while (message := self.broker.read_one(ctrl)) is not None:
            self._handle_control(target, message.body)

    def _handle_control(self, target: runner.Target, body: str) -> None:
        command = _parse_command(body)
        reply: dict[str, Any] = {"tid": self.tid, "command": command}
        if command not in CONTROL_COMMANDS:
            known = ", ".join(CONTROL_COMMANDS)
            reply.update(ok=False, error=f"unknown command {command!r}; use one of {known}")
        elif command == "PAUSE":
            target.signal_tree(signal.SIGSTOP)
            self.log("control_pause", events.PAUSED)
            reply["ok"] = True
        elif command == "RESUME":
            target.signal_tree(signal.SIGCONT)
            self.log("control_resume", events.RUNNING)
            reply["ok"] = True
        elif command in ("STOP", "KILL"):
            self.stop_requested = command
            reply["ok"] = True
            if command == "KILL":
                target.signal_tree(signal.SIGCONT)
                target.signal_tree(signal.SIGKILL)
            else:
                self._end_tree(target)
        else:  # STATUS, PING
            self.log(f"control_{command.lower()}", self.status)
            reply["ok"] = True
        # After STOP/KILL the tree is ending; say where it is going, not where it was.
        status = {"STOP": events.STOPPED, "KILL": events.KILLED}.get(command, self.status)
        reply.update(status=status, task_pid=os.getpid(), target_pid=target.pid)
        self.broker.write(queues.ctrl_out(self.tid), json.dumps(reply))

    def _forward_input(self, target: runner.Target) -> None:
        """Interactive tasks: what arrives in the inbox goes to the target's stdin."""
        inbox = queues.inbox(self.tid)
        while target.stdin_fd is not None and (message := self.broker.read_one(inbox)):
            data = results.decode_input(message.body)
            if data is None or not target.write_stdin(data.encode()):
                target.close_stdin()

    # -- queue-fed tasks -------------------------------------------------------------

    def _serve(self, spec: TaskSpec) -> None:
        """Serve each message written to the input queues until stopped or timed out.

        Each message is reserved (moved into ``T{tid}.reserved``), given to the target as
        its stdin (a command) or first argument (a function), its output written to every
        output queue, and then deleted; a failed item follows the reserved policy.
        """
        inputs = list(spec.io.inputs.values())
        reserved = queues.reserved(self.tid)
        ctrl = queues.ctrl_in(self.tid)
        waiter = self.broker.waiter([*inputs, ctrl])
        deadline = time.monotonic() + spec.spec.timeout if spec.spec.timeout else None
        self.log(events.WORK_STARTED, events.RUNNING, serving=inputs)
        served = failed = 0
        final = events.COMPLETED
        try:
            while self.stop_requested is None:
                handled = False
                for source in inputs if self.status != events.PAUSED else ():
                    message = self.broker.move_one(source, reserved)
                    if message is None:
                        continue
                    handled = True
                    ok = self._serve_one(spec, source, message.id, message.body)
                    served += ok
                    failed += not ok
                    if self.stop_requested is not None:
                        break
                if self.broker.has_messages(ctrl):
                    while (command := self.broker.read_one(ctrl)) is not None:
                        self._handle_idle_control(command.body)
                if deadline is not None and time.monotonic() >= deadline:
                    final = events.TIMEOUT
                    break
                if not handled and self.stop_requested is None:
                    remaining = 1.0 if deadline is None else deadline - time.monotonic()
                    waiter.wait(max(0.0, min(1.0, remaining)))
        finally:
            waiter.close()
        if self.stop_requested == "STOP":
            final = events.STOPPED
        elif self.stop_requested == "KILL":
            final = events.KILLED
        summary = f"served {served} message(s), {failed} failed"
        # STOP is how a service normally ends: exit 0 unless a message failed.
        code = {events.TIMEOUT: 124, events.KILLED: 137}.get(final, 1 if failed else 0)
        error = f"{failed} message(s) failed" if failed else None
        self._write_result(final, code, summary + "\n", "", error)
        event = {
            events.TIMEOUT: events.WORK_TIMEOUT,
            events.STOPPED: "control_stop",
            events.KILLED: "control_kill",
        }.get(final, events.WORK_COMPLETED)
        self.log(event, final, return_code=code, served=served, failed=failed)
        self.broker.delete(reserved, int(self.tid))
        if spec.spec.cleanup_on_exit:
            self._cleanup_queues()

    def _serve_one(self, spec: TaskSpec, source: str, message_id: int, body: str) -> bool:
        status, _code, out, _err, _error, value = self._execute(spec, item=body)
        reserved = queues.reserved(self.tid)
        if status != events.COMPLETED:
            policy = spec.spec.reserved_policy
            if policy == "requeue":
                self.broker.move_one(reserved, source, message_id=message_id)
            elif policy == "clear":
                self.broker.delete(reserved, message_id)
            return False
        if spec.spec.type == "function":
            payload = value if isinstance(value, str) else json.dumps(value)
        else:
            payload = _decode(out).removesuffix("\n")  # like $(...): the next stage gets the value
        for queue in spec.io.outputs.values():
            self.broker.write(queue, payload)
        self.broker.delete(reserved, message_id)
        return True

    def _handle_idle_control(self, body: str) -> None:
        """Control messages that arrive between items (no target runs)."""
        command = _parse_command(body)
        reply: dict[str, Any] = {"tid": self.tid, "command": command, "ok": True}
        if command in ("STOP", "KILL"):
            self.stop_requested = command
        elif command == "PAUSE":
            self.log("control_pause", events.PAUSED)
        elif command == "RESUME":
            self.log("control_resume", events.RUNNING)
        elif command in ("STATUS", "PING"):
            self.log(f"control_{command.lower()}", self.status)
        else:
            reply.update(ok=False, error=f"unknown command {command!r}")
        status = {"STOP": events.STOPPED, "KILL": events.KILLED}.get(command, self.status)
        reply.update(status=status, task_pid=os.getpid())
        self.broker.write(queues.ctrl_out(self.tid), json.dumps(reply))

    # -- output ----------------------------------------------------------------------

    def _stream_chunk(self, stream: str, data: bytes) -> None:
        self.streamed = True
        self.broker.write(
            queues.outbox(self.tid), results.encode(results.make_chunk(stream, _decode(data)))
        )

    def _spill(self, name: str, data: bytes) -> str:
        path = self.ctx.outputs_dir / f"{self.tid}.{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return str(path)

    def _write_result(
        self,
        status: str,
        return_code: int,
        out: bytes | str,
        err: bytes | str,
        error: str | None,
        value: Any = None,
        is_function: bool = False,
        spill_all: bool = False,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        out_b = out.encode() if isinstance(out, str) else out
        err_b = err.encode() if isinstance(err, str) else err
        detail: dict[str, Any] = {}
        output: Any
        if is_function:
            output = value
            if spill_all:  # too big for one message: the value goes to a file, as JSON
                output = None
                detail["output_ref"] = self._spill("value.json", json.dumps(value).encode())
                detail["output_json"] = True
            if out_b and spill_all:
                detail["stdout_ref"] = self._spill("stdout", out_b)
            elif out_b:
                detail["stdout"] = _decode(out_b)
        elif out_b and (spill_all or len(out_b) > SPILL_BYTES):
            output = None
            detail["output_ref"] = self._spill("stdout", out_b)
            detail["output_bytes"] = len(out_b)
        else:
            output = _decode(out_b)
        stderr = _decode(err_b)
        if err_b and (spill_all or len(err_b) > SPILL_BYTES):
            stderr = ""
            detail["stderr_ref"] = self._spill("stderr", err_b)
        if self.streamed:
            detail["streamed"] = True
        if metrics:
            detail["metrics"] = metrics
        result = results.make_result(
            self.tid,
            status,
            return_code=return_code,
            output=output,
            stderr=stderr,
            error=error,
            **detail,
        )
        body = results.encode(result)
        if not spill_all and len(body.encode()) > int(self.ctx.broker_config["MAX_MESSAGE_SIZE"]):
            # Over the broker's message limit (JSON escapes undecodable bytes and control
            # characters, up to 6x): spill every stream rather than crash and lose it all.
            self._write_result(
                status, return_code, out_b, err_b, error, value, is_function, spill_all=True
            )
            return
        self.broker.write(queues.outbox(self.tid), body)

    def _finish(
        self,
        spec: TaskSpec,
        status: str,
        return_code: int,
        out: bytes,
        err: bytes,
        error: str | None,
        value: Any,
    ) -> None:
        monitor = getattr(self, "monitor", None)  # None if the target never started
        violation = monitor.violation if monitor is not None else None
        if violation is not None:  # a limit was crossed first; the tree was SIGKILLed for it
            from weft.monitor import LIMIT_EXIT_CODE

            status, return_code, error = events.FAILED, LIMIT_EXIT_CODE, violation.message
        metrics = monitor.metrics() if monitor is not None else None
        success = status == events.COMPLETED
        policy = effective_policy(self.broker, self.tid, spec.spec.reserved_policy)
        requeue = not success and policy == "requeue"
        if not requeue:
            is_function = spec.spec.type == "function"
            self._write_result(
                status,
                return_code,
                out,
                err,
                error,
                value,
                is_function=is_function,
                metrics=metrics,
            )
        event = {
            events.COMPLETED: events.WORK_COMPLETED,
            events.TIMEOUT: events.WORK_TIMEOUT,
            events.KILLED: "control_kill",
            events.STOPPED: "control_stop",
        }.get(status, events.WORK_FAILED)
        if violation is not None:
            event = events.WORK_LIMIT_VIOLATION
        self.log(
            event,
            status,
            return_code=return_code,
            error=error,
            requeued=requeue or None,
            metrics=metrics,
            **(violation.detail() if violation is not None else {}),
        )
        apply_reserved_policy(self.broker, self.tid, policy, success=success)
        if spec.spec.cleanup_on_exit and not requeue:
            self._cleanup_queues()

    def _cleanup_queues(self) -> None:
        """``cleanup_on_exit``: every queue of the task goes, except an unread outbox."""
        tid = self.tid
        for name in (
            queues.inbox(tid),
            queues.reserved(tid),
            queues.ctrl_in(tid),
            queues.ctrl_out(tid),
        ):
            self.broker.delete_queue(name)


def _parse_command(body: str) -> str:
    """A control message is ``{"command": "STOP"}``; a bare word is accepted too."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return body.strip().upper()
    return str(data.get("command", "")).upper() if isinstance(data, dict) else ""


def give_back_memory() -> None:
    """Return the C heap's free pages to the system while idle (glibc's ``malloc_trim``).

    A task's transient allocations (output, JSON, SQLite's work) leave the heap grown by
    megabytes of freed memory that glibc keeps; a process kept warm for many tasks would
    otherwise hold the largest of them for good.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return cast(Callable[[int], int], ctypes.CDLL("libc.so.6").malloc_trim)
    except (OSError, AttributeError):  # not glibc
        return None


def task_main(
    root: str,
    tid: str,
    claim_queue: str,
    *,
    functions: bool = False,
    conn: Connection | None = None,
) -> None:
    """Entry point in the forked task process.

    ``functions``: the task runs a Python function, so this process starts a
    ``runner.FunctionForker`` (before it opens the broker, if it has not yet). ``conn``: the
    manager's pipe, when this process is kept warm between tasks (see ``weft.task_pool``):
    after each task it says so there and waits for the next, until the manager closes it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ctx = load_context(root, create=False)
    broker = Broker(ctx)
    forker: runner.FunctionForker | None = None
    try:
        while True:
            if functions and forker is None:
                broker.close()  # no SQLite state may cross the fork; the next use reopens
                forker = runner.FunctionForker(title(ctx, tid, "task", "functions"))
            set_title(ctx, tid, "task", "starting")
            task = TaskProcess(ctx, tid, claim_queue, broker=broker)
            task.forker = forker
            task.run()
            forker = task.forker  # None if it died
            if conn is None:
                return
            try:
                conn.send(tid)
                set_title(ctx, tid, "task", "idle")
                give_back_memory()
                tid, claim_queue, functions = conn.recv()
            except (EOFError, OSError):  # the manager retired us, or is gone
                return
    finally:
        broker.close()
        if forker is not None:
            forker.close()
