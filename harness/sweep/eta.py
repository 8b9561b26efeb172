"""How long a sweep and its pilot will take, said before they start: each trial's examples over the
examples per second of the trial loop on this machine, probed for half a second at the smallest and
the largest batch size (harness.protocol.throughput_probe, log-interpolated between them); its whole
budget at most, its predicted steps to the target at least; over the slots, plus Ray's set-up per
trial. ``batchscale plan`` probes longer for a finer estimate. Runs of more than an hour say that
stopping now loses nothing."""

from __future__ import annotations

import os
from typing import Any

HOUR = 3600.0
#: Ray and data set-up per trial: the default study's Tune phase was 1.38x its trials' training
#: (docs/benchmarks.md); this is the per-trial part of that, rounded up
OVERHEAD_S = 1.0
PROBE_SECONDS = 0.5


def words(seconds: float) -> str:
    return f"{seconds / HOUR:.1f} h" if seconds >= HOUR else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _probe(spec, batches: list[int]) -> dict[int, float]:
    from harness.protocol import throughput_probe

    if spec.resources.gpus > 0 or spec.data_parallel.processes > 1:
        return {}  # GPU or multi-process trials: this driver's pace says nothing about theirs
    try:  # an estimate only: a trial that fails here fails in the sweep, where it is recorded and retried
        return throughput_probe(spec, spec.optimizers()[0], sorted(set(batches)), seconds=PROBE_SECONDS)
    except Exception:  # noqa: BLE001
        return {}


def pilot_line(spec, dataset_size: int) -> str:
    """`` (at most ~X: ...)`` for the pilot of the base recipe at B0 (its whole budget; it stops at the target)."""
    base = spec.base_recipe(spec.optimizers()[0])
    rate = _probe(spec, [base.base_batch_size]).get(base.base_batch_size)
    if not rate:
        return ""
    epochs = spec.protocol.pilot_epochs or max(spec.budget_epochs(spec.optimizers()[0], dataset_size), base.epochs)
    seconds = len(spec.optimizers()) * epochs * dataset_size / rate
    return (f" (at most ~{words(seconds)}: {epochs:g} epoch(s) of {dataset_size:,} examples at ~{rate:,.0f}/s; "
            "it stops at the target)")


def local_slots(spec) -> int:
    """Trials that run at once on this machine (the driver's embedded Ray has its CPUs)."""
    slots = max(1, (os.cpu_count() or 1) // (spec.resources.cpus * max(1, spec.data_parallel.processes)))
    return min(slots, spec.max_concurrent) if spec.max_concurrent else slots


def sweep_line(spec, the_plan, budgets: list[dict[str, Any]], name: str) -> str:
    """The whole sweep's estimate in one line ('' without budgets or a probe)."""
    from harness.protocol import time_estimate

    throughput = _probe(spec, [min(spec.axes.batch_sizes), max(spec.axes.batch_sizes)]) if budgets else {}
    if not throughput:
        return ""
    per_cell: dict[tuple, float] = {}
    for r in the_plan.rows:
        key = (r["optimizer"], r["batch_size"])
        per_cell[key] = per_cell.get(key, 0) + r.get("trials", 1)
    slots = local_slots(spec)
    t = time_estimate(spec, budgets, throughput, per_cell, slots, overhead_s=OVERHEAD_S, start_s=0.0)
    line = (f"estimated: {words(t['low_s'])} - {words(t['high_s'])} on {slots} slot(s) (trials stopping at the "
            "predicted steps - running their whole budget; the trial loop's pace probed here)")
    if t["high_s"] > HOUR:
        line += (f"; more than an hour: stopping now (Ctrl-C) loses nothing, and the same command resumes "
                 f"results/{name} later")
    return line
