"""User modules that extend batchscale: workloads, LR rules and warmup rules, registered by name.

The modules named in ``BATCHSCALE_WORKLOAD_MODULES`` (comma-separated; the name is historical:
they may register any of the three) are imported once per process, from ``sys.path`` or the
current folder. A sweep forwards the variable to its Ray workers, and ``plan``, ``report`` and
``list`` read it too, so a rule a plugin adds is known wherever a method name is read. A module
registers by defining any of:

* ``WORKLOADS``: a tuple of ``harness.workloads.Workload`` subclasses (docs/workloads.md);
* ``LR_RULES``: ``{name: f}`` with ``f(k) -> factor``, the peak LR at k = B/B0 being eta0 * f(k)
  (``{"pow75": lambda k: k ** 0.75}``);
* ``WARMUP_RULES``: ``{name: f}`` with ``f(base_recipe, k, budget_epochs) -> warmup epochs``.

A method is then ``<lr rule>+<warmup rule>`` (``pow75+legw``), like the built-in combinations.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType

from harness.errors import BatchscaleError

#: Comma-separated modules registering workloads and rules (your own models and rules).
PLUGINS_ENV = "BATCHSCALE_WORKLOAD_MODULES"
#: Folders the plugin modules were imported from (set here when one is found in the current
#: folder), forwarded to the Ray workers with every other BATCHSCALE_ variable.
PLUGIN_PATH_ENV = "BATCHSCALE_PLUGIN_PATH"


def forwarded_env() -> dict[str, str]:
    """This process's ``BATCHSCALE_`` variables (plugin modules and their folders, cache and data
    folders, ...): what a sweep's trials and a data-parallel trial's Ray Train workers are given, so a
    worker on any Ray sees what its driver saw."""
    return {k: v for k, v in os.environ.items() if k.startswith("BATCHSCALE_")}


def _import_plugin(name: str) -> ModuleType:
    """Import a plugin module from sys.path, else from the current folder (as ``python -m`` would;
    the ``batchscale`` script does not put it on sys.path), remembering that folder for workers."""
    for folder in filter(None, os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        here = os.getcwd()
        if e.name != name.split(".")[0] or here in sys.path:
            raise
        sys.path.insert(0, here)
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            sys.path.remove(here)
            raise e from None
        known = [p for p in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if p]
        os.environ[PLUGIN_PATH_ENV] = os.pathsep.join([*known, here])
        return module


def plugin_modules() -> list[ModuleType]:
    """The plugin modules of this process's ``BATCHSCALE_WORKLOAD_MODULES`` (imported once)."""
    return list(_modules(os.environ.get(PLUGINS_ENV, "")))


@functools.cache
def _modules(names: str) -> tuple[ModuleType, ...]:
    out = []
    for name in filter(None, (m.strip() for m in names.split(","))):
        try:
            out.append(_import_plugin(name))
        except ImportError as e:
            raise BatchscaleError(f"{PLUGINS_ENV}: cannot import plugin module {name!r} ({e}); it must be "
                                  "importable from the current folder or sys.path (PYTHONPATH)") from None
    return tuple(out)


def registered(attribute: str, builtin=()) -> dict:
    """Every plugin module's ``attribute`` dict (``LR_RULES``, ``WARMUP_RULES``) merged, in order,
    without the names in ``builtin`` (a plugin never replaces a built-in rule)."""
    out: dict = {}
    for module in plugin_modules():
        value = getattr(module, attribute, None) or {}
        if not isinstance(value, dict):
            raise BatchscaleError(f"{module.__name__}.{attribute}: a dict of name -> function is expected, "
                                  f"got {type(value).__name__}")
        out.update({k: v for k, v in value.items() if k not in builtin})
    return out
