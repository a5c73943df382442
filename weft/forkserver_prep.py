"""Imported last by the manager's fork server: make forked task processes cheap in memory.

Everything a task process would otherwise load or compute for itself (psutil, the broker's
backend plugin lookup, its resolved config) is done once here, before the fork, so that the
pages are shared. Then the garbage collector's view of it all is frozen, so the collector in
a forked task never touches (and so never copies) those shared pages.
"""

import contextlib
import gc

import psutil  # noqa: F401  (runner.signal_tree)
import simplebroker
from simplebroker import _backend_plugins

import weft.backends
import weft.monitor  # noqa: F401  (every task's resource monitor)
from weft.task import give_back_memory

with contextlib.suppress(Exception):
    _backend_plugins.get_backend_plugin("sqlite")
    simplebroker.resolve_config()

gc.collect()
gc.freeze()
give_back_memory()  # and loads what it needs (ctypes) once, here
