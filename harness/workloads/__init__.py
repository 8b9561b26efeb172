"""Workloads: model + data + metric + a tuned base recipe, registered by name.

A workload says exactly what the trial loop needs (in the manner of MLCommons AlgoPerf's
``Workload``): its data as tensors held in memory, a model, the training loss of a batch, how to
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


def _registry() -> dict[str, type[Workload]]:
    import importlib
    import os

    from harness.errors import BatchscaleError
    from harness.workloads import images, language, mnist1d, synthetic

    modules = [images, mnist1d, language, synthetic]
    for name in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            modules.append(importlib.import_module(name))
        except ImportError as e:
            raise BatchscaleError(f"{PLUGINS_ENV}: cannot import workload module {name!r} ({e})") from None
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


def get_workload(name: str, options: dict[str, Any] | None = None, data_dir: str | None = None) -> Workload:
    if name not in workload_names():
        raise SpecError("workload", name, f"allowed: {', '.join(workload_names())}")
    return WORKLOADS[name](options, data_dir)
