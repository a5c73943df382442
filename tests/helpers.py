"""Small helpers for tests: polling with a deadline (never a bare sleep as synchronisation)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def log_events(root: Path, tid: str | None = None) -> list[dict[str, Any]]:
    """The task log read straight from the database file (independent of Weft's reader)."""
    db = sqlite3.connect(root / ".weft" / "broker.db")
    try:
        rows = db.execute(
            "SELECT body FROM messages WHERE queue = 'weft.tasks.log' ORDER BY ts"
        ).fetchall()
    finally:
        db.close()
    found = [json.loads(body) for (body,) in rows]
    return [e for e in found if tid is None or e["tid"] == tid]


def queue_bodies(root: Path, queue: str) -> list[str]:
    db = sqlite3.connect(root / ".weft" / "broker.db")
    try:
        rows = db.execute(
            "SELECT body FROM messages WHERE queue = ? AND claimed = 0 ORDER BY ts", (queue,)
        ).fetchall()
    finally:
        db.close()
    return [body for (body,) in rows]
