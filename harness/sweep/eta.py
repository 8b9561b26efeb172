"""How long a sweep and its pilot will take, said before they start: each trial's examples over the
examples per second of the trial loop on this machine, probed for half a second at the smallest and
the largest batch size (``throughput_probe``, log-interpolated between them); its whole
budget at most, its predicted steps to the target at least; over the slots, plus Ray's set-up per
trial. ``batchscale plan`` probes longer for a finer estimate. Runs of more than an hour say that
stopping now loses nothing."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from harness.spec import SweepSpec
from harness.sweep import protocol

HOUR = 3600.0
#: Ray and data set-up per trial: the default study's Tune phase was 1.38x its trials' training
#: (docs/benchmarks.md); this is the per-trial part of that, rounded up
OVERHEAD_S = 1.0
PROBE_SECONDS = 0.5


def words(seconds: float) -> str:
    return f"{seconds / HOUR:.1f} h" if seconds >= HOUR else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def _probe(spec, batches: list[int]) -> dict[int, float]:
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


PACE_MICRO_BATCHES = 8  # the pace probe's most micro-batches per step: they run in turn, so B=32K's pace is theirs


def throughput_probe(spec: SweepSpec, optimizer: str, batch_sizes: list[int], seconds: float = 2.0,
                     arm: dict[str, Any] | None = None) -> dict[int, float]:
    """Examples per second of training on this machine, with the sweep's threads per trial, at each
    of ``batch_sizes``: a warm-up step, then steps until ``seconds`` have passed (one at least: a step
    longer than that is its own measurement; three had made the estimate of a ResNet-50 sweep on a CPU
    cost 40 s); ``arm``: an arm's fields."""
    from harness.trial.loop import Trial

    def probe_trial(b: int) -> Trial:
        return Trial(spec.trial_spec(optimizer, "none", b, spec.axes.seeds[0], target=None,
                                     budget={"epochs": None, "examples": b * 10**6},
                                     eval={**spec.eval.model_dump(), "every_examples": 10**15},
                                     divergence={"loss_factor": None}, **(arm or protocol.PLAIN)))

    out = {}
    for b in batch_sizes:
        trial = probe_trial(b)
        if b > PACE_MICRO_BATCHES * trial.timing_micro_batch:  # micro-batches run one after another: B's
            trial = probe_trial(PACE_MICRO_BATCHES * trial.timing_micro_batch)  # pace is a few of them's
        trial._train_step()  # warm-up (allocations, first-call costs)
        start, steps = time.perf_counter(), 0
        while steps < 1 or time.perf_counter() - start < seconds:
            trial._train_step()
            steps += 1
            if steps >= 10_000:
                break
        # the examples the probe trial ran (at a large B, its few micro-batches): counting B per step
        # made B=8192 of the LSTM study look 16x faster than it trains
        out[b] = steps * trial.recipe.batch_size / (time.perf_counter() - start)
    return out


def time_estimate(spec: SweepSpec, rows: list[dict[str, Any]], throughput: dict[int, float], trials_per_cell: dict,
                  slots: int, overhead_s: float = 1.0, start_s: float = 15.0) -> dict[str, float]:
    """Wall-time range of the sweep: each trial's examples (its predicted steps to the target when it
    stops there, else its whole budget; at most the whole budget) over the probed throughput
    (log-interpolated in B), plus ``overhead_s`` per trial (Ray, data loading), over ``slots``."""
    known = sorted(throughput)
    logs = ([math.log(k) for k in known], [math.log(throughput[k]) for k in known])

    def rate(b: int) -> float:  # log-log interpolation, constant beyond the probed sizes
        return math.exp(float(np.interp(math.log(b), *logs)))

    stops = spec.protocol.kind == "steps_to_result" or (spec.target is not None and spec.target.stop)
    low = high = 0.0
    for r in rows:
        n = trials_per_cell.get((r["optimizer"], r["batch_size"]), 0)
        full = r["budget_steps"] * r["batch_size"] / rate(r["batch_size"])
        short = (min(r["steps_predicted"], r["budget_steps"]) * r["batch_size"] / rate(r["batch_size"])
                 if stops and r["steps_predicted"] else full)
        low += n * (short + overhead_s)
        high += n * (full + overhead_s)
    return {"low_s": start_s + low / slots, "high_s": start_s + high / slots, "slots": slots}
