"""Workloads: model + data + metric + a tuned base recipe, registered by name.

A workload says exactly what the trial loop needs (in the manner of MLCommons AlgoPerf's
``Workload``): its data as tensors held in memory (or, for data too large for that, a column
streamed by a DataLoader that the trial loop indexes like a tensor: harness.data.loader), a model, the training loss of a batch, how to
evaluate, the metric and its direction, and a base recipe per optimizer with where its numbers
come from. Everything else (rules, schedules, accumulation, timing) is the trial loop's.
"""

from __future__ import annotations

from typing import Any

from harness.errors import SpecError
from harness.workloads.base import Dataset, NoOptions, Workload  # noqa: F401 (the contract, re-exported)


#: Comma-separated modules whose ``WORKLOADS`` tuple registers more workloads (your own models);
#: a sweep forwards it to its Ray workers, which must be able to import the modules too.
PLUGINS_ENV = "BATCHSCALE_WORKLOAD_MODULES"
#: Folders the plugin modules were imported from (set here when one is found in the current
#: folder), forwarded to the Ray workers with every other BATCHSCALE_ variable.
PLUGIN_PATH_ENV = "BATCHSCALE_PLUGIN_PATH"


def _import_plugin(name: str):
    """Import a plugin module from sys.path, else from the current folder (as ``python -m`` would;
    the ``batchscale`` script does not put it on sys.path), remembering that folder for workers."""
    import importlib
    import os
    import sys

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


def _registry() -> dict[str, type[Workload]]:
    import os

    from harness.errors import BatchscaleError
    from harness.workloads import cifar, imagenet, images, language, mnist1d, synthetic

    modules = [images, mnist1d, language, synthetic, cifar, imagenet]
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            modules.append(_import_plugin(name))
        except ImportError as e:
            raise BatchscaleError(f"{PLUGINS_ENV}: cannot import workload module {name!r} ({e}); it must be "
                                  "importable from the current folder or sys.path (PYTHONPATH)") from None
    return {w.name: w for mod in modules for w in getattr(mod, "WORKLOADS", ())}


WORKLOADS: dict[str, type[Workload]] = {}


def workload_names() -> list[str]:
    if not WORKLOADS:
        WORKLOADS.update(_registry())
    return list(WORKLOADS)


def register_workload(cls: type[Workload]) -> type[Workload]:
    """Add a workload class to the registry of this process (Ray workers: see PLUGINS_ENV)."""
    workload_names()
    WORKLOADS[cls.name] = cls
    return cls


def get_workload(name: str, options: dict[str, Any] | None = None, data_dir: str | None = None,
                 validation_fraction: float = 0.0) -> Workload:
    if name not in workload_names():
        raise SpecError("workload", name, f"allowed: {', '.join(workload_names())}", choices=workload_names())
    return WORKLOADS[name](options, data_dir, validation_fraction=validation_fraction)
