"""Weft: durable, isolated task execution on SimpleBroker queues.

The public surface is small on purpose: ``WeftClient`` drives everything and ``TaskSpec``
describes a task. Both are imported lazily so that ``import weft`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from weft.client import WeftClient
    from weft.taskspec import TaskSpec

__all__ = ["TaskSpec", "WeftClient", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "WeftClient":
        from weft.client import WeftClient

        return WeftClient
    if name == "TaskSpec":
        from weft.taskspec import TaskSpec

        return TaskSpec
    raise AttributeError(f"module 'weft' has no attribute {name!r}")
