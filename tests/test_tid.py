"""TIDs: full, short and suffix forms, and the errors for the rest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from weft import tid
from weft.client import WeftClient
from weft.context import init_project
from weft.errors import EXIT_NOT_FOUND, EXIT_USAGE, NotFoundError, UsageError

KNOWN = [
    "1837025672140161024",
    "1837025672140161025",
    "1837025699990161024",
    "1837025672149999999",
]


def test_short_is_the_last_ten_digits() -> None:
    assert tid.short("1837025672140161024") == "2140161024"
    assert tid.short(1837025672140161024) == "2140161024"
    assert tid.is_full("1837025672140161024")
    assert not tid.is_full("2140161024")
    assert not tid.is_full("18370256721401610x4")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("1837025672140161025", "1837025672140161025"),  # full
        ("2140161025", "1837025672140161025"),  # short (10 digits)
        ("161025", "1837025672140161025"),  # 6-digit suffix
        ("9999999", "1837025672149999999"),  # 7-digit suffix
        (" 2149999999 ", "1837025672149999999"),  # surrounding space is ignored
    ],
)
def test_resolve_accepts_full_short_and_unique_suffixes(given: str, expected: str) -> None:
    assert tid.resolve(given, KNOWN) == expected


def test_ambiguous_suffix_names_the_candidates() -> None:
    with pytest.raises(NotFoundError) as info:
        tid.resolve("0161024", KNOWN)
    message = str(info.value)
    assert "ambiguous" in message
    assert "1837025672140161024" in message
    assert "1837025699990161024" in message
    assert info.value.exit_code == EXIT_NOT_FOUND == 2


def test_unknown_tid_is_not_found() -> None:
    with pytest.raises(NotFoundError, match="no task with TID 123456") as info:
        tid.resolve("123456", KNOWN)
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("given", "fragment"),
    [
        ("12345", "too short"),
        ("", "digits only"),
        ("abc123456", "digits only"),
        ("-1234567", "digits only"),
        ("18370256721401610241", "longer than 19"),
    ],
)
def test_malformed_tids_are_usage_errors(given: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment) as info:
        tid.resolve(given, KNOWN)
    assert info.value.exit_code == EXIT_USAGE == 2
    assert "\n" not in str(info.value)


def test_a_broker_message_id_is_a_time_ordered_19_digit_tid(tmp_path: Path) -> None:
    init_project(tmp_path)
    with WeftClient.open(tmp_path) as client:
        before = time.time_ns()
        first = client.queue.write("q", "a")
        second = client.queue.write("q", "b")
        after = time.time_ns()
    for message_id in (first, second):
        assert tid.is_full(str(message_id))
        # A hybrid timestamp: time_ns with its low 12 bits used as a counter.
        assert before - 4096 <= message_id <= after + 4096
    assert first < second
    assert tid.resolve(tid.short(second), [str(first), str(second)]) == str(second)
