"""The fast option checks (no pydantic) agree with the TaskSpec model, value for value."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.errors import UsageError
from weft.spec_options import prepare, spec_data
from weft.taskspec import TaskSpec, build_spec

numbers = st.one_of(
    st.none(), st.integers(-5, 200), st.floats(-10, 1e6, allow_nan=False, allow_infinity=False)
)
ints = st.one_of(st.none(), st.integers(-5, 200))
policies = st.sampled_from(["keep", "requeue", "clear", "retry", ""])
targets = st.sampled_from(["mod:f", "pkg.mod:run_1", "nope", "a:", ":f", "1m:f", "m:f.g"])
words = st.text(min_size=0, max_size=8)


def _outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except UsageError:
        return "refused", None


@settings(max_examples=300, deadline=None)
@given(
    command=st.one_of(st.none(), st.lists(words, min_size=0, max_size=3)),
    function=st.one_of(st.none(), targets),
    timeout=numbers,
    memory=ints,
    cpu=ints,
    policy=policies,
    name=st.one_of(st.none(), words),
    tags=st.lists(words, max_size=2),
    env=st.dictionaries(words, words, max_size=2),
)
def test_fast_checks_agree_with_the_model(
    command: list[str] | None,
    function: str | None,
    timeout: float | None,
    memory: int | None,
    cpu: int | None,
    policy: str,
    name: str | None,
    tags: list[str],
    env: dict[str, str],
) -> None:
    options: dict[str, Any] = dict(
        command=command,
        function=function,
        timeout=timeout,
        memory=memory,
        cpu=cpu,
        reserved_policy=policy,
        name=name,
        tags=tags,
        env=env,
        args=[1, "two"] if function else [],
    )
    fast = _outcome(lambda: prepare(spec_data(**options)))
    model = _outcome(lambda: build_spec(**options))
    assert fast[0] == model[0], (options, fast, model)
    if fast[0] == "ok" and fast[1] is not None:
        written = TaskSpec.model_validate(json.loads(fast[1].body))
        assert written == model[1]


def test_queue_io_is_left_to_the_model() -> None:
    data = spec_data(command=["cat"], inputs={"in": "bad name!"})
    assert prepare(data) is None
    with pytest.raises(UsageError, match="not a valid queue name"):
        build_spec(command=["cat"], inputs={"in": "bad name!"})
