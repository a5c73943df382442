"""Start-up: modules our dependencies import eagerly but rarely use, loaded on first use.

SimpleBroker imports ``importlib.metadata`` when it is imported, for finding backend plugins
through entry points; a SQLite project never looks one up, and the import costs 12-35 ms
(``email``, ``csv``, ``zipfile``...) on every command. Deferring it changes nothing else: the
module is the real one, loaded the first time anything touches it.
"""

from __future__ import annotations

import sys

DEFERRED = ("importlib.metadata",)


def defer_rarely_used_imports() -> None:
    """Call before SimpleBroker is imported; a module already loaded is left alone."""
    import importlib
    import importlib.util

    for name in DEFERRED:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            continue
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent] if parent else importlib, child, module)
