"""The benchmark script runs end to end (tiny N) and writes every row; no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "run.py"

ROWS = {
    "warm_run",
    "nowait_run",
    "status",
    "cold_run",
    "throughput_command",
    "throughput_function",
    "task_uss",
    "manager_rss",
    "manager_idle_cpu",
    "mcp_round_trip",
    "queue_throughput",
    "status_large",
    "cold_run_large",
}


def test_benchmark_smoke(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WEFT_", "BROKER_"))}
    env["TMPDIR"] = str(tmp_path)  # its projects live under this test's directory
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--json-out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    rows = {row["key"]: row for row in report["rows"]}
    assert set(rows) >= ROWS
    for key, row in rows.items():
        # Measured, or (MCP only, before weft_mcp exists) skipped with a reason; never broken.
        assert row["status"] in ("ok", "skipped"), (key, row["note"])
        if row["status"] == "ok":
            assert isinstance(row["value"], (int, float)), key
        else:
            assert key == "mcp_round_trip" and row["note"], (key, row)
        if row["target"] is not None and row["status"] == "ok":
            assert isinstance(row["pass"], bool), key
    assert report["processes_left"] == []
    assert {"nproc", "cpu_model", "ram_gb", "python"} <= set(report["machine"])
    assert "median/value" in proc.stdout  # the table was printed
