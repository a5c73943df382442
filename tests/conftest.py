"""Shared fixtures: a fresh project per test, the real CLI as a subprocess, and a leak check."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parent.parent


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEFT_", "BROKER_"))}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["HOME"] = str(tmp)
    return env


class Weft:
    """Runs ``weft`` as a user would: a subprocess in a working directory."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd = cwd
        self.env = env

    def __call__(
        self,
        *args: str,
        input: str | bytes | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**self.env, **(env or {})}
        text_input = input.decode() if isinstance(input, bytes) else input
        return subprocess.run(
            [sys.executable, "-m", "weft", *args],
            cwd=cwd or self.cwd,
            env=full_env,
            input=text_input if text_input is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *python_args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
        """``python *python_args`` in the background with this runner's environment, its
        output piped (e.g. ``start("-m", "weft", "status", "--watch")``)."""
        return subprocess.Popen(
            [sys.executable, *python_args],
            cwd=cwd or self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "proj"
    d.mkdir()
    return d


@pytest.fixture
def weft(workdir: Path, tmp_path: Path) -> Iterator[Weft]:
    """The CLI in an empty directory (no project yet). Stops any manager it started."""
    runner = Weft(workdir, _clean_env(tmp_path))
    yield runner
    _stop_managers(workdir)


@pytest.fixture
def project(weft: Weft, workdir: Path) -> Path:
    """An initialised project directory."""
    result = weft("init")
    assert result.returncode == 0, result.stderr
    return workdir


def _stop_managers(root: Path) -> None:
    """End every process that belongs to this test's project (manager and tasks)."""
    marker = str(root)
    victims = []
    for proc in psutil.process_iter(["pid", "environ", "cmdline", "cwd"]):
        try:
            env = proc.info.get("environ") or {}
            if (
                env.get("WEFT_CONTEXT", "").startswith(marker)
                or (
                    (proc.info.get("cwd") or "").startswith(marker)
                    and "weft" in " ".join(proc.info.get("cmdline") or [])
                )
            ) and proc.pid != os.getpid():
                victims.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    if not victims:
        return
    stop = subprocess.run(
        [sys.executable, "-m", "weft", "--context", str(root), "manager", "stop"],
        env=_clean_env(root),
        capture_output=True,
        timeout=30,
    )
    del stop
    _, alive = psutil.wait_procs(victims, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


def weft_processes() -> list[psutil.Process]:
    """Weft processes still alive on this machine that a test started (by their title)."""
    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            title = " ".join(proc.info.get("cmdline") or [])
            if title.startswith("weft-") and proc.pid != os.getpid():
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_leaked_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The suite ends with no Weft process of its own (a project under its temp dir) running."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    import time

    def ours() -> list[psutil.Process]:
        """Weft processes (titled ``weft-``; setproctitle hides their environment) working
        in a project of this run, and task targets whose environment names one."""
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if proc.pid == os.getpid():
                continue
            try:
                title = " ".join(proc.info.get("cmdline") or [])
                if title.startswith("weft-"):
                    if proc.cwd().startswith(base):
                        found.append(proc)
                elif proc.environ().get("WEFT_CONTEXT", "").startswith(base):
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    deadline = time.monotonic() + 15
    leaked = ours()
    while leaked and time.monotonic() < deadline:
        time.sleep(0.1)
        leaked = ours()
    names = [" ".join(p.cmdline()).strip() for p in leaked]
    for proc in leaked:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    assert not names, f"the test suite left Weft processes running: {names}"
