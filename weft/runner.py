"""Executing a target: a command (exec) or a Python function (fork), as its own session.

The target always runs in a child of the task process, as the leader of a new session, so
that the task process can watch, pause, time out and end its whole process tree, and a
crash of the target never takes the task process with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from weft.taskspec import Spec

ChunkSink = Callable[[str, bytes], None]
READ_SIZE = 65536
MAX_ERROR_CHARS = 2000  # a function's error summary ("Type: message"), as events carry it


@dataclass
class Outcome:
    """How the target ended."""

    return_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    value: Any = None  # a function's return value
    error: str | None = None  # a function's exception, "Type: message"
    traceback: str | None = None


class _Reader(threading.Thread):
    """Drains one pipe into memory, passing each chunk to a sink as it arrives."""

    def __init__(self, fd: int, stream: str, sink: ChunkSink | None) -> None:
        super().__init__(daemon=True, name=f"weft-read-{stream}")
        self.fd = fd
        self.stream = stream
        self.sink = sink
        self.chunks: list[bytes] = []

    def run(self) -> None:
        try:
            while True:
                data = os.read(self.fd, READ_SIZE)
                if not data:
                    break
                self.chunks.append(data)
                if self.sink is not None:
                    self.sink(self.stream, data)
        except OSError:
            pass
        finally:
            os.close(self.fd)

    def data(self) -> bytes:
        return b"".join(self.chunks)


@dataclass
class Target:
    """A running target process and the threads that collect its output."""

    pid: int
    readers: list[_Reader] = field(default_factory=list)  # stdout, stderr (and "result")
    stdin_fd: int | None = None
    _pidfd: int | None = None
    _status: int | None = None

    def __post_init__(self) -> None:
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the target to exit; its return code, or None."""
        if self._status is not None:
            return self._status
        if self._pidfd is not None and timeout > 0:
            ready, _, _ = select.select([self._pidfd], [], [], timeout)
            if not ready:
                return None
        pid, status = os.waitpid(
            self.pid, 0 if self._pidfd is not None and timeout > 0 else os.WNOHANG
        )
        if pid == 0:
            if timeout > 0 and self._pidfd is None:
                threading.Event().wait(timeout)
            return None
        self._status = os.waitstatus_to_exitcode(status)
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return self._status

    def signal_tree(self, sig: int) -> None:
        """Send ``sig`` to the target's whole process tree (its session, and any stray child)."""
        victims: list[int] = []
        try:
            import psutil

            victims = [c.pid for c in psutil.Process(self.pid).children(recursive=True)]
        except Exception:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def write_stdin(self, data: bytes) -> bool:
        if self.stdin_fd is None:
            return False
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.stdin_fd, view) :]
            return True
        except OSError:
            return False

    def close_stdin(self) -> None:
        if self.stdin_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.stdin_fd)
            self.stdin_fd = None

    def collect(self, return_code: int) -> Outcome:
        """Join the output readers and, for a function, read what it returned.

        The target has exited; whatever it left running in its session (a background
        child, a daemon that did not call setsid) is ended now, as on STOP and timeout:
        it would otherwise outlive the task unwatched and hold its output pipes open.
        """
        self.close_stdin()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for reader in self.readers:
            reader.join(timeout=5)
        out = Outcome(return_code=return_code)
        for reader in self.readers:
            if reader.stream == "stdout":
                out.stdout = reader.data()
            elif reader.stream == "stderr":
                out.stderr = reader.data()
            else:  # a function's report: read as it is written (a pipe holds only 64 kB)
                _apply_function_report(out, reader.data())
        return out


def _apply_function_report(out: Outcome, raw: bytes) -> None:
    if not raw:
        if out.return_code == 0:
            out.return_code = 1
        out.error = out.error or f"function exited (code {out.return_code}) without returning"
        return
    try:
        report = json.loads(raw)
    except json.JSONDecodeError:
        out.error = "function result could not be decoded"
        out.return_code = out.return_code or 1
        return
    if "error" in report:
        error = str(report["error"])
        if len(error) > MAX_ERROR_CHARS:  # it travels in events and results; stderr has it all
            cut = len(error) - MAX_ERROR_CHARS
            error = f"{error[:MAX_ERROR_CHARS]}... ({cut} more characters)"
        out.error = error
        out.traceback = report.get("traceback")
        out.return_code = out.return_code or 1
    else:
        out.value = report.get("value")


def _child_env(spec: Spec, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.update(spec.env)
    return env


def start_command(
    spec: Spec,
    *,
    env: dict[str, str],
    sink: ChunkSink | None,
    interactive: bool = False,
    stdin_data: bytes | None = None,
) -> Target:
    argv = list(spec.process_target or [])
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if interactive or stdin_data is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_child_env(spec, env),
        cwd=spec.cwd or None,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    # We reap with waitpid ourselves; detach the Popen object from its pipes and pid.
    out_fd, err_fd = os.dup(proc.stdout.fileno()), os.dup(proc.stderr.fileno())
    stdin_fd = os.dup(proc.stdin.fileno()) if proc.stdin is not None else None
    for pipe in (proc.stdout, proc.stderr, proc.stdin):
        if pipe is not None:
            pipe.close()
    proc.returncode = 0  # stop Popen.__del__ from reaping or warning; we own the pid
    target = Target(pid=proc.pid, stdin_fd=stdin_fd)
    target.readers = [_Reader(out_fd, "stdout", sink), _Reader(err_fd, "stderr", sink)]
    for reader in target.readers:
        reader.start()
    if stdin_data is not None:
        _feed(target, stdin_data)
    return target


def _feed(target: Target, data: bytes) -> None:
    """Write ``data`` to the target's stdin from a thread (a full pipe must not block us)."""

    def feed() -> None:
        target.write_stdin(data)
        target.close_stdin()

    threading.Thread(target=feed, daemon=True, name="weft-stdin").start()


def start_function(spec: Spec, *, env: dict[str, str], sink: ChunkSink | None) -> Target:
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _run_function_child(spec, env, out_w, err_w, res_w, (out_r, err_r, res_r))
    for fd in (out_w, err_w, res_w):
        os.close(fd)
    return _function_target(pid, out_r, err_r, res_r, sink)


def _function_target(
    pid: int, out_r: int, err_r: int, res_r: int, sink: ChunkSink | None
) -> Target:
    """A running function's Target: its output pipes and its result pipe, being read."""
    target = Target(pid=pid)
    target.readers = [
        _Reader(out_r, "stdout", sink),
        _Reader(err_r, "stderr", sink),
        _Reader(res_r, "result", None),
    ]
    for reader in target.readers:
        reader.start()
    return target


class FunctionZygote:
    """A process forked before the task process opens the broker, to become its function.

    A function's process must not inherit SQLite state (a function that uses Weft would hang
    on locks inherited across the fork). Forking it from the task process means closing and
    reopening the task's connection around the fork, and copying a process that has touched
    far more memory; forking it early, while the task process holds no connection, costs
    neither. The zygote waits for the spec on a pipe, then runs it exactly like
    ``start_function``'s child. It serves one launch; ``cancel`` lets it go unused.
    """

    def __init__(self) -> None:
        self._pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, result
        self._request_r, self._request_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the zygote: never returns
            os.close(self._request_w)
            self._wait_and_run()
        os.close(self._request_r)
        for _, write_end in self._pipes:
            os.close(write_end)
        self.used = False

    def _wait_and_run(self) -> None:
        code = 0
        try:
            for read_end, _ in self._pipes:
                os.close(read_end)
            chunks = []
            while chunk := os.read(self._request_r, READ_SIZE):
                chunks.append(chunk)
            if not chunks:
                code = 0  # cancelled
            else:
                request = json.loads(b"".join(chunks))
                if request.get("title"):
                    with contextlib.suppress(Exception):
                        import setproctitle

                        setproctitle.setproctitle(request["title"])
                spec = Spec.model_validate(request["spec"])
                (_, out_w), (_, err_w), (_, res_w) = self._pipes
                _run_function_child(spec, request["env"], out_w, err_w, res_w, ())
        except BaseException:
            code = 1
        os._exit(code)

    def launch(
        self, spec: Spec, *, env: dict[str, str], sink: ChunkSink | None, title: str = ""
    ) -> Target:
        """Hand the spec over; the zygote becomes the target (a child of this process)."""
        self.used = True
        request = json.dumps(
            {"spec": spec.model_dump(mode="json"), "env": env, "title": title}
        ).encode()
        view = memoryview(request)
        while view:
            view = view[os.write(self._request_w, view) :]
        os.close(self._request_w)
        (out_r, _), (err_r, _), (res_r, _) = self._pipes
        return _function_target(self.pid, out_r, err_r, res_r, sink)

    def cancel(self) -> None:
        """Let an unused zygote exit, and reap it."""
        if self.used:
            return
        self.used = True
        for fd in (self._request_w, *(read_end for read_end, _ in self._pipes)):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _run_function_child(
    spec: Spec, env: dict[str, str], out_w: int, err_w: int, res_w: int, parent_fds: tuple[int, ...]
) -> None:
    code = 0
    try:
        os.setsid()
        for fd in parent_fds:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        # Keep nothing of the task process: no broker connection, no other descriptor.
        os.closerange(3, res_w)
        os.closerange(res_w + 1, 65536)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.environ.update(env)
        os.environ.update(spec.env)
        if spec.cwd:
            os.chdir(spec.cwd)
        import sys

        sys.stdin = open(0, closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        if "" not in sys.path:
            sys.path.insert(0, "")
        cwd = os.getcwd()
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        report: dict[str, Any] = {}
        func: Callable[..., Any] | None = None
        try:
            func = load_function(str(spec.function_target))
        except Exception as exc:  # the message names the module or function; no traceback
            report, code = {"error": str(exc)}, 1
        try:
            if func is not None:
                value = func(*spec.args, **spec.kwargs)
                try:
                    report = {"value": json.loads(json.dumps(value))}
                except (TypeError, ValueError):
                    report = {"value": repr(value)}
        except BaseException as exc:  # report everything, SystemExit included
            tb = traceback.format_exc()
            sys.stderr.write(tb)
            report = {"error": f"{type(exc).__name__}: {exc}", "traceback": tb}
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        data = json.dumps(report).encode()
        view = memoryview(data)
        while view:
            written = os.write(res_w, view)
            view = view[written:]
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def load_function(target: str) -> Callable[..., Any]:
    """Import ``module:function``; errors name what is missing."""
    import importlib

    module_name, _, func_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"cannot import module {module_name!r}: {exc}") from exc
    func = getattr(module, func_name, None)
    if func is None:
        raise AttributeError(f"module {module_name!r} has no function {func_name!r}")
    if not callable(func):
        raise TypeError(f"{target} is not callable")
    return func  # type: ignore[no-any-return]


def describe_exit(return_code: int) -> str:
    if return_code < 0:
        try:
            name = signal.Signals(-return_code).name
        except ValueError:
            name = f"signal {-return_code}"
        return f"killed by {name}"
    return f"exited with code {return_code}"
