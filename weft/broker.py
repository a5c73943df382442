"""The thin layer between Weft and SimpleBroker.

Everything Weft stores goes through ``Broker``: it owns this process's persistent queue
handles (one per queue name, all built from the project's one resolved config and target)
and names the few operations the engine needs. A ``Broker`` belongs to one process; a forked
child that touches it gets fresh handles instead of the parent's connections.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from weft.errors import UsageError, WeftError

if TYPE_CHECKING:
    from simplebroker import Queue
    from simplebroker._backend_plugins import ActivityWaiter, BrokerConnection

    from weft.context import WeftContext


@dataclass(frozen=True)
class Message:
    id: int
    body: str


def _queue_error(exc: Exception) -> WeftError:
    from simplebroker._exceptions import MessageError, QueueNameError

    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, QueueNameError):
        return UsageError(text)
    if isinstance(exc, MessageError):
        return UsageError(text)
    return WeftError(f"broker error: {text}")


def _check_queue_name(name: str) -> None:
    from simplebroker.db import _validate_queue_name_cached

    problem = _validate_queue_name_cached(name)
    if problem is not None:
        raise UsageError(f"{problem} (got {name!r})")


def _message(got: Any) -> Message | None:
    return None if got is None else Message(int(got[1]), got[0])


class Broker:
    """Process-local access to a project's queues."""

    def __init__(self, ctx: WeftContext, *, persistent: bool = True) -> None:
        self.ctx = ctx
        self._persistent = persistent
        self._queues: dict[str, Queue] = {}
        self._pid = os.getpid()
        self._lock = threading.Lock()

    # -- handles -------------------------------------------------------------------------

    def queue(self, name: str) -> Queue:
        if self._pid != os.getpid():
            # Handles opened before a fork must not be used (or closed) in the child.
            self._queues = {}
            self._pid = os.getpid()
        handle = self._queues.get(name)
        if handle is not None:
            return handle
        from simplebroker import Queue

        with self._lock:  # one handle per name, even when threads race to create it
            handle = self._queues.get(name)
            if handle is None:
                target = self.ctx.broker_target  # its errors are already one clear line
                try:
                    handle = Queue(
                        name,
                        db_path=target,
                        persistent=self._persistent,
                        config=self.ctx.broker_config,
                    )
                except Exception as exc:
                    raise _queue_error(exc) from exc
                self._queues[name] = handle
        return handle

    def forget(self, name: str) -> None:
        """Drop the cached handle of a queue that will not be used again."""
        with self._lock:
            handle = self._queues.pop(name, None)
        if handle is not None and self._pid == os.getpid():
            handle.close()

    def close(self) -> None:
        with self._lock:
            handles, self._queues = list(self._queues.values()), {}
        if self._pid != os.getpid():
            return
        for handle in handles:
            with suppress(Exception):
                handle.close()

    def __enter__(self) -> Broker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[BrokerConnection]:
        """A raw broker connection for whole-database operations (list, aliases, dump)."""
        from weft.queues import TASKS_LOG

        with self.queue(TASKS_LOG).get_connection() as conn:
            yield conn

    def ensure_created(self) -> None:
        with self.connection() as conn:
            conn.get_meta()

    # -- messages ------------------------------------------------------------------------
    #
    # Every operation names its queue and runs on this process's one broker connection
    # (``connection()``), instead of a Queue object per name: building a Queue costs about
    # a millisecond of CPU, and a task touches eight queues.

    @contextmanager
    def _op(self, *names: str) -> Iterator[BrokerConnection]:
        """The connection, after checking queue names; broker errors become WeftErrors."""
        for name in names:
            _check_queue_name(name)
        try:
            with self.connection() as conn:
                yield conn
        except WeftError:
            raise
        except Exception as exc:
            raise _queue_error(exc) from exc

    def write(self, name: str, body: str) -> int:
        with self._op(name) as conn:
            return int(conn.write(name, body))

    def read_one(self, name: str, *, message_id: int | None = None) -> Message | None:
        with self._op(name) as conn:
            got = conn.claim_one(name, exact_timestamp=message_id, with_timestamps=True)
        return _message(got)

    def read_many(self, name: str, limit: int) -> list[Message]:
        with self._op(name) as conn:
            got = cast(list[tuple[str, int]], conn.claim_many(name, limit, with_timestamps=True))
        return [Message(int(ts), body) for body, ts in got]

    def peek_one(self, name: str, *, message_id: int | None = None) -> Message | None:
        with self._op(name) as conn:
            got = conn.peek_one(name, exact_timestamp=message_id, with_timestamps=True)
        return _message(got)

    def peek_many(self, name: str, limit: int, *, after: int | None = None) -> list[Message]:
        with self._op(name) as conn:
            got = cast(
                list[tuple[str, int]],
                conn.peek_many(name, limit, with_timestamps=True, after_timestamp=after),
            )
        return [Message(int(ts), body) for body, ts in got]

    def peek_all(
        self, name: str, *, after: int | None = None, batch: int = 1000
    ) -> Iterator[Message]:
        """Every message, fetched in batches as the caller goes (it may stop early)."""
        while True:
            messages = self.peek_many(name, batch, after=after)
            yield from messages
            if len(messages) < batch:
                return
            after = messages[-1].id

    def move_one(self, source: str, dest: str, *, message_id: int | None = None) -> Message | None:
        with self._op(source, dest) as conn:
            got = conn.move_one(source, dest, exact_timestamp=message_id, with_timestamps=True)
        return _message(got)

    def move_all(self, source: str, dest: str) -> int:
        moved = 0
        while True:
            with self._op(source, dest) as conn:
                batch = conn.move_many(source, dest, 1000, with_timestamps=True)
            moved += len(batch)
            if len(batch) < 1000:
                return moved

    def delete(self, name: str, message_id: int) -> bool:
        with self._op(name) as conn:
            return bool(conn.delete_message_ids(name, [message_id]))

    def delete_many(self, name: str, message_ids: Sequence[int]) -> int:
        with self._op(name) as conn:
            return int(conn.delete_message_ids(name, list(message_ids)))

    def delete_queue(self, name: str) -> bool:
        with self._op(name) as conn:
            return bool(conn.delete(name))

    def has_messages(self, name: str) -> bool:
        with self._op(name) as conn:
            return bool(conn.has_pending_messages(name))

    def find_ids(
        self, name: str, contains: str, *, limit: int = 100, after: int | None = None
    ) -> list[int]:
        """IDs of messages whose body contains ``contains`` (a scan of the bodies: give
        ``after`` so that only newer messages are read)."""
        with self._op(name) as conn:
            found = conn.find_message_ids(
                name, body_contains=contains, limit=limit, after_timestamp=after
            )
        return [int(i) for i in found]

    # -- whole database ------------------------------------------------------------------

    def list_queues(self, pattern: str | None = None) -> list[tuple[str, int]]:
        """Queues with pending messages, as (name, pending count), sorted by name."""
        with self.connection() as conn:
            stats = conn.list_queue_stats(pattern=pattern) if pattern else conn.list_queue_stats()
        return [(stat.queue, stat.pending) for stat in stats if stat.pending]

    def broadcast(self, body: str, pattern: str | None = None) -> int:
        with self.connection() as conn:
            return int(conn.broadcast(body, pattern=pattern))

    def aliases(self) -> list[tuple[str, str]]:
        with self.connection() as conn:
            return [(str(a), str(t)) for a, t in conn.list_aliases()]

    def add_alias(self, alias: str, target: str) -> None:
        with self.connection() as conn:
            conn.add_alias(alias, target)

    def remove_alias(self, alias: str) -> bool:
        with self.connection() as conn:
            if not conn.has_alias(alias):
                return False
            conn.remove_alias(alias)
            return True

    def resolve_alias(self, name: str) -> str:
        """``@alias`` names a queue through an alias; anything else is a queue name."""
        if not name.startswith("@"):
            return name
        with self.connection() as conn:
            target = conn.resolve_alias(name[1:])
        if target is None:
            from weft.errors import NotFoundError

            raise NotFoundError(f"no alias named {name[1:]!r} (see 'weft queue alias list')")
        return str(target)

    def dump(self) -> Iterator[str]:
        from simplebroker import dump_lines

        with self.connection() as conn:
            yield from dump_lines(conn)

    def load(self, lines: Iterable[str]) -> Any:
        from simplebroker import load_lines

        with self.connection() as conn:
            return load_lines(conn, lines, config=self.ctx.broker_config)

    # -- waiting -------------------------------------------------------------------------

    def waiter(
        self, names: Sequence[str], *, wake_fd: int | None = None, fast_for: float = 0.0
    ) -> Activity:
        return Activity(self, names, wake_fd=wake_fd, fast_for=fast_for)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except (BlockingIOError, InterruptedError):
        pass


class Activity:
    """Wakes a waiting loop when the database changes, without a sleep loop.

    PostgreSQL gives a native waiter (LISTEN/NOTIFY). SQLite has none, so we watch
    ``PRAGMA data_version``, which changes whenever another connection commits: checking
    it is a cheap read, so we check often right after activity and back off when idle.
    """

    MIN_INTERVAL = 0.001
    NATIVE_SLICE = 0.25  # longest native (LISTEN/NOTIFY) wait before looking at the stop flag
    MAX_INTERVAL = float(os.environ.get("WEFT_POLL_MAX_INTERVAL", "0.05"))

    FAST_INTERVAL = 0.004

    def __init__(
        self,
        broker: Broker,
        names: Sequence[str],
        *,
        wake_fd: int | None = None,
        fast_for: float = 0.0,
    ) -> None:
        """``wake_fd``: a pipe whose becoming readable also ends a wait (a signal's wakeup
        fd: the manager is poked by SIGUSR1 when a task is submitted). ``fast_for``: for
        this many seconds, poll at least every FAST_INTERVAL (a client waiting for a result
        that is likely to land soon)."""
        self._wake_fd = wake_fd
        self._fast_until = time.monotonic() + fast_for
        # Woken by a signal, a waiter can afford to look at the database less often.
        self._max_interval = self.MAX_INTERVAL if wake_fd is None else self.MAX_INTERVAL * 4
        self._broker = broker
        self._names = list(names)
        self._stop = threading.Event()
        self._native: ActivityWaiter | None = None
        from weft.queues import TASKS_LOG

        # data_version belongs to the connection, which every handle of this process shares:
        # probe through the handle that always exists rather than build one per waited name
        # (a millisecond of CPU each, and a handle cached for good in a long-lived client).
        self._probe = broker.queue(TASKS_LOG)
        if broker.ctx.backend != "sqlite":
            from simplebroker import create_activity_waiter_for_queues

            handles = [broker.queue(n) for n in self._names]
            self._native = create_activity_waiter_for_queues(handles, stop_event=self._stop)
        self._version = self._data_version()
        self._interval = self.MIN_INTERVAL

    def _data_version(self) -> int | None:
        try:
            return self._probe.get_data_version()
        except Exception:
            return None

    def wait(self, timeout: float) -> bool:
        """Block until something changed (True) or ``timeout`` seconds passed (False)."""
        deadline = time.monotonic() + max(0.0, timeout)
        if self._native is not None:
            # The native waiter sleeps on a condition that our stop event does not wake, so
            # wait in short slices: poke() (e.g. SIGTERM to the manager) then ends a wait
            # within NATIVE_SLICE. Notifications between slices are not lost (it counts them).
            while not self._stop.is_set():
                if self._wake_fd is not None and select.select([self._wake_fd], [], [], 0)[0]:
                    _drain(self._wake_fd)  # a poke (SIGUSR1): keep the pipe from filling up
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self._native.wait(min(remaining, self.NATIVE_SLICE)):
                    return True
            return False
        while True:
            version = self._data_version()
            if version != self._version:
                self._version = version
                self._interval = self.MIN_INTERVAL
                return True
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0 or self._stop.is_set():
                return False
            ceiling = self.FAST_INTERVAL if now < self._fast_until else self._max_interval
            pause = min(self._interval, ceiling, remaining)
            if self._wake_fd is not None:
                ready, _, _ = select.select([self._wake_fd], [], [], pause)
                if ready:
                    _drain(self._wake_fd)
                    self._interval = self.MIN_INTERVAL
                    return True
            else:
                self._stop.wait(pause)
            self._interval = min(self._interval * 2, self._max_interval)

    def poke(self) -> None:
        """Make the next wait return at once (used on shutdown)."""
        self._version = None
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        if self._native is not None:
            self._native.close()
