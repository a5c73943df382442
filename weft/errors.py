"""Errors that carry the exit code the shell should see.

Exit codes speak the shell's language: 0 ok, 1 any other error, 2 not found / empty / usage,
124 timeout. Every adapter (CLI, MCP) maps these the same way.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_NOT_FOUND = 2
EXIT_USAGE = 2
EXIT_TIMEOUT = 124


class WeftError(Exception):
    """A failure with a one-line message meant for a person (or a model) to act on."""

    exit_code = EXIT_ERROR


class UsageError(WeftError):
    exit_code = EXIT_USAGE


class NotFoundError(WeftError):
    exit_code = EXIT_NOT_FOUND


class EmptyQueueError(NotFoundError):
    pass


class WaitTimeout(WeftError):
    exit_code = EXIT_TIMEOUT
