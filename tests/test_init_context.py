"""Projects: ``weft init``, discovery from below, --context / WEFT_CONTEXT, auto-creation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Weft
from weft.client import WeftClient
from weft.context import find_root, init_project, load_context
from weft.errors import UsageError


def test_init_creates_the_project_layout(weft: Weft, workdir: Path) -> None:
    result = weft("init")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Initialized weft in .weft/"
    weft_dir = workdir / ".weft"
    for sub in ("outputs", "logs", "autostart"):
        assert (weft_dir / sub).is_dir()
    assert (weft_dir / "broker.db").is_file()
    assert json.loads((weft_dir / "config.json").read_text())["backend"] == "sqlite"


def test_init_no_autostart_skips_the_autostart_dir(weft: Weft, workdir: Path) -> None:
    result = weft("init", "--no-autostart")
    assert result.returncode == 0, result.stderr
    assert (workdir / ".weft" / "broker.db").is_file()
    assert not (workdir / ".weft" / "autostart").exists()


def test_reinit_exits_0_and_loses_nothing(weft: Weft, project: Path) -> None:
    assert weft("queue", "write", "keep.me", "precious").returncode == 0
    template = project / ".weft" / "autostart" / "monitor.json"
    template.write_text('{"name": "m"}')
    config = (project / ".weft" / "config.json").read_text()

    again = weft("init")
    assert again.returncode == 0, again.stderr
    assert "already initialized" in again.stdout
    assert template.read_text() == '{"name": "m"}'
    assert (project / ".weft" / "config.json").read_text() == config
    assert weft("queue", "read", "keep.me").stdout == "precious\n"


def test_commands_find_the_project_from_a_subdirectory(weft: Weft, project: Path) -> None:
    deep = project / "src" / "pkg"
    deep.mkdir(parents=True)
    assert weft("queue", "write", "jobs", "from-below", cwd=deep).returncode == 0
    assert not (deep / ".weft").exists()
    assert not (project / "src" / ".weft").exists()
    assert weft("queue", "peek", "jobs").stdout == "from-below\n"


def test_init_below_an_existing_project_creates_nothing(weft: Weft, project: Path) -> None:
    sub = project / "sub"
    sub.mkdir()
    result = weft("init", cwd=sub)
    assert result.returncode == 0, result.stderr
    assert "Already inside the weft project" in result.stdout
    assert str(project) in result.stdout or ".weft/" in result.stdout
    assert not (sub / ".weft").exists()


def test_context_option_and_env_point_at_another_project(
    weft: Weft, workdir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    other.mkdir()
    assert weft("--context", str(other), "init").returncode == 0
    assert (other / ".weft").is_dir()

    assert weft("--context", str(other), "queue", "write", "q", "via-option").returncode == 0
    assert weft("-C", str(other / ".weft"), "queue", "write", "q", "via-weft-dir").returncode == 0
    assert not (workdir / ".weft").exists()

    peeked = weft("queue", "peek", "q", "--all", env={"WEFT_CONTEXT": str(other)})
    assert peeked.returncode == 0, peeked.stderr
    assert peeked.stdout.splitlines() == ["via-option", "via-weft-dir"]
    assert not (workdir / ".weft").exists()


@pytest.mark.parametrize("how", ["option", "env"])
def test_missing_context_dir_is_a_usage_error_and_creates_nothing(
    weft: Weft, workdir: Path, tmp_path: Path, how: str
) -> None:
    missing = tmp_path / "does-not-exist"
    if how == "option":
        result = weft("--context", str(missing), "queue", "write", "q", "x")
    else:
        result = weft("queue", "write", "q", "x", env={"WEFT_CONTEXT": str(missing)})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not missing.exists()
    assert not (workdir / ".weft").exists()


def test_a_command_without_a_project_creates_one_here_and_says_so(
    weft: Weft, workdir: Path
) -> None:
    first = weft("queue", "write", "q", "hello")
    assert first.returncode == 0
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "created a new project" in lines[0]
    assert str(workdir / ".weft") in lines[0]
    assert (workdir / ".weft" / "broker.db").is_file()

    second = weft("queue", "read", "q")
    assert second.returncode == 0
    assert second.stderr == ""
    assert second.stdout == "hello\n"


def test_context_dir_without_a_project_gets_one(weft: Weft, workdir: Path, tmp_path: Path) -> None:
    other = tmp_path / "fresh"
    other.mkdir()
    result = weft("--context", str(other), "queue", "write", "q", "x")
    assert result.returncode == 0
    assert "created a new project" in result.stderr
    assert (other / ".weft").is_dir()
    assert not (workdir / ".weft").exists()


# -- the Python API ----------------------------------------------------------------------


def test_init_project_reports_creation_once(tmp_path: Path) -> None:
    ctx, created = init_project(tmp_path)
    assert created
    assert ctx.root == tmp_path.resolve()
    _, again = init_project(tmp_path)
    assert not again
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert find_root(tmp_path / "a" / "b") == tmp_path.resolve()


def test_load_context_without_create_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WEFT_CONTEXT", raising=False)
    with pytest.raises(UsageError, match="weft init"):
        load_context(create=False)
    assert not (tmp_path / ".weft").exists()


def test_client_open_with_explicit_context(tmp_path: Path) -> None:
    init_project(tmp_path)
    with WeftClient.open(tmp_path) as client:
        assert client.ctx.root == tmp_path.resolve()
        client.queue.write("q", "x")
        assert [m.body for m in client.queue.peek("q")] == ["x"]
