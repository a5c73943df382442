"""QueueAPI: the Python side of direct queue access, on a real broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from weft.client import WeftClient
from weft.context import init_project
from weft.errors import EmptyQueueError, NotFoundError, UsageError, WeftError
from weft.queue_api import QueueAPI, QueueMessage


@pytest.fixture
def root(tmp_path: Path) -> Path:
    init_project(tmp_path)
    return tmp_path


@pytest.fixture
def api(root: Path) -> Iterator[QueueAPI]:
    with WeftClient.open(root) as client:
        yield client.queue


def test_write_then_read_in_order_with_ids(api: QueueAPI) -> None:
    ids = [api.write("jobs", body) for body in ("a", "b", "c")]
    assert ids == sorted(ids)
    assert all(len(str(i)) == 19 for i in ids)
    first = api.read("jobs")
    assert first == [QueueMessage(ids[0], "jobs", "a")]
    assert first[0].to_dict() == {"id": str(ids[0]), "queue": "jobs", "message": "a"}
    rest = api.read("jobs", all=True)
    assert [(m.id, m.body) for m in rest] == [(ids[1], "b"), (ids[2], "c")]
    with pytest.raises(EmptyQueueError) as info:
        api.read("jobs")
    assert info.value.exit_code == 2
    assert "'jobs' is empty" in str(info.value)


def test_read_all_crosses_batch_boundaries(api: QueueAPI, root: Path) -> None:
    with WeftClient.open(root) as other:
        for i in range(1005):
            other.queue.write("many", str(i))
    got = api.read("many", all=True)
    assert [m.body for m in got] == [str(i) for i in range(1005)]


def test_peek_leaves_messages_in_place(api: QueueAPI) -> None:
    api.write("q", "one")
    api.write("q", "two")
    assert [m.body for m in api.peek("q")] == ["one"]
    assert [m.body for m in api.peek("q", all=True)] == ["one", "two"]
    assert [m.body for m in api.read("q", all=True)] == ["one", "two"]
    with pytest.raises(EmptyQueueError):
        api.peek("q", all=True)


def test_bodies_keep_unicode_and_newlines(api: QueueAPI) -> None:
    body = "line one\nline two — ünïcode ✓\n"
    api.write("q", body)
    assert api.read("q")[0].body == body


@pytest.mark.parametrize("bad", ["", "has space", ".hidden", "-dash", "slash/name", "x" * 513])
def test_invalid_queue_names_are_usage_errors_and_nothing_is_written(
    api: QueueAPI, bad: str
) -> None:
    with pytest.raises(UsageError, match="invalid queue name") as info:
        api.write(bad, "x")
    assert "letters, digits" in str(info.value)
    assert info.value.exit_code == 2
    with pytest.raises(UsageError):
        api.read(bad)
    with pytest.raises(UsageError):
        api.peek(bad)
    with pytest.raises(UsageError):
        api.move(bad, "ok")
    assert api.list() == []


def test_move_keeps_ids_and_reports_the_new_queue(api: QueueAPI) -> None:
    ids = [api.write("src", b) for b in ("a", "b", "c")]
    one = api.move("src", "dst")
    assert one == [QueueMessage(ids[0], "dst", "a")]
    rest = api.move("src", "dst", all=True)
    assert [m.id for m in rest] == ids[1:]
    assert [m.id for m in api.peek("dst", all=True)] == ids
    with pytest.raises(EmptyQueueError):
        api.move("src", "dst")
    with pytest.raises(UsageError, match="same queue"):
        api.move("dst", "dst")


def test_list_shows_pending_counts_and_filters_by_glob(api: QueueAPI) -> None:
    for name, n in (("jobs.a", 2), ("jobs.b", 1), ("other", 3)):
        for i in range(n):
            api.write(name, str(i))
    assert api.list() == [("jobs.a", 2), ("jobs.b", 1), ("other", 3)]
    assert api.list("jobs.*") == [("jobs.a", 2), ("jobs.b", 1)]
    assert api.list("*.b") == [("jobs.b", 1)]
    assert api.list("nothing*") == []
    api.read("jobs.b")
    assert api.list("jobs.*") == [("jobs.a", 2)]


def test_broadcast_skips_weft_internal_queues_unless_named(api: QueueAPI) -> None:
    api.write("a", "x")
    api.write("b.inbox", "x")
    api.write("weft.tasks.log", "{}")
    assert api.broadcast("hello") == 2
    assert [m.body for m in api.peek("a", all=True)] == ["x", "hello"]
    assert [m.body for m in api.peek("b.inbox", all=True)] == ["x", "hello"]
    assert [m.body for m in api.peek("weft.tasks.log", all=True)] == ["{}"]
    assert api.broadcast("only-inboxes", "*.inbox") == 1
    assert api.peek("b.inbox", all=True)[-1].body == "only-inboxes"
    assert api.broadcast("none", "zzz*") == 0


def test_aliases_resolve_with_the_at_sign(api: QueueAPI) -> None:
    api.alias_add("work", "jobs")
    api.alias_add("@results", "T1837025672140161024.outbox")
    assert api.alias_list() == [("results", "T1837025672140161024.outbox"), ("work", "jobs")]
    assert api.alias_list(target="jobs") == [("work", "jobs")]
    assert api.alias_list(target="@work") == [("work", "jobs")]

    api.write("@work", "via alias")
    assert api.peek("jobs")[0].body == "via alias"
    got = api.read("@work")
    assert got[0].queue == "jobs"
    assert api.resolve("work") == "work"  # a plain name is always the literal queue

    api.alias_remove("@work")
    assert api.alias_list() == [("results", "T1837025672140161024.outbox")]
    with pytest.raises(NotFoundError, match="no alias named 'work'"):
        api.write("@work", "x")
    with pytest.raises(NotFoundError):
        api.alias_remove("work")


def test_alias_errors(api: QueueAPI) -> None:
    api.alias_add("work", "jobs")
    with pytest.raises(WeftError, match="already points to 'jobs'") as dup:
        api.alias_add("work", "other")
    assert dup.value.exit_code == 1
    with pytest.raises(UsageError, match="not another alias"):
        api.alias_add("w2", "@work")
    with pytest.raises(UsageError, match="invalid alias name"):
        api.alias_add("bad name", "jobs")
    with pytest.raises(UsageError, match="invalid queue name"):
        api.alias_add("ok", "bad name")
    with pytest.raises(WeftError):
        api.alias_add("self", "self")
    assert api.alias_list() == [("work", "jobs")]


def test_watch_yields_existing_then_new_messages(api: QueueAPI, root: Path) -> None:
    api.write("feed", "old")
    release = threading.Event()

    def producer() -> None:
        release.wait(10)
        with WeftClient.open(root) as other:
            other.queue.write("feed", "new1")
            other.queue.write("feed", "new2")

    thread = threading.Thread(target=producer)
    thread.start()
    got: list[str] = []
    deadline = time.monotonic() + 10
    watcher = api.watch("feed", timeout=10)
    for message in watcher:
        got.append(message.body)
        release.set()
        if len(got) == 3 or time.monotonic() > deadline:
            break
    watcher.close()
    thread.join(10)
    assert got == ["old", "new1", "new2"]
    with pytest.raises(EmptyQueueError):
        api.peek("feed")


def test_watch_peek_does_not_consume_and_ends_on_timeout(api: QueueAPI) -> None:
    api.write("feed", "a")
    api.write("feed", "b")
    started = time.monotonic()
    got = [m.body for m in api.watch("feed", peek=True, timeout=0.3)]
    assert got == ["a", "b"]
    assert time.monotonic() - started < 5
    assert [m.body for m in api.peek("feed", all=True)] == ["a", "b"]


def test_watch_stops_when_asked(api: QueueAPI) -> None:
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    assert list(api.watch("quiet", stop=stop)) == []


def test_watch_validates_the_name(api: QueueAPI) -> None:
    with pytest.raises(UsageError):
        next(api.watch("bad name"))
