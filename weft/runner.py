"""Executing a target: a command (exec) or a Python function (fork), as its own session.

The target always runs in a process of its own, as the leader of a new session, so that the
task process can watch, pause, time out and end its whole process tree, and a crash of the
target never takes the task process with it. A command is the task process's child; a
function is forked by the task process's ``FunctionForker`` (or, if that helper is gone, by
the task process itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
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


@dataclass(frozen=True)
class FunctionCall:
    """What a function's process needs, as plain data (it crosses a pipe as JSON)."""

    target: str  # module:function
    args: list[Any]
    kwargs: dict[str, Any]
    env: dict[str, str]  # the task's variables, then the spec's
    cwd: str | None = None

    @classmethod
    def of(cls, spec: Spec, env: dict[str, str]) -> FunctionCall:
        return cls(
            str(spec.function_target),
            list(spec.args),
            dict(spec.kwargs),
            {**env, **spec.env},
            spec.cwd,
        )


def start_function(call: FunctionCall, *, sink: ChunkSink | None) -> Target:
    """Fork this process to run ``call``. The caller must hold no broker connection: SQLite
    state must not cross a fork (a function that uses Weft would hang on inherited locks)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        _run_function_child(call, out_w, err_w, res_w, (out_r, err_r, res_r))
    for fd in (out_w, err_w, res_w):
        os.close(fd)
    return _function_target(Target(pid=pid), out_r, err_r, res_r, sink)


def _function_target(
    target: Target, out_r: int, err_r: int, res_r: int, sink: ChunkSink | None
) -> Target:
    """A running function's Target: its output pipes and its result pipe, being read."""
    target.readers = [
        _Reader(out_r, "stdout", sink),
        _Reader(err_r, "stderr", sink),
        _Reader(res_r, "result", None),
    ]
    for reader in target.readers:
        reader.start()
    return target


_HEADER = struct.Struct("!I")  # a request's length
_PID = struct.Struct("!q")
_STATUS = struct.Struct("!i")  # a raw wait status, as os.waitpid gives it


class FunctionForker:
    """A small process that forks function targets for its task process.

    A function runs in a fresh fork, and that fork must not come from a process that holds a
    broker connection (SQLite state must not cross a fork). The task process could close its
    connection around every fork, but a fork also makes every page of its memory
    copy-on-write: its next milliseconds of work are spent copying pages back. So the task
    process forks this helper once, before it opens the broker, and asks it for each
    function: the helper stays small and clean, and the task process never forks again.

    Protocol on a socket pair: the task process sends a request (length, then JSON) with the
    write ends of the function's stdout, stderr and result pipes attached; the helper forks,
    answers with the child's PID and, when the child has exited, its wait status. One
    function at a time. End-of-file on the socket ends the helper.
    """

    def __init__(self, title: str = "") -> None:
        ours, theirs = socket.socketpair()
        self.pid = os.fork()
        if self.pid == 0:  # the helper: never returns
            ours.close()
            self._serve(theirs, title)
        theirs.close()
        self.sock = ours

    # -- the task process's side ------------------------------------------------------

    def launch(self, call: FunctionCall, *, sink: ChunkSink | None, title: str = "") -> Target:
        """Start ``call`` in a fresh fork of the helper; OSError if the helper is gone."""
        body = json.dumps(
            {
                "call": {
                    "target": call.target,
                    "args": call.args,
                    "kwargs": call.kwargs,
                    "env": call.env,
                    "cwd": call.cwd,
                },
                "title": title,
            }
        ).encode()
        pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, result
        try:
            socket.send_fds(self.sock, [_HEADER.pack(len(body))], [w for _, w in pipes])
            self.sock.sendall(body)
            pid = _PID.unpack(_recv_exactly(self.sock, _PID.size))[0]
        except BaseException:
            for r, _ in pipes:
                os.close(r)
            raise
        finally:
            for _, w in pipes:
                os.close(w)
        target = _ForkedTarget(pid=pid, status_sock=self.sock)
        (out_r, _), (err_r, _), (res_r, _) = pipes
        return _function_target(target, out_r, err_r, res_r, sink)

    def close(self) -> None:
        """End the helper (once its current function, if any, has exited) and reap it."""
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)

    # -- the helper's side ------------------------------------------------------------

    @staticmethod
    def _serve(sock: socket.socket, title: str) -> None:
        code = 0
        try:
            _retitle(title)
            while True:
                try:
                    header, fds, _, _ = socket.recv_fds(sock, _HEADER.size, 3)
                except OSError:
                    break
                if not header:
                    break  # the task process is done with us
                header += _recv_exactly(sock, _HEADER.size - len(header))
                request = json.loads(_recv_exactly(sock, _HEADER.unpack(header)[0]))
                out_w, err_w, res_w = fds
                pid = os.fork()
                if pid == 0:
                    sock.close()
                    _retitle(request.get("title") or "")
                    call = FunctionCall(**request["call"])
                    _run_function_child(call, out_w, err_w, res_w, ())
                for fd in fds:
                    os.close(fd)
                sock.sendall(_PID.pack(pid))
                _, status = os.waitpid(pid, 0)
                sock.sendall(_STATUS.pack(status))
        except BaseException:
            code = 1
        os._exit(code)


def _retitle(title: str) -> None:
    if title:
        with contextlib.suppress(Exception):
            import setproctitle

            setproctitle.setproctitle(title)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, READ_SIZE))
        if not chunk:
            raise EOFError("the function helper went away")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


@dataclass
class _ForkedTarget(Target):
    """A function started by a ``FunctionForker``: not our child, so its exit status comes
    from the helper (which reaps it) rather than from waitpid."""

    status_sock: socket.socket | None = None

    def wait(self, timeout: float) -> int | None:
        if self._status is not None:
            return self._status
        assert self.status_sock is not None
        ready, _, _ = select.select([self.status_sock], [], [], max(0.0, timeout))
        if not ready:
            return None
        try:
            status = _STATUS.unpack(_recv_exactly(self.status_sock, _STATUS.size))[0]
            self._status = os.waitstatus_to_exitcode(status)
        except (EOFError, OSError):  # the helper died: the function's fate is unknown
            self._status = -signal.SIGKILL
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return self._status


def _run_function_child(
    call: FunctionCall, out_w: int, err_w: int, res_w: int, parent_fds: tuple[int, ...]
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
        if res_w < 3:  # keep it clear of the standard descriptors
            res_w = os.dup(res_w)
        # Keep nothing of the task process: no broker connection, no other descriptor.
        os.closerange(3, res_w)
        os.closerange(res_w + 1, 65536)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.environ.update(call.env)
        if call.cwd:
            os.chdir(call.cwd)
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
            func = load_function(call.target)
        except Exception as exc:  # the message names the module or function; no traceback
            report, code = {"error": str(exc)}, 1
        try:
            if func is not None:
                value = func(*call.args, **call.kwargs)
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
