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

# plugin modules (harness.plugins) register workloads with a ``WORKLOADS`` tuple
from harness.plugins import PLUGIN_PATH_ENV, PLUGINS_ENV  # noqa: F401 (documented names)
from harness.workloads.base import Dataset, NoOptions, Workload  # noqa: F401 (the contract, re-exported)


def _registry() -> dict[str, type[Workload]]:
    from harness.workloads import cifar, imagenet, images, language, mnist1d, synthetic

    modules = [images, mnist1d, language, synthetic, cifar, imagenet]
    return {w.name: w for mod in modules for w in getattr(mod, "WORKLOADS", ())}


WORKLOADS: dict[str, type[Workload]] = {}


def workload_names() -> list[str]:
    """The built-in workloads, then those of the plugin modules BATCHSCALE_WORKLOAD_MODULES names now
    (as the rules are: a process that sets it after its first sweep, such as a notebook, sees them)."""
    from harness.plugins import plugin_modules

    if not WORKLOADS:
        WORKLOADS.update(_registry())
    for module in plugin_modules():  # imported once per value of the variable
        for w in getattr(module, "WORKLOADS", ()):
            WORKLOADS.setdefault(w.name, w)
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
