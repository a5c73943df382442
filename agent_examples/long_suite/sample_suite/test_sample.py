"""A stand-in for a long test suite: a few slow-ish tests (the agent example runs it as a task)."""

import time

import pytest


@pytest.mark.parametrize("n", range(4))
def test_slow_step(n: int) -> None:
    time.sleep(0.2)
    assert n * n >= 0


def test_arithmetic() -> None:
    assert sum(range(10)) == 45
