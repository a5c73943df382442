"""The MCP tools and resources. Each is a few ``WeftClient`` calls and nothing more.

Client calls block (they wait on the broker), so every one runs on a worker thread
(``anyio.to_thread``) and the event loop stays free to answer other requests. A call that
waits for something (a task's result, a queue message, new log events) waits in slices of
``SLICE_SECONDS``, reporting progress between slices, and never past its bound.

Engine errors (``WeftError``) become ``ToolError`` with the engine's one-line message and
the next step a model should take; an unexpected exception becomes a ``ToolError`` too (and
is logged with its traceback), so no call can take the server down.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from weft import events, queues
from weft.errors import EmptyQueueError, NotFoundError, UsageError, WaitTimeout, WeftError
from weft.tid import short
from weft_mcp.models import (
    ControlOutcome,
    LogPage,
    ManagerInfo,
    QueueInfo,
    QueueList,
    QueueMessageInfo,
    QueueMessages,
    QueueWriteResult,
    StatusReport,
    TaskInfo,
    TaskList,
    TaskOutcome,
)
from weft_mcp.policy import Policy, Refused

if TYPE_CHECKING:
    from mcp.server import MCPServer

    from weft.client import WeftClient
    from weft.queue_api import QueueMessage
    from weft.taskspec import TaskSpec

log = logging.getLogger("weft_mcp")

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_WAIT = 300.0  # the longest any one call may wait, seconds (--max-wait)
SLICE_SECONDS = 0.5  # waits are cut into slices this long; progress is reported between them
DEFAULT_OUTPUT_CHARS = 20_000
MAX_QUEUE_MESSAGES = 100
LOG_SCAN_BATCH = 1000
INTERNAL_PREFIX = "weft."
STATUS_GROUPS = {"active": events.ACTIVE_STATUSES, "finished": events.FINAL_STATUSES}
ALL_STATUSES = sorted(events.ACTIVE_STATUSES | events.FINAL_STATUSES)
KNOWN_EVENTS = (
    events.TASK_INITIALIZED,
    events.WORK_STARTED,
    events.WORK_COMPLETED,
    events.WORK_FAILED,
    events.WORK_TIMEOUT,
    events.WORK_LIMIT_VIOLATION,
)

Ctx = Context[Any, Any]

# -- argument types (the descriptions become the tools' input schemas) ----------------------

TidArg = Annotated[
    str,
    Field(
        description="Task ID: the full 19 digits, the 10-digit short form, or any unique "
        "suffix of 6+ digits"
    ),
]
WaitArg = Annotated[
    float,
    Field(
        ge=0,
        description="Seconds to wait for the task to finish (0: do not wait). Capped by the "
        "server (default cap 300). If it is still running then, you get its status and can "
        "call get_result again",
    ),
]
OutputCharsArg = Annotated[
    int,
    Field(
        ge=100,
        le=1_000_000,
        description="Cut output, stdout and stderr to this many characters (the end is kept)",
    ),
]
QueueArg = Annotated[
    str,
    Field(
        description="Queue name (letters, digits, '.', '_', '-'), or '@alias'. Queues are "
        "created by their first write"
    ),
]


def _guard(
    fn: Callable[P, Awaitable[R]],
) -> Callable[P, Awaitable[R]]:
    """Turn any error a tool raises into a ``ToolError`` a model can read and act on."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except ToolError:
            raise
        except Refused as exc:
            raise ToolError(str(exc)) from exc
        except WeftError as exc:
            raise ToolError(_with_hint(exc)) from exc
        except Exception as exc:
            log.exception("tool %s failed unexpectedly", fn.__name__)
            raise ToolError(
                f"unexpected error in weft-mcp ({type(exc).__name__}: {exc}); the server "
                "logged the details; try again, or check the call's arguments"
            ) from exc

    return wrapper


def _with_hint(exc: WeftError) -> str:
    text = str(exc)
    if isinstance(exc, EmptyQueueError):
        return f"{text}; write to it with queue_write, or read again later with wait_seconds"
    if isinstance(exc, NotFoundError) and "TID" in text:
        return f"{text}; call list_tasks to see the tasks and their TIDs"
    if isinstance(exc, UsageError):
        return f"{text}; fix the argument and call again"
    return text


def _cut(text: str, limit: int) -> tuple[str, bool]:
    """Keep the end of ``text`` (where summaries and errors are), up to ``limit`` characters."""
    if len(text) <= limit:
        return text, False
    cut = len(text) - limit
    return f"[... {cut} characters cut; the end follows ...]\n" + text[-limit:], True


def _task_info(record: events.TaskRecord) -> TaskInfo:
    return TaskInfo.model_validate(record.to_dict())


class WeftTools:
    """The tools, bound to one project's client and the server's policy."""

    def __init__(
        self,
        client: WeftClient,
        policy: Policy | None = None,
        *,
        max_wait: float = DEFAULT_MAX_WAIT,
        slice_seconds: float = SLICE_SECONDS,
        threads: int = 8,
    ) -> None:
        self.client = client
        self.policy = policy or Policy()
        self.max_wait = max_wait
        self.slice = slice_seconds
        self._limiter = anyio.CapacityLimiter(threads)

    async def _run(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run a blocking client call on a worker thread."""
        return await anyio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._limiter
        )

    def _bound(self, seconds: float) -> float:
        return max(0.0, min(float(seconds), self.max_wait))

    # -- helpers: waiting for a task -----------------------------------------------------

    def _outcome(
        self, tid: str, result: dict[str, Any], *, consumed: bool, max_chars: int
    ) -> TaskOutcome:
        truncated = False
        texts: dict[str, str | None] = {}
        for key in ("stdout", "stderr"):
            value = result.get(key)
            if isinstance(value, str) and value:
                texts[key], cut = _cut(value, max_chars)
                truncated |= cut
            else:
                texts[key] = None
        output = result.get("output")
        if isinstance(output, str):
            output, cut = _cut(output, max_chars)
            truncated |= cut
        elif output is not None:
            dumped = json.dumps(output)
            if len(dumped) > max_chars:
                output, _ = _cut(dumped, max_chars)
                truncated = True
        status = str(result.get("status", ""))
        if status == events.COMPLETED:
            step = "done"
        else:
            step = f"the task ended {status}: see error and stderr"
        if consumed:
            step += "; the result was removed from the outbox (results are read once)"
        elif not self.policy.read_only:
            step += "; the result is still stored: get_result with peek=false removes it"
        return TaskOutcome(
            tid=tid,
            tid_short=short(tid),
            status=status,
            finished=True,
            result_consumed=consumed,
            return_code=result.get("return_code"),
            output=output,
            stdout=texts["stdout"],
            stderr=texts["stderr"],
            error=result.get("error"),
            truncated=truncated,
            next_step=step,
        )

    def _unfinished(self, record: events.TaskRecord, waited: float) -> TaskOutcome:
        tid = record.tid
        if record.is_final:  # it ended, but its result has gone (read by someone else)
            return TaskOutcome(
                tid=tid,
                tid_short=short(tid),
                status=record.status,
                finished=True,
                return_code=record.return_code,
                error=record.error,
                next_step="the task ended but its result is no longer stored (it was already "
                "read, or the task was requeued); read_task_log with this tid shows its history",
            )
        return TaskOutcome(
            tid=tid,
            tid_short=short(tid),
            status=record.status,
            finished=False,
            next_step=f"still {record.status} after {waited:g}s: call get_result with "
            f"tid={short(tid)} (and wait_seconds) later"
            + ("" if self.policy.read_only else ", or stop_task to end it"),
        )

    async def _wait_for_result(
        self, ctx: Ctx, tid: str, wait_seconds: float, *, peek: bool, max_chars: int
    ) -> TaskOutcome:
        wait = self._bound(wait_seconds)
        start = anyio.current_time()
        deadline = start + wait
        final_checked = False
        while True:
            remaining = max(0.0, deadline - anyio.current_time())
            timeout = 0.0 if final_checked else min(self.slice, remaining)
            try:  # peek while waiting: a call cancelled mid-wait must not lose the result
                result = await self._run(self.client.result, tid, timeout=timeout, peek=True)
            except WaitTimeout:
                pass
            except NotFoundError:  # the task ended and its result was read before
                return self._unfinished(await self._run(self.client.task, tid), 0)
            else:
                if peek:
                    return self._outcome(tid, result, consumed=False, max_chars=max_chars)
                try:
                    result = await self._run(self.client.result, tid, timeout=0.0)
                except (WaitTimeout, NotFoundError):  # someone else took it just now
                    return self._unfinished(await self._run(self.client.task, tid), 0)
                return self._outcome(tid, result, consumed=True, max_chars=max_chars)
            record = await self._run(self.client.task, tid)
            elapsed = anyio.current_time() - start
            if record.is_final and not final_checked:
                final_checked = True  # it ended just now? look for the result once more
                continue
            if record.is_final or elapsed >= wait:
                return self._unfinished(record, round(elapsed, 1))
            await ctx.report_progress(
                elapsed, wait, f"task {short(tid)} is {record.status} ({elapsed:.1f}s of {wait:g}s)"
            )

    # -- tools: tasks --------------------------------------------------------------------

    def _build(
        self,
        command: list[str] | None,
        function: str | None,
        args: list[Any] | None,
        kwargs: dict[str, Any] | None,
        spec: dict[str, Any] | None,
        options: dict[str, Any],
    ) -> TaskSpec:
        from weft.taskspec import build_spec, parse_taskspec

        given = [n for n, v in (("command", command), ("function", function), ("spec", spec)) if v]
        if len(given) != 1:
            raise ToolError(
                'give exactly one of: command (an argv list, e.g. ["pytest", "-q"]), '
                "function ('module:function') or spec (a TaskSpec object)"
                + (f"; got {', '.join(given)}" if given else "")
            )
        if (args or kwargs) and not function:
            raise ToolError(
                "args and kwargs are for a function task; put a command's arguments in the "
                "command list, and a TaskSpec's in spec.spec.args / spec.spec.kwargs"
            )
        chosen = {k: v for k, v in options.items() if v not in (None, [], {})}
        if spec is not None:
            if chosen:
                raise ToolError(
                    f"with spec, put {', '.join(sorted(chosen))} inside the TaskSpec "
                    "(name; spec.timeout, spec.limits, spec.env, spec.cwd; metadata.tags)"
                )
            return parse_taskspec(spec, source="spec")
        if command is not None:
            return build_spec(command=list(command), **chosen)
        return build_spec(function=function, args=args or [], kwargs=kwargs or {}, **chosen)

    @_guard
    async def run_task(
        self,
        ctx: Ctx,
        command: Annotated[
            list[str] | None,
            Field(
                description='A command as an argv list, e.g. ["pytest", "-q", "tests/"]. '
                'No shell is involved: for pipes or globbing use ["sh", "-c", "..."]'
            ),
        ] = None,
        function: Annotated[
            str | None,
            Field(
                description="A Python function to call, as 'module:function' (importable from "
                "the project directory), e.g. 'jobs:process'"
            ),
        ] = None,
        args: Annotated[
            list[Any] | None, Field(description="Positional arguments for function (JSON)")
        ] = None,
        kwargs: Annotated[
            dict[str, Any] | None, Field(description="Keyword arguments for function (JSON)")
        ] = None,
        spec: Annotated[
            dict[str, Any] | None,
            Field(
                description="A full TaskSpec instead of command/function, e.g. "
                '{"name": "etl", "spec": {"type": "command", "process_target": ["make", "etl"], '
                '"timeout": 600, "limits": {"memory_mb": 512}, "env": {"MODE": "fast"}}, '
                '"io": {"inputs": {}, "outputs": {}}, "metadata": {"tags": ["nightly"]}}. '
                "For a function: spec.type 'function', spec.function_target, spec.args, "
                "spec.kwargs"
            ),
        ] = None,
        name: Annotated[
            str | None, Field(description="A name for the task (default: the program)")
        ] = None,
        timeout: Annotated[
            float | None,
            Field(gt=0, description="End the task after this many seconds (status timeout)"),
        ] = None,
        memory_mb: Annotated[
            int | None, Field(gt=0, description="Memory limit for the task's processes, MB")
        ] = None,
        cpu_percent: Annotated[
            int | None, Field(ge=1, le=100, description="CPU ceiling, percent of one core")
        ] = None,
        env: Annotated[
            dict[str, str] | None, Field(description="Extra environment variables")
        ] = None,
        tags: Annotated[
            list[str] | None,
            Field(description='Labels to find the task by later, e.g. ["suite=unit"]'),
        ] = None,
        cwd: Annotated[
            str | None,
            Field(description="Working directory (default: the project directory)"),
        ] = None,
        wait_seconds: WaitArg = 0,
        max_output_chars: OutputCharsArg = DEFAULT_OUTPUT_CHARS,
    ) -> TaskOutcome:
        """Start a durable task: a command, a Python function, or a full TaskSpec.

        The task runs in its own process under Weft's manager and survives this
        conversation: it keeps running if you stop waiting. Returns its TID at once
        (wait_seconds=0) or, if it ends within wait_seconds, its result: status,
        return_code, output (a command's stdout, or a function's return value), stderr
        and error. Collecting a result removes it (results are read once). For long jobs
        (test suites, builds) use wait_seconds=0 and call get_result later.
        """
        options = {
            "name": name,
            "timeout": timeout,
            "memory": memory_mb,
            "cpu": cpu_percent,
            "env": env,
            "tags": tags,
            "cwd": cwd,
        }
        task = self._build(command, function, args, kwargs, spec, options)
        self.policy.check(task)
        tid = await self._run(self.client.submit, task)
        if wait_seconds > 0:
            return await self._wait_for_result(
                ctx, tid, wait_seconds, peek=False, max_chars=max_output_chars
            )
        return TaskOutcome(
            tid=tid,
            tid_short=short(tid),
            status=events.PENDING,
            finished=False,
            next_step=f"started; call get_result with tid={short(tid)} to collect the result "
            "(wait_seconds to wait for it), status to follow it, stop_task to end it",
        )

    @_guard
    async def get_result(
        self,
        ctx: Ctx,
        tid: TidArg,
        wait_seconds: WaitArg = 0,
        peek: Annotated[
            bool,
            Field(description="Leave the result stored (true), or remove it once read (false)"),
        ] = False,
        max_output_chars: OutputCharsArg = DEFAULT_OUTPUT_CHARS,
    ) -> TaskOutcome:
        """Collect a task's result: status, return_code, output, stderr, error.

        If the task is still running, waits up to wait_seconds (bounded) for it to end,
        then returns its status with finished=false; call again later. Results are read
        once: a completed read removes the result unless peek is true.
        """
        full = await self._run(self.client.resolve_tid, tid)
        return await self._wait_for_result(
            ctx, full, wait_seconds, peek=peek, max_chars=max_output_chars
        )

    @_guard
    async def get_result_read_only(
        self,
        ctx: Ctx,
        tid: TidArg,
        wait_seconds: WaitArg = 0,
        max_output_chars: OutputCharsArg = DEFAULT_OUTPUT_CHARS,
    ) -> TaskOutcome:
        """Look at a task's result (status, return_code, output, stderr, error) without
        removing it. If the task is still running, waits up to wait_seconds (bounded) for it
        to end, then returns its status with finished=false; call again later.
        """
        full = await self._run(self.client.resolve_tid, tid)
        return await self._wait_for_result(
            ctx, full, wait_seconds, peek=True, max_chars=max_output_chars
        )

    @_guard
    async def status(
        self,
        tid: Annotated[
            str | None,
            Field(description="One task's TID (full, short or a 6+ digit suffix); omit for all"),
        ] = None,
        include_finished: Annotated[
            bool, Field(description="List finished tasks too (default: only active ones)")
        ] = False,
    ) -> StatusReport:
        """Weft's state: managers, task counts by status, and tasks (one, or the active ones).

        Statuses: pending (queued), running, paused; completed, failed, timeout, killed,
        stopped (finished).
        """
        return await self._status_report(tid, include_finished)

    async def _status_report(self, tid: str | None, include_finished: bool) -> StatusReport:
        report = await self._run(self.client.status, include_finished=include_finished)
        tasks = [TaskInfo.model_validate(t) for t in report["tasks"]]
        if tid is not None:
            tasks = [_task_info(await self._run(self.client.task, tid))]
        return StatusReport(
            managers=[ManagerInfo.model_validate(m) for m in report["managers"]],
            total=report["total"],
            counts=report["counts"],
            tasks=tasks,
        )

    @_guard
    async def list_tasks(
        self,
        status: Annotated[
            str | None,
            Field(
                description="'active', 'finished', or one status: pending, running, paused, "
                "completed, failed, timeout, killed, stopped"
            ),
        ] = None,
        name: Annotated[
            str | None, Field(description="Task name, or a glob such as 'test-*'")
        ] = None,
        tag: Annotated[
            str | None, Field(description="A tag the task carries, or a glob such as 'suite=*'")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many")] = 50,
    ) -> TaskList:
        """Find tasks by status, name or tag, newest first."""
        if status is not None and status not in STATUS_GROUPS and status not in ALL_STATUSES:
            raise ToolError(
                f"unknown status {status!r}: use 'active', 'finished' or one of "
                f"{', '.join(ALL_STATUSES)}"
            )
        wanted = STATUS_GROUPS.get(status or "", frozenset({status}) if status else None)
        records = await self._run(self.client.tasks)
        found = [
            r
            for r in records.values()
            if (wanted is None or r.status in wanted)
            and (name is None or fnmatch.fnmatchcase(r.name, name))
            and (tag is None or any(fnmatch.fnmatchcase(t, tag) for t in r.tags))
        ]
        found.sort(key=lambda r: r.tid, reverse=True)
        return TaskList(
            tasks=[_task_info(r) for r in found[:limit]],
            matched=len(found),
            truncated=len(found) > limit,
        )

    async def _control(
        self, ctx: Ctx, tid: str, command: str, wait_seconds: float
    ) -> ControlOutcome:
        full = await self._run(self.client.resolve_tid, tid)
        before = await self._run(self.client.task, full)
        # A pending task answers only once it starts: do not wait long for its reply.
        answer_within = 0.5 if before.status == events.PENDING else 5.0
        try:
            await self._run(self.client.control, full, command, timeout=answer_within)
            acknowledged = True
        except NotFoundError as exc:  # it is not running
            raise ToolError(
                f"{exc}: nothing to {command.lower()}; get_result collects its result"
            ) from exc
        except WaitTimeout:  # not started yet (or busy): the request waits in its control queue
            acknowledged = False
        wait = self._bound(wait_seconds)
        start = anyio.current_time()
        while True:
            record = await self._run(self.client.task, full)
            elapsed = anyio.current_time() - start
            if record.is_final or elapsed >= wait:
                break
            try:  # returns as soon as the result lands, and leaves it for get_result
                result = await self._run(
                    self.client.result, full, timeout=min(self.slice, wait - elapsed), peek=True
                )
            except WaitTimeout:
                await ctx.report_progress(elapsed, wait, f"task {short(full)} is {record.status}")
            else:
                record.status = str(result.get("status") or record.status)
                if record.is_final:
                    break
        if record.is_final:
            step = f"the task ended ({record.status}); get_result returns what it produced"
        elif acknowledged:
            step = f"{command} was acknowledged; the task is still {record.status}: check status"
        else:
            step = (
                f"the task did not answer yet (it is {record.status}); it will act on {command} "
                "when it starts; check status"
            )
        return ControlOutcome(
            tid=full,
            tid_short=short(full),
            command=command,
            acknowledged=acknowledged,
            status=record.status,
            finished=record.is_final,
            next_step=step,
        )

    @_guard
    async def stop_task(
        self,
        ctx: Ctx,
        tid: TidArg,
        wait_seconds: Annotated[
            float, Field(ge=0, description="Seconds to wait for the task to end (default 5)")
        ] = 5,
    ) -> ControlOutcome:
        """Stop a running task gracefully: SIGTERM to its processes, SIGKILL 2 s later.

        Its status becomes 'stopped'; what it printed so far is kept as its result.
        """
        return await self._control(ctx, tid, "STOP", wait_seconds)

    @_guard
    async def kill_task(
        self,
        ctx: Ctx,
        tid: TidArg,
        wait_seconds: Annotated[
            float, Field(ge=0, description="Seconds to wait for the task to end (default 5)")
        ] = 5,
    ) -> ControlOutcome:
        """Kill a running task at once (SIGKILL to its processes). Status becomes 'killed'."""
        return await self._control(ctx, tid, "KILL", wait_seconds)

    # -- tools: queues -------------------------------------------------------------------

    def _user_queue(self, queue: str) -> str:
        """The real queue behind ``queue``; Weft's own ``weft.*`` queues are off limits."""
        name = self.client.queue.resolve(queue)
        if name.startswith(INTERNAL_PREFIX):
            raise ToolError(
                f"queue {name!r} belongs to the Weft engine and cannot be read or written here; "
                "use run_task to start tasks, and status or read_task_log to watch them"
            )
        return name

    @_guard
    async def queue_write(
        self,
        queue: QueueArg,
        message: Annotated[
            str, Field(description="The message text (send JSON as text if you need structure)")
        ],
    ) -> QueueWriteResult:
        """Append a message to a queue (agents and tasks message each other this way)."""
        name = await self._run(self._user_queue, queue)
        message_id = await self._run(self.client.queue.write, name, message)
        return QueueWriteResult(queue=name, id=f"{message_id:019d}")

    def _read_up_to(self, name: str, limit: int) -> list[QueueMessage]:
        got: list[QueueMessage] = []
        while len(got) < limit:
            try:
                got.extend(self.client.queue.read(name))
            except EmptyQueueError:
                break
        return got

    def _wait_for_message(self, name: str, seconds: float) -> bool:
        """Whether a message is (or arrives) in ``name`` within ``seconds``; consumes nothing,
        so a call cancelled while it waits loses no message."""
        stream = self.client.queue.watch(name, peek=True, timeout=seconds)
        try:
            return next(stream, None) is not None
        finally:
            stream.close()

    @_guard
    async def queue_read(
        self,
        ctx: Ctx,
        queue: QueueArg,
        max_messages: Annotated[
            int, Field(ge=1, le=MAX_QUEUE_MESSAGES, description="Read up to this many")
        ] = 1,
        wait_seconds: Annotated[
            float,
            Field(ge=0, description="If the queue is empty, wait this long for a message"),
        ] = 0,
    ) -> QueueMessages:
        """Take the oldest messages from a queue (they are removed). An empty queue is an
        error unless a message arrives within wait_seconds."""
        name = await self._run(self._user_queue, queue)
        got = await self._run(self._read_up_to, name, max_messages)
        wait = self._bound(wait_seconds)
        start = anyio.current_time()
        while not got:
            elapsed = anyio.current_time() - start
            if elapsed >= wait:
                break
            if elapsed > 0:
                await ctx.report_progress(elapsed, wait, f"waiting for a message on {name}")
            if await self._run(self._wait_for_message, name, min(self.slice, wait - elapsed)):
                got = await self._run(self._read_up_to, name, max_messages)
        if not got:
            waited = f" (waited {wait:g}s)" if wait else ""
            raise ToolError(
                f"queue {name!r} is empty{waited}; read again later (wait_seconds to wait for a "
                "message), or check the name with queue_list"
            )
        return QueueMessages(
            queue=name,
            messages=[QueueMessageInfo(id=f"{m.id:019d}", body=m.body) for m in got],
            consumed=True,
        )

    @_guard
    async def queue_peek(
        self,
        queue: QueueArg,
        max_messages: Annotated[
            int, Field(ge=1, le=MAX_QUEUE_MESSAGES, description="Look at up to this many")
        ] = 10,
    ) -> QueueMessages:
        """Look at the oldest messages in a queue without removing them."""
        name = await self._run(self.client.queue.resolve, queue)  # even weft.* may be peeked
        try:
            got = await self._run(lambda: self.client.queue.peek(name, limit=max_messages))
        except EmptyQueueError:
            raise ToolError(
                f"queue {name!r} is empty; queue_list shows the queues that hold messages"
            ) from None
        return QueueMessages(
            queue=name,
            messages=[QueueMessageInfo(id=f"{m.id:019d}", body=m.body) for m in got],
            consumed=False,
        )

    @_guard
    async def queue_list(
        self,
        pattern: Annotated[
            str | None, Field(description="Only queues matching this glob, e.g. 'jobs.*'")
        ] = None,
        include_internal: Annotated[
            bool, Field(description="Also list Weft's own weft.* queues")
        ] = False,
    ) -> QueueList:
        """List the queues that hold messages, with how many each holds."""
        found = await self._run(self.client.queue.list, pattern)
        return QueueList(
            queues=[
                QueueInfo(name=n, pending=c)
                for n, c in found
                if include_internal or not n.startswith(INTERNAL_PREFIX)
            ]
        )

    # -- tools: the shared log -----------------------------------------------------------

    def _scan_log(
        self, after: int | None, tid: str | None, event: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Matching events after ``after`` (the first ``limit``), or the last ``limit`` when
        ``after`` is None; and the newest log ID looked at (the next cursor)."""
        matches: deque[dict[str, Any]] | list[dict[str, Any]]
        matches = deque(maxlen=limit) if after is None else []
        cursor = after
        while True:
            batch = self.client.log(after=cursor, limit=LOG_SCAN_BATCH)
            for record in batch:
                cursor = record["log_id"]
                if (tid is None or record.get("tid") == tid) and (
                    event is None or record.get("event") == event
                ):
                    matches.append(record)
                    if after is not None and len(matches) >= limit:
                        return list(matches), cursor
            if len(batch) < LOG_SCAN_BATCH:
                return list(matches), cursor

    def _wait_for_log(self, seconds: float) -> None:
        waiter = self.client.broker.waiter([queues.TASKS_LOG])
        try:
            waiter.wait(seconds)
        finally:
            waiter.close()

    @staticmethod
    def _event_view(record: dict[str, Any], include_taskspec: bool) -> dict[str, Any]:
        view = dict(record)
        view["log_id"] = f"{record['log_id']:019d}"
        spec = view.pop("taskspec", None)
        if isinstance(spec, dict) and spec.get("name"):
            view["name"] = spec["name"]
        if include_taskspec:
            view["taskspec"] = spec
        return view

    @_guard
    async def read_task_log(
        self,
        ctx: Ctx,
        after: Annotated[
            str | None,
            Field(
                description="Cursor: a log_id (next_cursor of an earlier call); only newer "
                "events are returned. Omit to get the most recent events; '0' for the oldest"
            ),
        ] = None,
        tid: Annotated[
            str | None, Field(description="Only this task's events (full, short or suffix TID)")
        ] = None,
        event: Annotated[
            str | None,
            Field(
                description="Only this event: task_initialized, work_started, work_completed, "
                "work_failed, work_timeout, work_limit_violation, or control_* (e.g. "
                "control_stop)"
            ),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=1000, description="At most this many events")] = 50,
        wait_seconds: Annotated[
            float,
            Field(ge=0, description="If nothing new matches, wait this long for new events"),
        ] = 0,
        include_taskspec: Annotated[
            bool, Field(description="Include each event's full TaskSpec (large)")
        ] = False,
    ) -> LogPage:
        """Read the shared task log: every task's state changes, in order.

        Follow it by passing next_cursor back as 'after' (with wait_seconds to wait for
        new events). Other agents' tasks appear here too.
        """
        if after is not None and not (after.strip().isdigit() and len(after.strip()) <= 19):
            raise ToolError(f"invalid cursor {after!r}: pass a log_id or next_cursor (digits)")
        if event is not None and event not in KNOWN_EVENTS and not event.startswith("control_"):
            raise ToolError(
                f"unknown event {event!r}: use one of {', '.join(KNOWN_EVENTS)} or control_*"
            )
        full_tid = await self._run(self.client.resolve_tid, tid) if tid else None
        start_after = int(after) if after is not None else None
        found, cursor = await self._run(self._scan_log, start_after, full_tid, event, limit)
        wait = self._bound(wait_seconds)
        start = anyio.current_time()
        while not found:
            elapsed = anyio.current_time() - start
            if elapsed >= wait:
                break
            if elapsed > 0:
                await ctx.report_progress(elapsed, wait, "waiting for new log events")
            await self._run(self._wait_for_log, min(self.slice, wait - elapsed))
            found, cursor = await self._run(
                self._scan_log, cursor if cursor is not None else 0, full_tid, event, limit
            )
        return LogPage(
            events=[self._event_view(r, include_taskspec) for r in found],
            next_cursor=None if cursor is None else f"{cursor:019d}",
        )

    # -- resources -----------------------------------------------------------------------

    async def task_resource(self, tid: str) -> str:
        """One task's status (the record folded from the shared log), as JSON."""
        try:
            record = await self._run(self.client.task, tid)
        except NotFoundError as exc:
            raise ResourceNotFoundError(str(exc)) from exc
        except WeftError as exc:
            raise ResourceError(str(exc)) from exc
        return _task_info(record).model_dump_json(indent=2)

    async def log_resource(self) -> str:
        """The 100 most recent events of the shared task log, as JSON."""
        try:
            found, cursor = await self._run(self._scan_log, None, None, None, 100)
        except WeftError as exc:
            raise ResourceError(str(exc)) from exc
        page = LogPage(
            events=[self._event_view(r, False) for r in found],
            next_cursor=None if cursor is None else f"{cursor:019d}",
        )
        return page.model_dump_json(indent=2)

    async def status_resource(self) -> str:
        """Managers, task counts and active tasks, as JSON."""
        try:
            report = await self._status_report(None, False)
        except WeftError as exc:
            raise ResourceError(str(exc)) from exc
        return report.model_dump_json(indent=2)

    # -- registration --------------------------------------------------------------------

    def register(self, server: MCPServer[Any]) -> list[str]:
        """Add the tools (only the reading ones when read-only) and resources to ``server``."""
        reading = ToolAnnotations(read_only_hint=True, open_world_hint=False)
        writing = ToolAnnotations(
            read_only_hint=False, destructive_hint=False, open_world_hint=True
        )
        ending = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)
        consuming = ending  # removes what it reads
        read_only = self.policy.read_only
        # (name, function, annotations, offered when read-only)
        tools: list[tuple[str, Callable[..., Any], ToolAnnotations, bool]] = [
            ("run_task", self.run_task, writing, False),
            (
                "get_result",
                self.get_result_read_only if read_only else self.get_result,
                reading if read_only else consuming,
                True,
            ),
            ("status", self.status, reading, True),
            ("list_tasks", self.list_tasks, reading, True),
            ("stop_task", self.stop_task, ending, False),
            ("kill_task", self.kill_task, ending, False),
            ("queue_write", self.queue_write, writing, False),
            ("queue_read", self.queue_read, consuming, False),
            ("queue_peek", self.queue_peek, reading, True),
            ("queue_list", self.queue_list, reading, True),
            ("read_task_log", self.read_task_log, reading, True),
        ]
        names = []
        for name, fn, hints, offered_read_only in tools:
            if read_only and not offered_read_only:
                continue
            server.add_tool(fn, name=name, annotations=hints, structured_output=True)
            names.append(name)
        server.resource(
            "weft://task/{tid}",
            name="task",
            description="One task's status, as JSON (tid: full, short or a 6+ digit suffix)",
            mime_type="application/json",
        )(self.task_resource)
        server.resource(
            "weft://log",
            name="log",
            description="The 100 most recent events of the shared task log, as JSON",
            mime_type="application/json",
        )(self.log_resource)
        server.resource(
            "weft://status",
            name="status",
            description="Managers, task counts by status, and active tasks, as JSON",
            mime_type="application/json",
        )(self.status_resource)
        return names
