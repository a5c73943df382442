"""``weft queue ...`` as a user types it: the real CLI in a subprocess."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Weft


def _json_lines(text: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in text.splitlines()]


def test_write_read_peek_plain(weft: Weft, project: Path) -> None:
    write = weft("queue", "write", "jobs", "first")
    assert (write.returncode, write.stdout, write.stderr) == (0, "", "")
    assert weft("queue", "write", "jobs", "second").returncode == 0

    assert weft("queue", "peek", "jobs").stdout == "first\n"
    assert weft("queue", "peek", "jobs", "--all").stdout == "first\nsecond\n"
    read = weft("queue", "read", "jobs")
    assert (read.returncode, read.stdout) == (0, "first\n")
    assert weft("queue", "read", "jobs", "--all").stdout == "second\n"


def test_json_output_has_id_queue_and_message(weft: Weft, project: Path) -> None:
    written = weft("queue", "write", "jobs", "hello world", "--json")
    assert written.returncode == 0
    record = json.loads(written.stdout)
    assert record["queue"] == "jobs"
    assert isinstance(record["id"], str) and len(record["id"]) == 19 and record["id"].isdigit()
    weft("queue", "write", "jobs", "two")

    peeked = _json_lines(weft("queue", "peek", "jobs", "--all", "--json").stdout)
    assert [p["message"] for p in peeked] == ["hello world", "two"]
    assert peeked[0] == {"id": record["id"], "queue": "jobs", "message": "hello world"}

    read = _json_lines(weft("queue", "read", "jobs", "--json").stdout)
    assert read == [peeked[0]]


def test_write_dash_reads_the_message_from_stdin(weft: Weft, project: Path) -> None:
    assert weft("queue", "write", "q", "-", input="from stdin\n").returncode == 0
    body = "multi\nline — ✓"
    assert weft("queue", "write", "q", "-", input=body).returncode == 0
    got = _json_lines(weft("queue", "read", "q", "--all", "--json").stdout)
    assert [g["message"] for g in got] == ["from stdin", body]


def test_empty_queue_exits_2_with_one_line(weft: Weft, project: Path) -> None:
    for command in (("read", "nothing"), ("peek", "nothing"), ("read", "nothing", "--all")):
        result = weft("queue", *command)
        assert result.returncode == 2, command
        assert result.stdout == ""
        assert result.stderr.strip() == "weft: queue 'nothing' is empty"


@pytest.mark.parametrize("bad", ["bad name", ".hidden", "-x", "a/b"])
def test_invalid_queue_name_is_a_usage_error_and_writes_nothing(
    weft: Weft, project: Path, bad: str
) -> None:
    result = weft("queue", "write", "--", bad, "x")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "invalid queue name" in lines[0] and "letters, digits" in lines[0]
    assert "Traceback" not in result.stderr
    assert weft("queue", "list").stdout == ""


def test_a_missing_argument_is_a_usage_error(weft: Weft, project: Path) -> None:
    result = weft("queue", "write", "only-queue")
    assert result.returncode == 2
    assert "MESSAGE" in result.stderr


def test_move_one_and_all_keeps_ids(weft: Weft, project: Path) -> None:
    for body in ("a", "b", "c"):
        weft("queue", "write", "src", body)
    before = _json_lines(weft("queue", "peek", "src", "--all", "--json").stdout)

    moved = weft("queue", "move", "src", "dst")
    assert (moved.returncode, moved.stdout) == (0, "a\n")
    moved_all = weft("queue", "move", "src", "dst", "--all", "--json")
    assert [m["queue"] for m in _json_lines(moved_all.stdout)] == ["dst", "dst"]

    after = _json_lines(weft("queue", "peek", "dst", "--all", "--json").stdout)
    assert [a["id"] for a in after] == [b["id"] for b in before]
    assert [a["message"] for a in after] == ["a", "b", "c"]

    empty = weft("queue", "move", "src", "dst")
    assert empty.returncode == 2
    assert "'src' is empty" in empty.stderr


def test_list_with_pattern_and_json(weft: Weft, project: Path) -> None:
    for name in ("jobs.a", "jobs.a", "jobs.b", "logs"):
        weft("queue", "write", name, "x")
    assert weft("queue", "list").stdout == "jobs.a\t2\njobs.b\t1\nlogs\t1\n"
    assert weft("queue", "list", "--pattern", "jobs.*").stdout == "jobs.a\t2\njobs.b\t1\n"
    listed = _json_lines(weft("queue", "list", "--pattern", "*s", "--json").stdout)
    assert listed == [{"queue": "logs", "pending": 1}]
    assert weft("queue", "list", "--pattern", "none*").stdout == ""


def test_broadcast_to_all_and_to_a_pattern(weft: Weft, project: Path) -> None:
    for name in ("w1.inbox", "w2.inbox", "other"):
        weft("queue", "write", name, "start")
    result = weft("queue", "broadcast", "stop")
    assert (result.returncode, result.stdout) == (0, "Broadcast to 3 queues\n")
    assert weft("queue", "read", "other", "--all").stdout == "start\nstop\n"

    narrowed = weft("queue", "broadcast", "only", "--pattern", "*.inbox")
    assert narrowed.stdout == "Broadcast to 2 queues\n"
    assert weft("queue", "peek", "w1.inbox", "--all").stdout == "start\nstop\nonly\n"


def test_aliases_add_list_use_remove(weft: Weft, project: Path) -> None:
    assert weft("queue", "alias", "add", "work", "jobs").returncode == 0
    assert weft("queue", "alias", "add", "res", "T1837025672140161024.outbox").returncode == 0
    listed = weft("queue", "alias", "list")
    assert listed.stdout == "@res\tT1837025672140161024.outbox\n@work\tjobs\n"
    assert weft("queue", "alias", "list", "--target", "jobs").stdout == "@work\tjobs\n"

    assert weft("queue", "write", "@work", "through alias").returncode == 0
    assert weft("queue", "peek", "jobs").stdout == "through alias\n"
    read = _json_lines(weft("queue", "read", "@work", "--json").stdout)
    assert read[0]["queue"] == "jobs"

    assert weft("queue", "alias", "remove", "work").returncode == 0
    gone = weft("queue", "write", "@work", "x")
    assert gone.returncode == 2
    assert "no alias named 'work'" in gone.stderr

    missing = weft("queue", "alias", "remove", "work")
    assert missing.returncode == 2
    duplicate = weft("queue", "alias", "add", "res", "elsewhere")
    assert duplicate.returncode == 1
    assert len(duplicate.stderr.strip().splitlines()) == 1


def test_help_teaches_with_examples(weft: Weft) -> None:
    result = weft("queue", "--help")
    assert result.returncode == 0
    assert "weft queue write jobs" in result.stdout
    for command in ("read", "write", "peek", "move", "list", "watch", "broadcast", "alias"):
        assert command in result.stdout


# -- watch -------------------------------------------------------------------------------


class _Lines:
    """Reads a process's stdout on a thread so the test can wait with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._queue: queue.Queue[str] = queue.Queue()
        assert proc.stdout is not None
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self._queue.put(line)

        threading.Thread(target=pump, daemon=True).start()

    def take(self, count: int, timeout: float = 15) -> list[str]:
        deadline = time.monotonic() + timeout
        got: list[str] = []
        while len(got) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                got.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return got


def _start_watch(weft: Weft, project: Path, *args: str) -> subprocess.Popen[str]:
    return weft.start("-m", "weft", "queue", "watch", *args, cwd=project)


def _interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    return proc.returncode, proc.stderr.read()


def test_watch_follows_new_messages_until_sigint(weft: Weft, project: Path) -> None:
    weft("queue", "write", "feed", "before")
    proc = _start_watch(weft, project, "feed", "--json")
    try:
        lines = _Lines(proc)
        first = lines.take(1)
        assert [json.loads(x)["message"] for x in first] == ["before"]
        weft("queue", "write", "feed", "after-1")
        weft("queue", "write", "feed", "after-2")
        more = [json.loads(x) for x in lines.take(2)]
        assert [m["message"] for m in more] == ["after-1", "after-2"]
        assert all(m["queue"] == "feed" and len(m["id"]) == 19 for m in more)
    finally:
        code, stderr = _interrupt(proc)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert weft("queue", "read", "feed").returncode == 2  # consumed


def test_watch_peek_leaves_messages(weft: Weft, project: Path) -> None:
    weft("queue", "write", "feed", "one")
    proc = _start_watch(weft, project, "feed", "--peek")
    try:
        lines = _Lines(proc)
        assert lines.take(1) == ["one\n"]
        weft("queue", "write", "feed", "two")
        assert lines.take(1) == ["two\n"]
    finally:
        code, stderr = _interrupt(proc)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert weft("queue", "peek", "feed", "--all").stdout == "one\ntwo\n"


def test_watch_an_invalid_name_exits_2(weft: Weft, project: Path) -> None:
    result = weft("queue", "watch", "bad name")
    assert result.returncode == 2
    assert "invalid queue name" in result.stderr
