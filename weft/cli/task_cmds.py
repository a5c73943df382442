"""Commands that run and follow tasks: run, result, status, manager, task."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from weft.cli import common
from weft.errors import EXIT_ERROR, EXIT_OK, UsageError

if TYPE_CHECKING:
    from weft.client import WeftClient

manager_app = typer.Typer(
    help="Start, stop and inspect this project's manager.", no_args_is_help=True
)
task_app = typer.Typer(
    help="Control a running task: stop, kill, pause, resume, ping, status.", no_args_is_help=True
)


def _exit_code_for(result: dict[str, Any]) -> int:
    if result.get("status") == "completed":
        return EXIT_OK
    code = result.get("return_code")
    if isinstance(code, int) and 0 <= code < 256:
        return code
    return EXIT_ERROR


def _print_output(result: dict[str, Any], *, is_function: bool) -> None:
    output = result.get("output")
    if is_function or not isinstance(output, str):
        if output is not None:
            text = output if isinstance(output, str) else json.dumps(output)
            sys.stdout.write(text + "\n")
        if result.get("stdout"):
            sys.stderr.write(result["stdout"])
    else:
        sys.stdout.write(output)
    sys.stdout.flush()
    if result.get("stderr") and not result.get("streamed"):
        sys.stderr.write(result["stderr"])
    error = result.get("error")
    if error and result.get("status") != "completed" and not str(error).startswith("exited with"):
        # A command that exited non-zero has said why on its own stderr; anything else we say.
        sys.stderr.write(f"weft: task {str(result.get('tid'))[-10:]}: {error}\n")
    sys.stderr.flush()


def _wait_and_print(
    client: WeftClient,
    tid: str,
    *,
    timeout: float | None,
    as_json: bool,
    is_function: bool,
    stream: bool,
    announce: bool,
) -> int:
    try:
        if stream:
            result: dict[str, Any] = {}
            chunks = 0
            for item in client.stream(tid, timeout=timeout):
                if item.get("type") == "chunk":
                    chunks += 1
                    target = sys.stdout if item.get("stream") == "stdout" else sys.stderr
                    if not as_json:
                        target.write(item.get("data", ""))
                        target.flush()
                else:
                    result = item
            if as_json:
                common.print_json(result)
            elif is_function or not chunks:
                # The value of a function, or a task that did not stream: print the result.
                shown = dict(result) if not chunks else {**result, "stdout": "", "stderr": ""}
                if chunks:
                    shown["streamed"] = True
                _print_output(shown, is_function=is_function)
            elif result.get("error") and result.get("status") != "completed":
                sys.stderr.write(f"weft: task {tid[-10:]}: {result['error']}\n")
        else:
            result = client.result(tid, timeout=timeout)
            if as_json:
                common.print_json(result)
            else:
                _print_output(result, is_function=is_function)
    except KeyboardInterrupt:
        print(
            f"\nweft: stopped waiting; task {tid[-10:]} goes on (weft result {tid[-10:]})",
            file=sys.stderr,
        )
        return 130
    if announce:
        print(f"Task {result.get('status', 'ended')}: {tid}", file=sys.stderr)
    return _exit_code_for(result)


def run(
    ctx: typer.Context,
    command: list[str] | None = typer.Argument(None, help="The command and its arguments."),
    spec_file: Path | None = typer.Option(
        None, "--spec", help="Run a TaskSpec JSON file (- for stdin)."
    ),
    function: str | None = typer.Option(
        None, "--function", "-f", help="Run a Python function, module:function."
    ),
    arg: list[str] | None = typer.Option(
        None, "--arg", help="Positional argument for --function (JSON or text; repeatable)."
    ),
    kw: list[str] | None = typer.Option(
        None, "--kw", help="Keyword argument KEY=VALUE for --function (repeatable)."
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Wait and print the output (default), or print only the TID."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", "-t", help="End the task's process tree after N seconds (exit 124)."
    ),
    memory: int | None = typer.Option(None, "--memory", help="Memory limit for the task tree, MB."),
    cpu: int | None = typer.Option(None, "--cpu", help="CPU ceiling, percent of one core (1-100)."),
    env: list[str] | None = typer.Option(
        None, "--env", "-e", help="Environment variable KEY=VALUE (repeatable)."
    ),
    tag: list[str] | None = typer.Option(
        None, "--tag", help="Metadata tag, e.g. KEY=VALUE (repeatable)."
    ),
    name: str | None = typer.Option(
        None, "--name", "-n", help="Task name (shown in status and process titles)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the result (or the TID with --no-wait) as JSON."
    ),
    stream_output: bool = typer.Option(
        False, "--stream-output", help="Print output as it is produced."
    ),
    interactive: bool = typer.Option(
        False, "--interactive", "-i", help="Connect this terminal to the task."
    ),
    policy: str = typer.Option(
        "keep", "--reserved-policy", help="On failure: keep | requeue | clear the work message."
    ),
    cleanup: bool = typer.Option(
        False, "--cleanup", help="Delete the task's queues when it ends (the unread result stays)."
    ),
    no_autostart: bool = typer.Option(
        False, "--no-autostart", help="A manager started now skips autostart templates."
    ),
) -> None:
    """Run a command, a Python function or a TaskSpec as a durable, isolated task.

    Waits and prints the command's stdout and stderr; exits with its exit code (124 on timeout).

    Examples:
      weft run echo "hello world"
      weft run --timeout 30 ./long-task.sh
      weft run --no-wait make test        # prints the TID; later: weft result TID
      weft run --function mymodule:process --arg input.csv --kw mode=fast
      weft run --spec task.json
    """
    raise typer.Exit(
        _run(
            command,
            spec_file,
            function,
            arg,
            kw,
            wait,
            timeout,
            memory,
            cpu,
            env,
            tag,
            name,
            as_json,
            stream_output,
            interactive,
            policy,
            cleanup,
            no_autostart,
        )
    )


@common.handle_errors
def _run(
    command: list[str] | None,
    spec_file: Path | None,
    function: str | None,
    arg: list[str] | None,
    kw: list[str] | None,
    wait: bool,
    timeout: float | None,
    memory: int | None,
    cpu: int | None,
    env: list[str] | None,
    tag: list[str] | None,
    name: str | None,
    as_json: bool,
    stream_output: bool,
    interactive: bool,
    policy: str,
    cleanup: bool,
    no_autostart: bool,
) -> int:
    from weft.spec_options import PreparedSpec, pairs, prepare, spec_data

    spec: Any
    if spec_file is not None:
        if command or function:
            raise UsageError("--spec runs the file's task: give no command or --function with it")
        given = [
            flag
            for flag, value in (
                ("--timeout", timeout),
                ("--memory", memory),
                ("--cpu", cpu),
                ("--env", env),
                ("--tag", tag),
                ("--name", name),
                ("--arg", arg),
                ("--kw", kw),
                ("--stream-output", stream_output),
                ("--interactive", interactive),
                ("--cleanup", cleanup),
                ("--reserved-policy", policy != "keep"),
            )
            if value
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)} cannot be combined with --spec: set them in the file"
            )
        if str(spec_file) == "-":
            text = sys.stdin.read()
        else:
            try:
                text = spec_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise UsageError(f"cannot read --spec {spec_file}: {exc.strerror}") from None
        from weft.taskspec import parse_taskspec

        model = parse_taskspec(text, source=f"TaskSpec {spec_file}")
        spec = model
        kind, streams, interactive = (
            model.spec.type,
            model.spec.stream_output,
            model.spec.interactive,
        )
    else:
        if timeout is not None and timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        args = [_json_or_text(a) for a in arg or []]
        kwargs = {k: _json_or_text(v) for k, v in pairs(kw, "--kw").items()}
        if not command and not function:
            raise UsageError("nothing to run: give a command, --function or --spec")
        if command and command[0].startswith("-") and command[0] != "-":
            raise UsageError(
                f"unknown option {command[0]} (see weft run --help; a program whose name "
                "starts with '-' goes after --)"
            )
        if (args or kwargs) and not function:
            raise UsageError("--arg and --kw go with --function")
        if interactive and function:
            raise UsageError("--interactive connects a command's stdin; a --function has none")
        data = spec_data(
            command=list(command) if command else None if function else [],
            function=function,
            args=args,
            kwargs=kwargs,
            name=name,
            timeout=timeout,
            memory=memory,
            cpu=cpu,
            env=env,
            tags=tag,
            stream_output=stream_output,
            interactive=interactive,
            cleanup_on_exit=cleanup,
            reserved_policy=policy,
            cwd=os.getcwd(),
        )
        # Checked without loading the TaskSpec model (start-up time); the model is the
        # fallback for anything the fast checks do not cover.
        prepared: PreparedSpec | None = prepare(data)
        if prepared is None:
            from weft.taskspec import parse_taskspec

            spec = parse_taskspec(data, source="task options")
        else:
            spec = prepared
        kind = "function" if function else "command"
        streams = stream_output
    client = common.client()
    manager_env = {"WEFT_AUTOSTART_TASKS": "false"} if no_autostart else None
    tid = client.submit(spec, manager_env=manager_env)
    if not wait:
        if as_json:
            common.print_json({"tid": tid, "tid_short": tid[-10:]})
        else:
            print(tid)
        return EXIT_OK
    if interactive:
        _pump_stdin(client, tid)
    return _wait_and_print(
        client,
        tid,
        timeout=None,
        as_json=as_json,
        is_function=kind == "function",
        stream=streams or interactive,
        announce=spec_file is not None,
    )


def _pump_stdin(client: WeftClient, tid: str) -> None:
    """Send this terminal's input to an interactive task, line by line; EOF closes its stdin."""
    import threading

    from weft.client import WeftClient

    def pump() -> None:
        # Its own client: broker handles are per thread and this one outlives nothing.
        with WeftClient(client.ctx) as sender:
            for line in sys.stdin:
                sender.send_input(tid, line)
            sender.close_input(tid)

    threading.Thread(target=pump, daemon=True, name="weft-stdin").start()


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


@common.handle_errors
def result(
    tid: str | None = typer.Argument(
        None, help="Full TID, short TID (last 10 digits) or a unique suffix."
    ),
    timeout: float | None = typer.Option(
        None, "--timeout", "-t", help="Wait at most N seconds (then exit 124)."
    ),
    as_json: bool = typer.Option(True, "--json/--text", help="JSON (default) or the bare output."),
    stream: bool = typer.Option(False, "--stream", help="Print output chunks as they arrive."),
    all_: bool = typer.Option(False, "--all", help="Every result waiting to be read."),
    peek: bool = typer.Option(False, "--peek", help="Read without consuming the result."),
) -> None:
    """Get a task's result: {"tid", "status", "return_code", "output", ...}.

    Waits for a running task; results are read once unless --peek.
    """
    client = common.client()
    if all_:
        if tid:
            raise UsageError("give a TID or --all, not both")
        for item in client.all_results(peek=peek):
            common.print_json(item)
        raise typer.Exit(EXIT_OK)
    if not tid:
        raise UsageError("give a TID (or --all)")
    full = client.resolve_tid(tid)
    if stream:
        code = _wait_and_print(
            client,
            full,
            timeout=timeout,
            as_json=False,
            is_function=False,
            stream=True,
            announce=False,
        )
        raise typer.Exit(code)
    got = client.result(full, timeout=timeout, peek=peek)
    if as_json:
        common.print_json(got)
    else:
        _print_output(got, is_function=not isinstance(got.get("output"), str))
    raise typer.Exit(_exit_code_for(got))


def _fmt_time(ns: int | None) -> str:
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def _manager_line(managers: list[dict[str, Any]], *, show_host: bool = False) -> str:
    """The seed's ``Manager: Running (PID n, idle timeout: Ns)``; one line per manager for many.

    With several managers (hosts sharing a PostgreSQL database), or ``show_host``, every
    manager is listed with its host.
    """
    if not managers:
        return "Manager: Stopped"
    if len(managers) == 1:
        m = managers[0]
        host = f", host {m['host']}" if show_host or m["host"] != _host() else ""
        return f"Manager: Running (PID {m['pid']}, idle timeout: {m['idle_timeout']:g}s{host})"
    lines = [f"Managers: {len(managers)} running"]
    for m in sorted(managers, key=lambda m: (str(m["host"]), int(m["pid"]))):
        age = m.get("heartbeat_age")
        beat = f", last heartbeat {age:.1f}s ago" if isinstance(age, int | float) else ""
        lines.append(
            f"  host {m['host']}: PID {m['pid']}, idle timeout: {m['idle_timeout']:g}s{beat}"
        )
    return "\n".join(lines)


def _tasks_line(total: int, counts: dict[str, int]) -> str:
    order = ["running", "paused", "pending", "completed", "failed", "timeout", "stopped", "killed"]
    keys = [k for k in order if counts.get(k)] + sorted(k for k in counts if k not in order)
    inner = ", ".join(f"{counts[k]} {k}" for k in keys)
    return f"Tasks: {total} total" + (f" ({inner})" if inner else "")


def _render_status(client: WeftClient, include_finished: bool) -> str:
    data = client.status(include_finished=include_finished)
    # Which host runs what matters once work is shared (PostgreSQL) or seen from elsewhere.
    here = _host()
    hosts = {m["host"] for m in data["managers"]} | {t["host"] for t in data["tasks"] if t["host"]}
    show_host = client.ctx.backend != "sqlite" or bool(hosts - {here})
    lines = [
        _manager_line(data["managers"], show_host=show_host),
        _tasks_line(data["total"], data["counts"]),
    ]
    if data["tasks"]:
        lines.append("")
        host_head = f"{'HOST':<16}" if show_host else ""
        lines.append(f"{'TID':<12}{'STATUS':<11}{host_head}{'NAME':<20}COMMAND")
        for t in data["tasks"]:
            host_cell = f"{(t['host'] or '-')[:15]:<16}" if show_host else ""
            lines.append(
                f"{t['tid_short']:<12}{t['status']:<11}{host_cell}{t['name'][:19]:<20}"
                f"{t['command'][:60]}"
            )
    return "\n".join(lines)


def _render_task(record: dict[str, Any]) -> str:
    rows = [
        ("TID", record["tid"]),
        ("Name", record["name"]),
        ("Status", record["status"]),
        ("Command", record["command"]),
        ("PID", record["task_pid"] or "-"),
        ("Host", record.get("host") or "-"),
        ("Created", _fmt_time(record["created_at"])),
        ("Started", _fmt_time(record["started_at"])),
        ("Finished", _fmt_time(record["finished_at"])),
        ("Return code", "-" if record["return_code"] is None else record["return_code"]),
        ("Limits", ", ".join(f"{k}={v}" for k, v in record["limits"].items()) or "none"),
    ]
    if record["started_at"] and record["finished_at"]:
        rows.append(("Duration", f"{(record['finished_at'] - record['started_at']) / 1e9:.3f}s"))
    if record.get("error"):
        rows.append(("Error", record["error"]))
    if record.get("tags"):
        rows.append(("Tags", ", ".join(record["tags"])))
    metrics = record.get("metrics") or {}
    for key, label, unit in _METRIC_LABELS:
        if metrics.get(key) is not None:
            rows.append((label, f"{metrics[key]}{unit}"))
    return "\n".join(f"{k + ':':<14}{v}" for k, v in rows)


_METRIC_LABELS = (
    ("peak_memory_mb", "Peak memory", " MB"),
    ("cpu_seconds", "CPU time", " s"),
    ("wall_seconds", "Wall time", " s"),
    ("peak_open_files", "Peak files", ""),
    ("peak_connections", "Peak conns", ""),
    ("peak_processes", "Peak procs", ""),
    ("cpu_throttled_seconds", "CPU held", " s"),
)


@common.handle_errors
def status(
    tid: str | None = typer.Argument(None, help="Show one task (full, short or suffix TID)."),
    all_: bool = typer.Option(False, "--all", "-a", help="Include finished tasks in the list."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    watch: bool = typer.Option(False, "--watch", "-w", help="Redraw every second until Ctrl-C."),
) -> None:
    """Show the manager and tasks (or one task in detail)."""
    client = common.client()
    if tid:
        record = client.task(tid).to_dict()
        if as_json:
            common.print_json(record)
        else:
            print(_render_task(record))
        return
    if as_json and not watch:
        common.print_json(client.status(include_finished=all_))
        return
    if not watch:
        print(_render_status(client, all_))
        return
    try:
        while True:
            text = _render_status(client, all_)
            sys.stdout.write("\x1b[H\x1b[2J" + text + "\n")
            sys.stdout.flush()
            time.sleep(1.0)
    except KeyboardInterrupt:
        sys.stdout.write("\n")


@manager_app.command("start")
@common.handle_errors
def manager_start() -> None:
    """Start the manager now (it also starts on demand with the first task)."""
    client = common.client()
    pid = client.ensure_manager()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        managers = [m for m in client.managers() if m.host == _host()]
        if managers:
            print(_manager_line([managers[0].to_dict()], show_host=client.ctx.backend != "sqlite"))
            return
        time.sleep(0.05)
    raise UsageError(
        f"the manager (PID {pid}) did not register within 15s; see .weft/logs/manager.log"
    )


def _host() -> str:
    from weft.registry import host_name

    return host_name()


@manager_app.command("stop")
@common.handle_errors
def manager_stop(
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds to wait before killing it."),
) -> None:
    """Stop the manager gracefully: running tasks get a grace period, then STOP."""
    client = common.client(create=False)
    stopped = client.stop_manager(timeout=timeout)
    print(
        f"Stopped manager (PID {', '.join(map(str, stopped))})" if stopped else "Manager: Stopped"
    )


@manager_app.command("status")
@common.handle_errors
def manager_status(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Show whether a manager runs, with its PID, host and idle timeout."""
    client = common.client(create=False)
    managers = [m.to_dict() for m in client.managers()]
    if as_json:
        common.print_json(managers)
    else:
        print(_manager_line(managers, show_host=client.ctx.backend != "sqlite"))


def _control(command: str) -> Any:
    @common.handle_errors
    def handler(
        tid: str = typer.Argument(..., help="Full TID, short TID or a unique suffix."),
        as_json: bool = typer.Option(False, "--json", help="Print the task's answer as JSON."),
        timeout: float = typer.Option(
            5.0, "--timeout", help="Seconds to wait for the task's answer."
        ),
    ) -> None:
        reply = common.client().control(tid, command, timeout=timeout)
        if as_json:
            common.print_json(reply)
        else:
            print(
                f"{command} {reply['tid'][-10:]}: {reply.get('status')}"
                + ("" if reply.get("ok") else f" ({reply.get('error')})")
            )

    handler.__doc__ = f"Send {command} to a running task and print its answer."
    return handler


def register(app: typer.Typer) -> None:
    app.command(
        context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True}
    )(run)
    app.command()(result)
    app.command()(status)
    app.add_typer(manager_app, name="manager")
    for command in ("stop", "kill", "pause", "resume", "ping", "status"):
        task_app.command(command)(_control(command.upper()))
    app.add_typer(task_app, name="task")
