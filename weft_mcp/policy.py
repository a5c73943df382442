"""The safety switches: which tasks ``run_task`` may start, and whether anything may change.

``--allow PATTERN`` (repeatable) turns on an allow-list. Patterns are shell globs
(``fnmatch``, case-sensitive):

* a command is allowed when a pattern matches its program as given (``argv[0]``), the
  program's base name, or the whole command line (``shlex.join(argv)``);
* a function is allowed when a pattern matches its target ``module:function``;
* a full TaskSpec is judged by what it runs, the same way.

With an allow-list, a task may not set ``PATH``, ``LD_*``, ``DYLD_*`` or ``PYTHON*``
environment variables (they would change which program or code an allowed name runs).
Without ``--allow`` every task may run. ``--read-only`` exposes only the reading tools.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from weft.taskspec import TaskSpec

_GUARDED_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON")
_GUARDED_ENV_NAMES = frozenset({"PATH"})


class Refused(Exception):
    """A task the server's policy does not allow; the message says why and what to do."""


@dataclass(frozen=True)
class Policy:
    allow: tuple[str, ...] = ()
    read_only: bool = False

    @classmethod
    def from_options(cls, allow: Iterable[str] | None, read_only: bool = False) -> Policy:
        patterns = tuple(p.strip() for p in allow or () if p.strip())
        return cls(allow=patterns, read_only=read_only)

    @property
    def restricted(self) -> bool:
        return bool(self.allow)

    def candidates(self, spec: TaskSpec) -> list[str]:
        """The texts a pattern may match for this task."""
        if spec.spec.type == "function":
            return [str(spec.spec.function_target)]
        argv = list(spec.spec.process_target or [])
        program = argv[0]
        return [program, os.path.basename(program), shlex.join(argv)]

    def is_allowed(self, spec: TaskSpec) -> bool:
        if not self.allow:
            return True
        texts = self.candidates(spec)
        return any(fnmatch.fnmatchcase(text, pattern) for text in texts for pattern in self.allow)

    def check(self, spec: TaskSpec) -> None:
        """Raise ``Refused`` unless this server may start ``spec``."""
        if self.read_only:
            raise Refused("this weft-mcp server is read-only (--read-only): it starts no tasks")
        if not self.allow:
            return
        what = spec.describe()
        kind = "function" if spec.spec.type == "function" else "command"
        if not self.is_allowed(spec):
            allowed = ", ".join(repr(p) for p in self.allow)
            raise Refused(
                f"refused: the {kind} {what!r} is not allowed by this server's --allow list "
                f"({allowed}); run a {kind} that matches one of these patterns, or ask the "
                "user to add a pattern to the weft-mcp configuration"
            )
        guarded = sorted(
            key
            for key in spec.spec.env
            if key in _GUARDED_ENV_NAMES or key.startswith(_GUARDED_ENV_PREFIXES)
        )
        if guarded:
            raise Refused(
                f"refused: with an --allow list a task may not set {', '.join(guarded)} in its "
                "environment (it could change what an allowed name runs); drop those variables"
            )
