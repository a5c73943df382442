"""Manager liveness in ``weft.workers.registry``: one message per live manager.

A manager registers with its PID and host, refreshes a heartbeat, and deregisters on exit.
Anyone can tell whether a registered manager is alive: on this host by looking at the
process itself (its title starts with ``weft-``), elsewhere by the heartbeat's age: a
manager on another host is dead once it missed ``STALE_BEATS`` of its own heartbeats (each
entry records its interval, so hosts with different ``WEFT_HEARTBEAT_SECONDS`` agree).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from weft import queues

if TYPE_CHECKING:
    from weft.broker import Broker


def _heartbeat_seconds() -> float:
    raw = os.environ.get("WEFT_HEARTBEAT_SECONDS", "").strip()
    try:
        value = float(raw) if raw else 5.0
    except ValueError:
        return 5.0
    return value if value > 0 else 5.0


HEARTBEAT_SECONDS = _heartbeat_seconds()  # WEFT_HEARTBEAT_SECONDS; tests make it short
STALE_BEATS = 4  # a remote manager is dead after missing this many heartbeats
STALE_AFTER = STALE_BEATS * HEARTBEAT_SECONDS


def host_name() -> str:
    """This host's name as Weft records it (``WEFT_HOST`` overrides, e.g. in tests)."""
    return os.environ.get("WEFT_HOST") or socket.gethostname()


def pid_is_weft(pid: int, role: str = "") -> bool:
    """Whether ``pid`` is alive here and is a Weft process (not a recycled PID).

    Weft processes carry titles ``weft-{context}-{short_tid}:{name}:{status}``; ``role``
    narrows the check to one name (e.g. ``manager``).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    if not cmdline:  # a zombie: exited, not yet reaped
        return False
    if not cmdline.startswith(b"weft-"):
        return False
    return not role or f":{role}:".encode() in cmdline


@dataclass
class ManagerEntry:
    message_id: int
    manager_id: str
    pid: int
    host: str
    started: int
    heartbeat: int
    idle_timeout: float
    context: str
    heartbeat_seconds: float = HEARTBEAT_SECONDS

    @classmethod
    def parse(cls, message_id: int, body: str) -> ManagerEntry | None:
        try:
            data = json.loads(body)
            return cls(
                message_id=message_id,
                manager_id=str(data["manager_id"]),
                pid=int(data["pid"]),
                host=str(data["host"]),
                started=int(data["started"]),
                heartbeat=int(data["heartbeat"]),
                idle_timeout=float(data.get("idle_timeout", 0)),
                context=str(data.get("context", "")),
                heartbeat_seconds=float(data.get("heartbeat_seconds") or HEARTBEAT_SECONDS),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def _fields(self) -> dict[str, Any]:
        return {
            "manager_id": self.manager_id,
            "pid": self.pid,
            "host": self.host,
            "started": self.started,
            "heartbeat": self.heartbeat,
            "idle_timeout": self.idle_timeout,
            "context": self.context,
            "heartbeat_seconds": self.heartbeat_seconds,
        }

    def body(self) -> str:
        return json.dumps(self._fields())

    @property
    def stale_after(self) -> float:
        """Seconds without a heartbeat after which a manager elsewhere counts as dead."""
        return STALE_BEATS * max(self.heartbeat_seconds, 0.05)

    def is_alive(self) -> bool:
        if self.host == host_name():
            return pid_is_weft(self.pid, "manager")
        return time.time_ns() - self.heartbeat < self.stale_after * 1e9

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._fields(),
            "heartbeat_age": round(max(0, time.time_ns() - self.heartbeat) / 1e9, 3),
            "alive": self.is_alive(),
        }


def entries(broker: Broker) -> list[ManagerEntry]:
    """Registered managers of this project.

    An entry from this host whose project directory is another one is not ours: it came
    with a ``weft load`` of another project's dump, and its PID may be that project's live
    manager. Such entries are left out (and removed by the next manager's recovery).
    """
    here, root = host_name(), str(broker.ctx.root)
    found = []
    for message in broker.peek_many(queues.WORKERS_REGISTRY, 1000):
        entry = ManagerEntry.parse(message.id, message.body)
        if entry is None:
            continue
        if entry.host == here and entry.context and entry.context != root:
            continue
        found.append(entry)
    return found


def foreign_entries(broker: Broker) -> list[int]:
    """Message IDs of registry entries copied in from another project on this host."""
    here, root = host_name(), str(broker.ctx.root)
    ids = []
    for message in broker.peek_many(queues.WORKERS_REGISTRY, 1000):
        entry = ManagerEntry.parse(message.id, message.body)
        if entry is not None and entry.host == here and entry.context and entry.context != root:
            ids.append(message.id)
    return ids


def live_entries(broker: Broker) -> list[ManagerEntry]:
    return [e for e in entries(broker) if e.is_alive()]


def local_manager(broker: Broker) -> ManagerEntry | None:
    """The live manager of this project on this host, if any."""
    here = host_name()
    for entry in entries(broker):
        if entry.host == here and entry.is_alive():
            return entry
    return None
