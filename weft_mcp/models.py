"""What the MCP tools return: pydantic models, so every tool has an output schema.

IDs (TIDs, message IDs, log cursors) are 19-digit numbers. JSON numbers that large lose
precision in many clients (anything above 2**53), so they always travel as strings here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class TaskInfo(BaseModel):
    """What the shared log says about one task (``weft.events.TaskRecord``)."""

    model_config = ConfigDict(extra="allow")

    tid: str = Field(description="Full 19-digit task ID")
    tid_short: str = Field(description="Last 10 digits; accepted wherever a TID is")
    status: str = Field(
        description="pending, running, paused, completed, failed, timeout, killed or stopped"
    )
    name: str = ""
    command: str = Field(default="", description="The command line, or module:function")
    task_pid: int | None = None
    return_code: int | None = None
    created_at: int | None = Field(default=None, description="Unix time in nanoseconds")
    started_at: int | None = Field(default=None, description="Unix time in nanoseconds")
    finished_at: int | None = Field(default=None, description="Unix time in nanoseconds")
    last_event: str = ""
    error: str | None = None
    host: str | None = None
    limits: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    autostart: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class TaskOutcome(BaseModel):
    """A task's result if it has finished, else where it stands and what to do next."""

    tid: str = Field(description="Full 19-digit task ID")
    tid_short: str = Field(description="Last 10 digits; accepted wherever a TID is")
    status: str = Field(
        description="pending, running, paused (not finished) or completed, failed, timeout, "
        "killed, stopped (finished)"
    )
    finished: bool = Field(description="True when the task has ended and its result is here")
    result_consumed: bool = Field(
        default=False,
        description="True if this call removed the result from the task's outbox "
        "(results are read once; peek leaves them)",
    )
    return_code: int | None = Field(
        default=None, description="Exit code (0 ok, 124 timeout, 127 not found, 128+N signal)"
    )
    output: Any = Field(
        default=None,
        description="A command's stdout (text), or a function's return value (any JSON)",
    )
    stdout: str | None = Field(default=None, description="What a function task printed")
    stderr: str | None = None
    error: str | None = Field(default=None, description="Why the task did not complete")
    truncated: bool = Field(
        default=False,
        description="True if output, stdout or stderr was cut to max_output_chars (the end kept)",
    )
    next_step: str = Field(description="What to do next")


class ManagerInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    manager_id: str
    pid: int
    host: str
    alive: bool
    idle_timeout: float | None = None
    started: int | None = None
    heartbeat: int | None = None


class StatusReport(BaseModel):
    managers: list[ManagerInfo] = Field(description="Managers that run this project's tasks")
    total: int = Field(description="Tasks the log knows of (every status)")
    counts: dict[str, int] = Field(description="Number of tasks by status")
    tasks: list[TaskInfo] = Field(
        description="The one task asked for, else active tasks (or all with include_finished)"
    )


class TaskList(BaseModel):
    tasks: list[TaskInfo] = Field(description="Matching tasks, newest first")
    matched: int = Field(description="How many tasks matched before the limit")
    truncated: bool = Field(description="True if more tasks matched than were returned")


class ControlOutcome(BaseModel):
    tid: str
    tid_short: str
    command: str = Field(description="STOP or KILL")
    acknowledged: bool = Field(description="The task process answered the request")
    status: str = Field(description="The task's status after the request")
    finished: bool = Field(description="The task has ended (its result waits for get_result)")
    next_step: str


class QueueWriteResult(BaseModel):
    queue: str
    id: str = Field(description="The new message's 19-digit ID")


class QueueMessageInfo(BaseModel):
    id: str = Field(description="19-digit message ID (time-ordered)")
    body: str


class QueueMessages(BaseModel):
    queue: str
    messages: list[QueueMessageInfo] = Field(description="Oldest first")
    consumed: bool = Field(description="True if the messages were removed from the queue")


class QueueInfo(BaseModel):
    name: str
    pending: int = Field(description="Messages waiting in the queue")


class QueueList(BaseModel):
    queues: list[QueueInfo] = Field(description="Queues that hold messages, by name")


class LogPage(BaseModel):
    events: list[dict[str, Any]] = Field(
        description="Events in log order; each has log_id, event, tid, tid_short, status, "
        "timestamp, task_pid, return_code and sometimes error"
    )
    next_cursor: str | None = Field(
        description="Pass as 'after' to get only newer events (null: the log is empty)"
    )
