"""weft_mcp: the Model Context Protocol server through which AI agents drive Weft.

A thin adapter over ``weft.client.WeftClient``: tools to run tasks, collect results, follow
the shared log and use queues; resources for task status and the log. Start it with
``weft-mcp`` or ``python -m weft_mcp`` (see docs/mcp.md).
"""

from __future__ import annotations

from weft_mcp.policy import Policy
from weft_mcp.server import build_server, main

__all__ = ["Policy", "build_server", "main"]
