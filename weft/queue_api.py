"""Direct queue access: the Python API behind ``weft queue ...`` (and the MCP queue tools).

Every operation takes a queue name or ``@alias``. Names are checked here, before anything is
stored, so a bad name is a ``UsageError`` naming the rule and nothing is written. Reading or
peeking an empty queue raises ``EmptyQueueError`` (exit 2). Message IDs are SimpleBroker's
19-digit, time-ordered IDs.

    api = WeftClient.open().queue
    api.write("jobs", "data.csv")
    for msg in api.read("jobs", all=True):
        print(msg.id, msg.body)
"""

from __future__ import annotations

import builtins
import json
import re
import time
import warnings
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from weft.broker import Broker
from weft.errors import EmptyQueueError, NotFoundError, UsageError, WeftError

MAX_NAME_LENGTH = 512
NAME_RULE = (
    "use letters, digits, '.', '_' and '-', not starting with '.' or '-', "
    f"at most {MAX_NAME_LENGTH} characters"
)
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
INTERNAL_PREFIX = "weft."
_BATCH = 1000


@dataclass(frozen=True)
class QueueMessage:
    """One message as it left (or sits in) a queue."""

    id: int
    queue: str
    body: str

    def to_dict(self) -> dict[str, str]:
        """The ``--json`` form: the ID as a 19-digit string (JSON numbers lose precision)."""
        return {"id": f"{self.id:019d}", "queue": self.queue, "message": self.body}


def check_name(name: str, *, what: str = "queue name") -> str:
    """Return ``name`` if it is a valid queue name, else raise ``UsageError`` naming the rule."""
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise UsageError(f"invalid {what} {name!r}: {NAME_RULE}")
    return name


def _broker_error(exc: Exception) -> WeftError:
    """A SimpleBroker ValueError (bad pattern, alias rule, size) as a one-line Weft error."""
    text = str(exc).strip() or exc.__class__.__name__
    if isinstance(exc, ValueError):
        return UsageError(text)
    return WeftError(f"broker error: {text}")


class QueueAPI:
    """Queue operations on one project's broker. Obtain it as ``WeftClient.queue``."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    # -- names ---------------------------------------------------------------------------

    def resolve(self, queue: str) -> str:
        """The real queue behind ``queue``: itself, or the target of ``@alias``."""
        if queue.startswith("@"):
            check_name(queue[1:], what="alias name")
            return self._broker.resolve_alias(queue)
        return check_name(queue)

    # -- messages ------------------------------------------------------------------------

    def write(self, queue: str, body: str) -> int:
        """Append ``body`` to ``queue``; returns the new message's ID."""
        return self._broker.write(self.resolve(queue), body)

    def read(self, queue: str, *, all: bool = False) -> list[QueueMessage]:
        """Remove and return the oldest message (or every message with ``all``)."""
        name = self.resolve(queue)
        if not all:
            one = self._broker.read_one(name)
            got = [] if one is None else [one]
        else:
            got = []
            while batch := self._broker.read_many(name, _BATCH):
                got.extend(batch)
                if len(batch) < _BATCH:
                    break
        if not got:
            raise EmptyQueueError(f"queue {name!r} is empty")
        return [QueueMessage(m.id, name, m.body) for m in got]

    def peek(
        self, queue: str, *, all: bool = False, limit: int | None = None
    ) -> list[QueueMessage]:
        """Return the oldest message (every message with ``all``, or up to ``limit``)
        without removing it."""
        name = self.resolve(queue)
        if limit is not None and not all:
            got = self._broker.peek_many(name, max(1, limit))
        elif all:
            got = list(self._broker.peek_all(name))
        else:
            one = self._broker.peek_one(name)
            got = [] if one is None else [one]
        if not got:
            raise EmptyQueueError(f"queue {name!r} is empty")
        return [QueueMessage(m.id, name, m.body) for m in got]

    def move(self, source: str, dest: str, *, all: bool = False) -> list[QueueMessage]:
        """Move the oldest message (or all) from ``source`` to ``dest``, keeping IDs.

        Returns the moved messages, named by their new queue.
        """
        src, dst = self.resolve(source), self.resolve(dest)
        if src == dst:
            raise UsageError(f"source and destination are the same queue {src!r}")
        handle = self._broker.queue(src)
        moved: list[tuple[str, int]] = []
        try:
            if all:
                while batch := handle.move_many(dst, _BATCH, with_timestamps=True):
                    moved.extend(batch)
                    if len(batch) < _BATCH:
                        break
            elif (one := handle.move_one(dst, with_timestamps=True)) is not None:
                moved.append(one)
        except ValueError as exc:
            raise _broker_error(exc) from exc
        if not moved:
            raise EmptyQueueError(f"queue {src!r} is empty")
        return [QueueMessage(int(ts), dst, body) for body, ts in moved]

    def list(self, pattern: str | None = None) -> list[tuple[str, int]]:
        """Queues holding messages, as ``(name, pending)`` sorted by name; ``pattern`` is a glob."""
        try:
            return sorted(self._broker.list_queues(pattern or None))
        except ValueError as exc:
            raise UsageError(f"invalid pattern {pattern!r}: {NAME_RULE} (plus * ? [])") from exc

    def broadcast(self, body: str, pattern: str | None = None) -> int:
        """Write ``body`` to every queue matching the glob ``pattern``; returns how many.

        Weft's own queues (``weft.*``: spawn requests, the state log, the registry; and each
        task's ``T{tid}.*`` queues) are reached only by a pattern that names them, e.g.
        ``weft.*`` or ``T*.ctrl_in``; a pattern like ``*`` or ``w*`` skips them.
        """
        from fnmatch import fnmatchcase

        from weft.queues import is_task_queue

        names = [name for name, _ in self.list(pattern)]

        def internal(name: str) -> bool:
            return name.startswith(INTERNAL_PREFIX) or is_task_queue(name)

        def named(name: str) -> bool:
            prefix = "weft." if name.startswith(INTERNAL_PREFIX) else "T"
            head = (pattern or "").split("*", 1)[0]
            return bool(pattern) and head.startswith(prefix) and fnmatchcase(name, pattern or "")

        names = [n for n in names if not internal(n) or named(n)]
        if not names:
            return 0
        try:
            with self._broker.connection() as conn:
                return int(conn.broadcast(body, queue_names=names))
        except ValueError as exc:
            raise _broker_error(exc) from exc

    def watch(
        self,
        queue: str,
        *,
        peek: bool = False,
        timeout: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> Generator[QueueMessage, None, None]:
        """Yield the queue's messages, then each new one as it arrives.

        Consumes them (one at a time, so nothing is claimed that was not handed over) unless
        ``peek``. Ends when ``timeout`` seconds pass with no new message, when ``stop()``
        returns true (checked at least every 0.2 s), or when the caller closes the iterator.
        Wakes on database activity, not on a fixed sleep.
        """
        name = self.resolve(queue)
        waiter = self._broker.waiter([name])
        last_seen: int | None = None
        idle_since = time.monotonic()
        try:
            while stop is None or not stop():
                if peek:
                    got = self._broker.peek_many(name, 100, after=last_seen)
                else:
                    one = self._broker.read_one(name)
                    got = [] if one is None else [one]
                if got:
                    for message in got:
                        last_seen = message.id
                        yield QueueMessage(message.id, name, message.body)
                    idle_since = time.monotonic()
                    continue
                wait = 0.2
                if timeout is not None:
                    left = timeout - (time.monotonic() - idle_since)
                    if left <= 0:
                        return
                    wait = min(wait, left)
                waiter.wait(wait)
        finally:
            waiter.close()

    # -- aliases -------------------------------------------------------------------------

    def alias_add(self, alias: str, target: str) -> None:
        """Make ``@alias`` name ``target`` (a leading ``@`` on ``alias`` is optional)."""
        alias = check_name(alias.removeprefix("@"), what="alias name")
        if target.startswith("@"):
            raise UsageError(f"alias target {target!r} must be a queue name, not another alias")
        check_name(target)
        existing = dict(self._broker.aliases())
        if alias in existing:
            raise WeftError(
                f"alias {alias!r} already points to {existing[alias]!r}: remove it first"
            )
        try:
            with warnings.catch_warnings():
                # SimpleBroker warns when a queue of the alias's name holds messages; with the
                # '@' sigil the two never collide, so the warning is only noise here.
                warnings.simplefilter("ignore")
                self._broker.add_alias(alias, target)
        except ValueError as exc:
            raise WeftError(f"cannot add alias {alias!r}: {exc}") from exc

    def alias_remove(self, alias: str) -> None:
        alias = check_name(alias.removeprefix("@"), what="alias name")
        if not self._broker.remove_alias(alias):
            raise NotFoundError(f"no alias named {alias!r} (see 'weft queue alias list')")

    def alias_list(self, target: str | None = None) -> builtins.list[tuple[str, str]]:
        """``(alias, target)`` pairs sorted by alias, optionally only those naming ``target``."""
        pairs = sorted(self._broker.aliases())
        if target is not None:
            wanted = self.resolve(target)
            pairs = [(a, t) for a, t in pairs if t == wanted]
        return pairs

    # -- the whole database --------------------------------------------------------------

    def dump(self) -> Iterator[str]:
        """Every queue, message (with its ID) and alias, as SimpleBroker dump JSON lines."""
        return self._broker.dump()

    def load(self, source: TextIO) -> tuple[int, int]:
        """Load dump lines from ``source``; returns (messages, aliases) loaded.

        Every line is checked before anything is stored, so a bad line raises ``WeftError``
        naming it and the project is unchanged. Message IDs are kept exactly.
        """
        if not source.seekable():  # a pipe: spool it so it can be read twice
            import shutil
            import tempfile

            with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
                shutil.copyfileobj(source, spool)
                spool.seek(0)
                return self.load(spool)
        start = source.tell()
        _check_dump(source, set(dict(self._broker.aliases())))
        source.seek(start)
        try:
            result = self._broker.load(source)
        except ValueError as exc:
            raise WeftError(f"bad dump: {exc}") from exc
        except Exception as exc:
            if "unique" in str(exc).lower() or exc.__class__.__name__ == "IntegrityError":
                raise WeftError(
                    "the dump holds message IDs this project already has (loaded twice?); "
                    "load into a fresh project: 'weft init' in an empty directory"
                ) from exc
            raise
        return int(result.messages), int(result.aliases)


def _check_dump(lines: Iterator[str] | TextIO, existing_aliases: set[str]) -> None:
    """Raise ``WeftError`` naming the first line that ``weft load`` could not apply."""
    last_ts: int | None = None
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue

        def bad(problem: str, number: int = number) -> WeftError:
            return WeftError(f"line {number} of the dump: {problem}; nothing was loaded")

        try:
            record: Any = json.loads(line)
        except ValueError as exc:
            raise bad(f"not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(record, dict):
            raise bad("not a JSON object")
        kind = record.get("type")
        if last_ts is None:
            if kind != "header" or record.get("format") != "simplebroker-dump":
                raise bad("the first line must be a simplebroker-dump header (from 'weft dump')")
            if record.get("version") != 1:
                raise bad(f"unsupported dump version {record.get('version')!r} (supported: 1)")
            last_ts = _message_id(record.get("last_ts"))
            if last_ts is None:
                raise bad("the header's last_ts is not a message ID")
        elif kind == "alias":
            alias, target = record.get("alias"), record.get("target")
            if not isinstance(alias, str) or not isinstance(target, str):
                raise bad("an alias record needs string 'alias' and 'target'")
            for name in (alias, target):
                if not _NAME.fullmatch(name):
                    raise bad(f"invalid name {name!r}: {NAME_RULE}")
            if alias in existing_aliases:
                raise bad(f"alias {alias!r} already exists in this project")
            existing_aliases.add(alias)
        elif kind == "message":
            queue, body = record.get("queue"), record.get("body")
            if not isinstance(queue, str) or not isinstance(body, str):
                raise bad("a message record needs string 'queue' and 'body'")
            if not _NAME.fullmatch(queue) or len(queue) > MAX_NAME_LENGTH:
                raise bad(f"invalid queue name {queue!r}: {NAME_RULE}")
            message_id = _message_id(record.get("id"))
            if message_id is None or message_id == 0:
                raise bad(f"'id' {record.get('id')!r} is not a 19-digit message ID")
            if message_id > last_ts:
                raise bad("message id is newer than the header's last_ts")
        elif kind == "header":
            raise bad("a second header")
        else:
            raise bad(f"unknown record type {kind!r}")
    if last_ts is None:
        raise WeftError(
            "the input is empty or not a weft dump (no header line); nothing was loaded"
        )


def _message_id(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 2**63 - 1 else None
    if isinstance(value, str) and len(value) == 19 and value.isdigit():
        number = int(value)
        return number if number < 2**63 - 1 else None
    return None
