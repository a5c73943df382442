"""``weft dump`` / ``weft load``: a fresh project gets every queue, message, ID and alias."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Weft

BODIES = {
    "jobs": ["a", "multi\nline", "ünïcode ✓", '{"json": true}'],
    "T1837025672140161024.outbox": ["result"],
    "weft.tasks.log": ['{"event": "task_initialized"}'],
}


def _fill(weft: Weft) -> None:
    for queue, bodies in BODIES.items():
        for body in bodies:
            assert weft("queue", "write", queue, "-", input=body).returncode == 0
    assert weft("queue", "alias", "add", "work", "jobs").returncode == 0


def _snapshot(weft: Weft, cwd: Path) -> dict[str, Any]:
    """Every queue's messages (with IDs) and every alias, as the CLI shows them."""
    listed = weft("queue", "list", "--json", cwd=cwd)
    queues = [json.loads(line)["queue"] for line in listed.stdout.splitlines()]
    messages = {
        q: [
            json.loads(line)
            for line in weft("queue", "peek", q, "--all", "--json", cwd=cwd).stdout.splitlines()
        ]
        for q in queues
    }
    aliases = weft("queue", "alias", "list", cwd=cwd).stdout
    return {"messages": messages, "aliases": aliases}


def _fresh(weft: Weft, tmp_path: Path, name: str = "restored") -> Path:
    target = tmp_path / name
    target.mkdir()
    assert weft("init", cwd=target).returncode == 0
    return target


def test_dump_then_load_reproduces_everything(weft: Weft, project: Path, tmp_path: Path) -> None:
    _fill(weft)
    before = _snapshot(weft, project)
    assert sorted(before["messages"]) == sorted(BODIES)

    dumped = weft("dump")
    assert dumped.returncode == 0, dumped.stderr
    records = [json.loads(line) for line in dumped.stdout.splitlines()]
    assert records[0]["type"] == "header"
    assert sum(r["type"] == "message" for r in records) == sum(map(len, BODIES.values()))

    restored = _fresh(weft, tmp_path)
    loaded = weft("load", cwd=restored, input=dumped.stdout)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout == "Loaded 6 messages and 1 alias\n"
    assert _snapshot(weft, restored) == before

    # The copy is a working project: new IDs come after the loaded ones.
    newest = max(int(m["id"]) for ms in before["messages"].values() for m in ms)
    new = json.loads(weft("queue", "write", "jobs", "later", "--json", cwd=restored).stdout)
    assert int(new["id"]) > newest
    assert weft("queue", "read", "@work", cwd=restored).stdout == "a\n"


def test_dump_to_a_file_and_load_from_a_file(weft: Weft, project: Path, tmp_path: Path) -> None:
    _fill(weft)
    backup = tmp_path / "backup.jsonl"
    result = weft("dump", "-o", str(backup))
    assert (result.returncode, result.stdout) == (0, "")
    assert backup.read_text() == weft("dump").stdout

    restored = _fresh(weft, tmp_path)
    assert weft("load", "-i", str(backup), cwd=restored).returncode == 0
    assert _snapshot(weft, restored) == _snapshot(weft, project)


def test_load_creates_the_project_when_there_is_none(
    weft: Weft, project: Path, tmp_path: Path
) -> None:
    _fill(weft)
    dump = weft("dump").stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    result = weft("load", cwd=empty, input=dump)
    assert result.returncode == 0
    assert "created a new project" in result.stderr
    assert _snapshot(weft, empty) == _snapshot(weft, project)


def test_a_bad_line_names_it_and_loads_nothing(weft: Weft, project: Path, tmp_path: Path) -> None:
    _fill(weft)
    lines = weft("dump").stdout.splitlines()
    lines.insert(3, '{"type": "message", "queue": "jobs", "body": "x"')  # truncated JSON
    restored = _fresh(weft, tmp_path)

    result = weft("load", cwd=restored, input="\n".join(lines) + "\n")
    assert result.returncode == 1
    stderr = result.stderr.strip().splitlines()
    assert len(stderr) == 1
    assert "line 4" in stderr[0] and "not valid JSON" in stderr[0]
    assert "Traceback" not in result.stderr
    assert weft("queue", "list", cwd=restored).stdout == ""
    assert weft("queue", "alias", "list", cwd=restored).stdout == ""


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "no header"),
        ('{"type": "message", "queue": "q", "body": "x", "id": "1"}\n', "line 1"),
        ("not json at all\n", "line 1"),
        (
            "HEADER\n" + '{"type": "message", "queue": "bad name", "body": "x", "id": "ID"}\n',
            "line 2",
        ),
        ("HEADER\n" + '{"type": "message", "queue": "q", "body": "x", "id": "12"}\n', "line 2"),
        ("HEADER\n" + '{"type": "nonsense"}\n', "line 2"),
    ],
)
def test_bad_dumps_are_one_line_errors(
    weft: Weft, project: Path, tmp_path: Path, text: str, fragment: str
) -> None:
    header = json.loads(weft("dump").stdout.splitlines()[0])
    header["last_ts"] = "1999999999999999999"
    text = text.replace("HEADER", json.dumps(header)).replace("ID", "1837025672140161024")
    result = weft("load", input=text)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert fragment in result.stderr
    assert weft("queue", "list").stdout == ""


def test_loading_the_same_dump_twice_is_refused(weft: Weft, project: Path, tmp_path: Path) -> None:
    weft("queue", "write", "jobs", "once")
    dump = weft("dump").stdout
    restored = _fresh(weft, tmp_path)
    assert weft("load", cwd=restored, input=dump).returncode == 0
    again = weft("load", cwd=restored, input=dump)
    assert again.returncode == 1
    assert "fresh project" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    assert weft("queue", "peek", "jobs", "--all", cwd=restored).stdout == "once\n"


def test_dump_needs_an_existing_project(weft: Weft, workdir: Path) -> None:
    result = weft("dump")
    assert result.returncode == 2
    assert "weft init" in result.stderr
    assert not (workdir / ".weft").exists()


def test_dump_to_an_unwritable_place_is_one_line(weft: Weft, project: Path) -> None:
    result = weft("dump", "-o", str(project / "no" / "such" / "dir" / "x.jsonl"))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot write" in result.stderr
