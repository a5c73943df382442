"""Resource limits and metrics through the real CLI: memory, open files, connections, the CPU
ceiling, and the metrics in ``weft status``. Margins are wide: the machine is shared (2 cores).

Every target carries a unique marker in its argv, and each test checks that no process with
its marker is left running.
"""

from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Weft
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(90)

# Grows by 10 MB every 20 ms up to 300 MB, saying on stderr when (and how much) it holds.
GROW = textwrap.dedent(
    """
    import sys, time
    chunks = []
    for i in range(30):
        chunks.append(b"x" * (10 << 20))
        sys.stderr.write(f"{time.time()} {len(chunks) * 10}\\n")
        sys.stderr.flush()
        time.sleep(0.02)
    print("survived")
    """
)

BUSY = textwrap.dedent(
    """
    import sys, time
    end = time.time() + float(sys.argv[1])
    while time.time() < end:
        pass
    print("finished")
    """
)


def _marker() -> str:
    return f"weft-limits-{uuid.uuid4().hex[:12]}"


def _alive_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(proc.info.get("cmdline") or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def marker() -> Any:
    tag = _marker()
    yield tag
    wait_for(lambda: not _alive_with(tag), timeout=10, what=f"no process left with {tag}")


def _events(weft: Weft, tid: str) -> list[dict[str, Any]]:
    peeked = weft("queue", "peek", "weft.tasks.log", "--all", "--json")
    assert peeked.returncode == 0, peeked.stderr
    out = []
    for line in peeked.stdout.splitlines():
        event = json.loads(json.loads(line)["message"])
        if event.get("tid") == tid:
            out.append(event)
    return out


def _run_json(weft: Weft, *args: str, timeout: float = 60) -> tuple[int, dict[str, Any]]:
    done = weft("run", "--json", *args, timeout=timeout)
    assert done.stdout.strip(), done.stderr
    return done.returncode, json.loads(done.stdout)


def _spec_file(project: Path, argv: list[str], **limits: int) -> Path:
    path = project / f"spec-{uuid.uuid4().hex[:8]}.json"
    spec = {"spec": {"type": "command", "process_target": argv, "limits": limits}}
    path.write_text(json.dumps(spec))
    return path


def _violation(weft: Weft, tid: str) -> dict[str, Any]:
    events = _events(weft, tid)
    final = events[-1]
    assert final["event"] == "work_limit_violation", [e["event"] for e in events]
    assert final["status"] == "failed"
    assert final["return_code"] == 137
    assert isinstance(final.get("metrics"), dict)
    assert sum(e["event"] == "work_limit_violation" for e in events) == 1
    return final


def test_memory_limit_stops_the_task_before_it_doubles(
    weft: Weft, project: Path, marker: str
) -> None:
    code, result = _run_json(
        weft, "--memory", "100", sys.executable, "-c", GROW, marker, timeout=60
    )
    assert code == 137
    assert result["status"] == "failed"
    assert result["return_code"] == 137
    assert result["error"].startswith("memory limit exceeded: ")
    assert "survived" not in (result.get("output") or "")

    event = _violation(weft, result["tid"])
    print(f"memory violation: {event['error']} ({event['metrics']})")
    assert event["limit"] == "memory_mb"
    assert event["threshold"] == 100
    # Seen above the limit, but stopped well before 200 MB (it grows 500 MB/s).
    assert 100 < event["value"] < 200, event
    assert event["error"] == result["error"]
    assert event["metrics"]["peak_memory_mb"] >= event["value"] - 1

    # Stopped within a second of crossing: the first moment it held ~100 MB (plus the
    # interpreter's ~10 MB) is on its stderr; the violation event comes after the kill.
    progress = [line.split() for line in result.get("stderr", "").splitlines()]
    crossed = [float(t) for t, mb in progress if int(mb) >= 90]
    assert crossed, result.get("stderr")
    print(f"killed {event['timestamp'] / 1e9 - crossed[0]:.3f} s after it held 90 MB")
    assert event["timestamp"] / 1e9 - crossed[0] < 1.0
    assert max(int(mb) for _, mb in progress) < 200


def test_memory_is_summed_over_the_process_tree(weft: Weft, project: Path, marker: str) -> None:
    # Two children of 60 MB each: neither alone crosses 100 MB, together they do.
    hold = "import time; b = b'x' * (60 << 20); time.sleep(20)"
    script = f'{sys.executable} -c "{hold}" {marker} & {sys.executable} -c "{hold}" {marker}; wait'
    code, result = _run_json(weft, "--memory", "100", "bash", "-c", script, marker, timeout=60)
    assert code == 137, result
    event = _violation(weft, result["tid"])
    assert event["limit"] == "memory_mb"
    assert event["value"] > 100
    assert event["metrics"].get("peak_processes", 0) >= 2


def test_open_files_limit(weft: Weft, project: Path, marker: str) -> None:
    opener = textwrap.dedent(
        """
        import time
        files = []
        for i in range(300):
            files.append(open("/dev/null"))
            time.sleep(0.005)
        print("survived")
        """
    )
    spec = _spec_file(project, [sys.executable, "-c", opener, marker], max_fds=50)
    code, result = _run_json(weft, "--spec", str(spec))
    assert code == 137
    assert result["status"] == "failed"
    assert result["error"].startswith("open files limit exceeded: ")
    event = _violation(weft, result["tid"])
    assert event["limit"] == "max_fds"
    assert 50 < event["value"] < 300
    assert event["metrics"]["peak_open_files"] >= event["value"]


def test_connections_limit(weft: Weft, project: Path, marker: str) -> None:
    connector = textwrap.dedent(
        """
        import socket, time
        server = socket.create_server(("127.0.0.1", 0))
        port = server.getsockname()[1]
        held = []
        for i in range(40):
            held.append(socket.create_connection(("127.0.0.1", port)))
            held.append(server.accept()[0])
            time.sleep(0.02)
        print("survived")
        """
    )
    spec = _spec_file(project, [sys.executable, "-c", connector, marker], max_connections=10)
    code, result = _run_json(weft, "--spec", str(spec))
    assert code == 137, result
    assert result["error"].startswith("connections limit exceeded: ")
    event = _violation(weft, result["tid"])
    assert event["limit"] == "max_connections"
    assert 10 < event["value"] < 81


def test_cpu_ceiling_holds_a_busy_loop_and_lets_it_finish(
    weft: Weft, project: Path, marker: str
) -> None:
    code, result = _run_json(weft, "--cpu", "25", sys.executable, "-c", BUSY, "5", marker)
    assert code == 0, result
    assert result["status"] == "completed"
    assert result["output"] == "finished\n"

    record = json.loads(weft("status", result["tid"], "--json").stdout)
    metrics = record["metrics"]
    fraction = metrics["cpu_seconds"] / metrics["wall_seconds"]
    print(f"cpu fraction under --cpu 25: {fraction:.3f} ({metrics})")
    assert 0.15 <= fraction <= 0.35, metrics
    assert metrics["wall_seconds"] >= 5
    # How long it was held depends on how much CPU a busy machine would have given it anyway.
    assert metrics["cpu_throttled_seconds"] >= 0, metrics


def test_metrics_in_status_for_a_task_without_limits(
    weft: Weft, project: Path, marker: str
) -> None:
    work = "import time; b = b'x' * (50 << 20); time.sleep(1.5); print('ok')"
    code, result = _run_json(weft, sys.executable, "-c", work, marker)
    assert code == 0, result
    tid = result["tid"]

    as_json = weft("status", tid, "--json")
    assert as_json.returncode == 0, as_json.stderr
    metrics = json.loads(as_json.stdout)["metrics"]
    for key in ("peak_memory_mb", "cpu_seconds", "wall_seconds", "peak_open_files"):
        assert key in metrics, metrics
    assert 50 <= metrics["peak_memory_mb"] < 200
    assert 1.5 <= metrics["wall_seconds"] < 30
    assert 0 < metrics["cpu_seconds"] < metrics["wall_seconds"]
    assert metrics["peak_open_files"] >= 3
    assert 0 <= metrics["monitor_cpu_seconds"] < 0.1
    assert metrics["monitor_polls"] >= 2

    final = _events(weft, tid)[-1]
    assert final["event"] == "work_completed"
    assert final["metrics"] == metrics

    text = weft("status", tid)
    assert text.returncode == 0, text.stderr
    assert "Peak memory" in text.stdout


def test_monitor_poll_cost_is_small() -> None:
    import subprocess

    from weft.monitor import poll_cost

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", _marker()])
    try:
        cost = poll_cost(proc.pid, samples=50)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    print(f"monitor poll cost: {cost * 1e6:.0f} us")
    assert 0 < cost < 0.005
