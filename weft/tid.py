"""Task IDs.

A TID is the 19-digit message ID SimpleBroker gave the task's spawn request: unique,
increasing, and comparable with ``time.time_ns()``. The short form is its last 10 digits.
Resolving a partial TID needs the set of known TIDs, which the caller supplies.
"""

from __future__ import annotations

from collections.abc import Iterable

from weft.errors import NotFoundError, UsageError

TID_LENGTH = 19
SHORT_LENGTH = 10
MIN_SUFFIX = 6


def short(tid: str | int) -> str:
    return str(tid)[-SHORT_LENGTH:]


def is_full(text: str) -> bool:
    return len(text) == TID_LENGTH and text.isdigit()


def check_partial(text: str) -> str:
    """Validate the form of a TID or TID suffix a user typed; return it stripped."""
    text = text.strip()
    if not text.isdigit():
        raise UsageError(f"invalid TID {text!r}: a TID is digits only (full 19, or a suffix)")
    if len(text) > TID_LENGTH:
        raise UsageError(f"invalid TID {text!r}: longer than {TID_LENGTH} digits")
    if len(text) < MIN_SUFFIX:
        raise UsageError(f"TID {text!r} is too short: give at least {MIN_SUFFIX} digits")
    return text


def resolve(text: str, known: Iterable[str]) -> str:
    """Turn a full TID, short TID or unique suffix into the full TID.

    ``known`` holds candidate TIDs (full form). Unknown or ambiguous input raises
    ``NotFoundError`` (exit 2) naming the candidates.
    """
    text = check_partial(text)
    matches = sorted({tid for tid in known if tid.endswith(text)})
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFoundError(f"no task with TID {text}")
    shown = ", ".join(matches[:10]) + (" ..." if len(matches) > 10 else "")
    raise NotFoundError(f"TID {text} is ambiguous: it matches {shown}; give more digits")
