"""What a trial tells Ray Tune and its searchers: one report per evaluation, and the objective.

Shared by the sweep's trainable (harness.sweep) and the data-parallel workers
(harness.trial.distributed), so that neither imports the other.
"""

from __future__ import annotations

import json
from typing import Any


def worst_objective(higher_is_better: bool) -> float:
    """What a diverged trial (NaN metric) tells the searcher."""
    return 0.0 if higher_is_better else 1e9


def steps_objective(summary: dict, steps_budget: int) -> float:
    """A steps_to_result study's objective (minimized): steps to the target; a miss or a
    divergence counts as twice the step budget (later than any trial that reached it)."""
    steps = summary.get("steps_to_target")
    return float(steps) if summary.get("target_reached") and steps is not None else 2.0 * steps_budget


def report_metrics(measurements: list[dict], summary: dict, status: str, worst: float,
                   steps_budget: int | None = None) -> dict[str, Any]:
    """One ``tune.report``: the latest evaluation, and the whole history so far (the driver keeps
    the latest only, so a resumed trial's earlier evaluations are never lost). ``steps_budget``
    makes the objective steps to the target (steps_to_result studies)."""
    last = measurements[-1] if measurements else {}
    m = last.get("metric", float("nan"))
    objective = steps_objective(summary, steps_budget) if steps_budget else (m if m == m else worst)
    return {
        "objective": objective,
        "examples": summary.get("examples_seen", 0),
        "step": summary.get("steps", 0),
        "total_steps": summary.get("total_steps"),
        "trial_status": status,
        "metric": m,
        "train_loss": last.get("train_loss", float("nan")),
        "measurements": json.dumps(measurements),
        "summary": json.dumps(summary),
    }
