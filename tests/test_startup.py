"""Start-up is a feature: the everyday commands do not load the heavy modules.

``python -X importtime`` lists every module a command imports; the ones below cost tens of
milliseconds each and belong only to the commands (or processes) that need them. Modules the
interpreter's own start-up already loads here (``site`` and its ``.pth`` files) are not held
against Weft.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Weft

HEAVY = ("pydantic", "psutil", "mcp", "rich", "importlib.metadata", "email")


def _imported(weft: Weft, *args: str) -> set[str]:
    r = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=weft.cwd,
        env=weft.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode in (0, 2), r.stderr  # 2: an empty queue
    lines = [line.split("|")[-1].strip() for line in r.stderr.splitlines() if "|" in line]
    return {name for name in lines if name and not name.startswith("import time")}


def _heavy(names: set[str]) -> set[str]:
    return {n for n in names if any(n == h or n.startswith(h + ".") for h in HEAVY)}


@pytest.mark.parametrize(
    "command",
    [
        ("queue", "write", "inbox", "hello"),
        ("queue", "read", "inbox"),
        ("run", "--no-wait", "true"),
        ("status",),
    ],
    ids=lambda c: " ".join(c),
)
def test_everyday_commands_skip_heavy_imports(
    weft: Weft, project: Path, command: tuple[str, ...]
) -> None:
    baseline = _imported(weft, "-c", "pass")
    loaded = _heavy(_imported(weft, "-m", "weft", *command) - baseline)
    assert not loaded, f"weft {' '.join(command)} imported {sorted(loaded)}"
