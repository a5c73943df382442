"""TaskSpec: the seed's example, exact JSON round trips, immutability, one-line errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from weft.errors import UsageError
from weft.taskspec import TaskSpec, parse_taskspec

SEED_EXAMPLE = """
{
  "name": "process-data",
  "spec": {
    "type": "command",
    "process_target": ["python", "process.py"],
    "timeout": 300,
    "limits": {
      "memory_mb": 512,
      "cpu_percent": 75,
      "max_fds": 100
    },
    "env": {"LOG_LEVEL": "debug"},
    "stream_output": true,
    "cleanup_on_exit": true
  },
  "io": {
    "inputs": {"data": "input.queue"},
    "outputs": {"results": "output.queue"}
  },
  "metadata": {
    "tags": ["production", "critical"]
  }
}
"""

SEED_AUTOSTART = """
{
  "name": "queue-monitor",
  "spec": {"type": "function", "function_target": "monitoring.watch_queues", "timeout": null},
  "io": {"inputs": {}, "outputs": {"metrics": "monitoring.queue.metrics"}}
}
"""


def _command(**spec: Any) -> dict[str, Any]:
    return {"spec": {"process_target": ["echo", "hi"], **spec}}


def test_the_seed_example_parses() -> None:
    ts = parse_taskspec(SEED_EXAMPLE)
    assert ts.name == "process-data"
    assert ts.spec.type == "command"
    assert ts.spec.process_target == ("python", "process.py")
    assert ts.spec.timeout == 300
    assert ts.spec.limits.memory_mb == 512
    assert ts.spec.limits.cpu_percent == 75
    assert ts.spec.limits.max_fds == 100
    assert ts.spec.env == {"LOG_LEVEL": "debug"}
    assert ts.spec.stream_output and ts.spec.cleanup_on_exit
    assert ts.io.inputs == {"data": "input.queue"}
    assert ts.io.outputs == {"results": "output.queue"}
    assert ts.metadata.tags == ["production", "critical"]
    assert ts.state.status == "created"


def test_the_seed_autostart_function_spec_parses() -> None:
    ts = parse_taskspec(SEED_AUTOSTART)
    assert ts.spec.type == "function"
    assert ts.spec.function_target == "monitoring:watch_queues"  # the dotted form, normalised
    assert ts.spec.timeout is None


@pytest.mark.parametrize("source", [SEED_EXAMPLE, SEED_AUTOSTART])
def test_json_round_trips_exactly(source: str) -> None:
    ts = parse_taskspec(source)
    text = ts.model_dump_json()
    again = parse_taskspec(text)
    assert again == ts
    assert again.model_dump_json() == text
    assert json.loads(text)["spec"] == json.loads(again.model_dump_json())["spec"]


def test_a_default_name_comes_from_the_target() -> None:
    assert parse_taskspec(_command()).name == "echo"
    assert parse_taskspec({"spec": {"process_target": ["/usr/bin/env", "x"]}}).name == "env"


def test_spec_and_io_cannot_be_changed() -> None:
    ts = parse_taskspec(SEED_EXAMPLE)
    with pytest.raises(AttributeError, match="spec"):
        ts.spec = ts.spec
    with pytest.raises(AttributeError, match="io"):
        ts.io = ts.io
    with pytest.raises(ValidationError):
        ts.spec.timeout = 5
    with pytest.raises(ValidationError):
        ts.spec.limits.memory_mb = 1
    with pytest.raises(ValidationError):
        ts.io.inputs = {}
    assert ts.spec.timeout == 300


def test_spec_containers_cannot_be_changed_in_place() -> None:
    ts = parse_taskspec(SEED_EXAMPLE)
    with pytest.raises(TypeError):
        ts.spec.env["LOG_LEVEL"] = "info"  # type: ignore[index]
    with pytest.raises(TypeError):
        ts.io.outputs["results"] = "!!bad name"  # type: ignore[index]
    with pytest.raises(AttributeError):
        ts.spec.process_target.append("--more")  # type: ignore[union-attr]
    assert TaskSpec.model_validate_json(ts.model_dump_json()) == ts


def test_state_and_metadata_can_change() -> None:
    ts = parse_taskspec(SEED_EXAMPLE)
    ts.state.status = "running"
    ts.state.task_pid = 1234
    ts.metadata.tags.append("retry")
    assert ts.state.status == "running"
    assert ts.state.task_pid == 1234
    with pytest.raises(ValidationError):
        ts.state.return_code = "not a number"  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"spec": {"process_target": ["a"], "bogus": 1}}, "spec.bogus"),
        ({"spec": {"process_target": ["a"]}, "colour": "red"}, "colour"),
        ({"spec": {"process_target": ["a"], "limits": {"gpu": 1}}}, "spec.limits.gpu"),
        ({"spec": {"process_target": ["a"]}, "io": {"input": {}}}, "io.input"),
    ],
)
def test_unknown_fields_are_rejected_by_name(data: dict[str, Any], field: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_taskspec(data)
    assert f"{field}: unknown field" in str(info.value)


@pytest.mark.parametrize(
    ("data", "names"),
    [
        (_command(limits={"cpu_percent": 0}), "spec.limits.cpu_percent"),
        (_command(limits={"cpu_percent": 150}), "spec.limits.cpu_percent"),
        (_command(timeout=-5), "spec.timeout"),
        ({"spec": {"process_target": []}}, "process_target"),
        ({"spec": {"type": "command"}}, "process_target"),
        ({"spec": {"type": "function"}}, "function_target"),
        ({"spec": {"type": "function", "function_target": "no-colon"}}, "function_target"),
        (_command(limits={"memory_mb": -1}), "spec.limits.memory_mb"),
        ({"spec": {"process_target": ["a"]}, "io": {"inputs": {"d": "bad name"}}}, "io.inputs"),
        ('{"spec": {"process_target": ["a"]', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_field(data: Any, names: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_taskspec(data)
    message = str(info.value)
    assert names in message
    assert "\n" not in message
    assert info.value.exit_code == 2


def test_malformed_json_gives_line_and_column() -> None:
    with pytest.raises(UsageError, match=r"line 2 column \d+"):
        parse_taskspec('{\n  "spec": oops}', source="task.json")


def test_model_is_the_public_taskspec() -> None:
    import weft

    assert weft.TaskSpec is TaskSpec
