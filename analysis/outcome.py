"""What became of each trial: the recorded status, and ``failed`` beside ``diverged``.

The trial loop records ``complete``, ``diverged`` (a NaN/inf loss, or a loss above
``divergence.loss_factor`` x the first step's), ``error`` or ``incomplete``. A run can also finish
without diverging and still have learned nothing: an LR far too high that pins the model at chance,
or a run that collapses back to it. Such a run is a failure of the rule as much as a divergence,
and averaging its number into a cell hides it. So a ``complete`` trial is **failed** when either

* **it ends at chance**: its final metric has covered less than ``CHANCE_FRACTION`` (10%) of the
  way from the workload's chance level (``Workload.chance_metric``: 1/classes for accuracy, the
  vocabulary size for perplexity, the untrained student's excess risk) to the best final metric of
  any trial of the sweep. This covers a run that never left chance and one that fell back to it; or
* **its loss ends above its start**: the mean training loss over its last evaluation interval is
  above its first step's loss (older stores, which did not record the first step's loss, compare
  with the mean over the first evaluation interval).

``outcomes`` adds the column ``outcome`` (complete, failed, diverged, error, incomplete) and
``failed_because`` (the rule that decided it) to a trials frame; the tables, plots, claims and
``summary.json`` count failed runs apart from clean ones, and a failed seed spoils its cell as a
diverged one does (analysis.reproduce).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd

from harness.results.store import Status

CHANCE_FRACTION = 0.1
OUTCOMES = ("complete", "failed", "diverged", "error", "incomplete")


def chance_metric(meta: dict) -> float | None:
    """The sweep's chance level: recorded in sweep.json since it exists, else asked of the workload."""
    wl = meta.get("workload") or {}
    if "chance_metric" in wl:
        return wl["chance_metric"]
    try:
        from harness.workloads import get_workload

        spec = meta.get("spec_resolved") or {}
        return get_workload(wl["name"], spec.get("workload_options") or {}).chance_metric()
    except Exception:  # an unknown (plugin) workload: no chance level, the loss rule still applies
        return None


def _extra(trials: pd.DataFrame, key: str) -> pd.Series:
    if "extra" not in trials:
        return pd.Series(np.nan, index=trials.index)
    return trials["extra"].map(lambda e: (json.loads(e) if isinstance(e, str) and e else {}).get(key)).astype(float)


def outcomes(trials: pd.DataFrame, measurements: pd.DataFrame, chance: float | None,
             higher_is_better: bool) -> pd.DataFrame:
    """``trials`` with ``outcome`` and ``failed_because`` added (see the module docstring)."""
    t = trials.copy()
    t["outcome"] = t.status
    t["failed_because"] = ""
    done = t[(t.status == Status.COMPLETE) & t.final_metric.notna()]
    if done.empty:
        return t
    best = done.final_metric.max() if higher_is_better else done.final_metric.min()
    reasons = pd.Series("", index=t.index)
    if chance is not None and math.isfinite(chance) and best != chance:
        progress = (done.final_metric - chance) / (best - chance)
        at_chance = progress < CHANCE_FRACTION
        reasons[done.index[at_chance]] = [
            f"ends at chance: final {v:.4g} is {p:.0%} of the way from chance {chance:.4g} to the sweep's best {best:.4g}"
            for v, p in zip(done.final_metric[at_chance], progress[at_chance])]
    m = measurements.dropna(subset=["train_loss"]).sort_values("step")
    first_step = _extra(t, "initial_loss")
    last = m.groupby("trial_id").train_loss.last()
    first_interval = m.groupby("trial_id").train_loss.first()
    for i in done.index:
        if reasons[i]:
            continue
        tid = t.at[i, "trial_id"]
        end = last.get(tid, math.nan)
        start = first_step[i] if math.isfinite(first_step[i]) else first_interval.get(tid, math.nan)
        if math.isfinite(end) and math.isfinite(start) and end > start:
            reasons[i] = f"loss ends above its start: {end:.4g} > {start:.4g}"
    failed = reasons != ""
    t.loc[failed, "outcome"] = "failed"
    t.loc[failed, "failed_because"] = reasons[failed]
    return t
