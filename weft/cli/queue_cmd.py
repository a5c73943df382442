"""``weft queue ...``: direct queue access. Parsing and printing only; the work is QueueAPI's.

Imports stay light (typer and weft's small modules): a queue write must start fast.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING

import typer

from weft.cli import common
from weft.cli.common import handle_errors
from weft.errors import UsageError

if TYPE_CHECKING:
    from weft.queue_api import QueueMessage

QUEUE_HELP = """Read, write and watch queues directly (the same queues tasks use).

A queue is created by its first write. Names use letters, digits, '.', '_' and '-';
'@name' means the queue an alias points to. Reading an empty queue exits 2.

Examples:

  weft queue write jobs "data.csv"

  echo "from stdin" | weft queue write jobs -

  weft queue peek jobs --all --json

  weft queue read jobs                 # prints and removes the oldest message

  weft queue move jobs jobs.done --all

  weft queue list --pattern "jobs*"

  weft queue watch jobs --json         # follow new messages until Ctrl-C

  weft queue alias add work jobs && weft queue write @work "x"
"""

ALIAS_HELP = """Name a queue by another name: '@ALIAS' then works wherever a queue is expected.

Examples:

  weft queue alias add results T1837025672140161024.outbox

  weft queue read @results

  weft queue alias list --target T1837025672140161024.outbox
"""

queue_app = typer.Typer(name="queue", help=QUEUE_HELP, no_args_is_help=True)
alias_app = typer.Typer(name="alias", help=ALIAS_HELP, no_args_is_help=True)
queue_app.add_typer(alias_app)

QueueArg = typer.Argument(..., metavar="QUEUE", help="Queue name, or @ALIAS.", show_default=False)
JsonOpt = typer.Option(
    False, "--json", help='One JSON object per line: {"id": "...", "queue": ..., "message": ...}.'
)
AllOpt = typer.Option(False, "--all", help="Every message, not just the oldest.")


def register(app: typer.Typer) -> None:
    app.add_typer(queue_app)


def _emit(messages: Iterable[QueueMessage], as_json: bool) -> None:
    for msg in messages:
        if as_json:
            common.print_json(msg.to_dict())
        else:
            sys.stdout.write(msg.body + "\n")
    sys.stdout.flush()


def _message_arg(message: str) -> str:
    if message != "-":
        return message
    try:
        text = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the message on stdin is not valid UTF-8 text") from None
    return text[:-1] if text.endswith("\n") else text


@queue_app.command()
@handle_errors
def write(
    queue: str = QueueArg,
    message: str = typer.Argument(
        ...,
        metavar="MESSAGE",
        help="Message body; '-' reads it from stdin (one trailing newline dropped).",
    ),
    as_json: bool = typer.Option(False, "--json", help='Print {"id": ..., "queue": ...}.'),
) -> None:
    """Append MESSAGE to QUEUE (prints nothing unless --json)."""
    body = _message_arg(message)
    with common.client() as c:
        api = c.queue
        name = api.resolve(queue)
        message_id = api.write(name, body)
    if as_json:
        common.print_json({"id": f"{message_id:019d}", "queue": name})


@queue_app.command()
@handle_errors
def read(queue: str = QueueArg, as_json: bool = JsonOpt, all: bool = AllOpt) -> None:
    """Print and remove the oldest message of QUEUE (exit 2 if empty)."""
    with common.client() as c:
        _emit(c.queue.read(queue, all=all), as_json)


@queue_app.command()
@handle_errors
def peek(queue: str = QueueArg, as_json: bool = JsonOpt, all: bool = AllOpt) -> None:
    """Print the oldest message of QUEUE without removing it (exit 2 if empty)."""
    with common.client() as c:
        _emit(c.queue.peek(queue, all=all), as_json)


@queue_app.command()
@handle_errors
def move(
    source: str = typer.Argument(..., metavar="SOURCE", help="Queue to take from (or @ALIAS)."),
    dest: str = typer.Argument(..., metavar="DEST", help="Queue to append to (or @ALIAS)."),
    all: bool = typer.Option(False, "--all", help="Move every message, not just the oldest."),
    as_json: bool = JsonOpt,
) -> None:
    """Move the oldest message (or --all) from SOURCE to DEST, keeping IDs; prints them."""
    with common.client() as c:
        _emit(c.queue.move(source, dest, all=all), as_json)


@queue_app.command("list")
@handle_errors
def list_(
    pattern: str | None = typer.Option(
        None, "--pattern", "-p", help="Only queues matching this glob, e.g. 'T*.outbox'."
    ),
    as_json: bool = typer.Option(
        False, "--json", help='One {"queue": ..., "pending": N} object per line.'
    ),
) -> None:
    """List queues holding messages, with their counts (NAME<TAB>COUNT)."""
    with common.client() as c:
        queues = c.queue.list(pattern)
    for name, pending in queues:
        if as_json:
            common.print_json({"queue": name, "pending": pending})
        else:
            sys.stdout.write(f"{name}\t{pending}\n")
    sys.stdout.flush()


@queue_app.command()
@handle_errors
def watch(
    queue: str = QueueArg,
    as_json: bool = JsonOpt,
    peek: bool = typer.Option(False, "--peek", help="Show messages without consuming them."),
) -> None:
    """Print QUEUE's messages, then each new one as it arrives, until Ctrl-C.

    Consumes what it prints unless --peek. Stops cleanly (exit 0) on Ctrl-C or SIGTERM.
    """
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    # A flag, not KeyboardInterrupt: a message is never claimed and then dropped half-printed.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with common.client() as c:
            for msg in c.queue.watch(queue, peek=peek, stop=lambda: stopping):
                _emit([msg], as_json)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@queue_app.command()
@handle_errors
def broadcast(
    message: str = typer.Argument(
        ..., metavar="MESSAGE", help="Message body; '-' reads it from stdin."
    ),
    pattern: str | None = typer.Option(
        None, "--pattern", "-p", metavar="GLOB", help="Only queues matching this glob."
    ),
) -> None:
    """Write MESSAGE to every queue holding messages (or matching --pattern).

    Without --pattern, Weft's own weft.* queues are left out.
    """
    body = _message_arg(message)
    with common.client() as c:
        count = c.queue.broadcast(body, pattern)
    print(f"Broadcast to {count} queue{'' if count == 1 else 's'}")


@alias_app.command("add")
@handle_errors
def alias_add(
    alias: str = typer.Argument(..., metavar="ALIAS", help="The new name (used as @ALIAS)."),
    target: str = typer.Argument(..., metavar="TARGET", help="The queue it names."),
) -> None:
    """Make @ALIAS mean TARGET."""
    with common.client() as c:
        c.queue.alias_add(alias, target)


@alias_app.command("remove")
@handle_errors
def alias_remove(
    alias: str = typer.Argument(..., metavar="ALIAS", help="The alias to remove."),
) -> None:
    """Remove an alias (exit 2 if there is none); the queue itself is untouched."""
    with common.client() as c:
        c.queue.alias_remove(alias)


@alias_app.command("list")
@handle_errors
def alias_list(
    target: str | None = typer.Option(
        None, "--target", "-t", metavar="QUEUE", help="Only aliases naming this queue."
    ),
) -> None:
    """List aliases as @ALIAS<TAB>TARGET."""
    with common.client() as c:
        pairs = c.queue.alias_list(target)
    for alias, queue in pairs:
        sys.stdout.write(f"@{alias}\t{queue}\n")
    sys.stdout.flush()
