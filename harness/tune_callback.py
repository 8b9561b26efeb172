"""The driver's side of Tune: a callback that writes each finished trial to the results store.

Its own module so that the callback class is importable: Tune pickles callbacks with the
experiment state, and a class pickled by reference finds the *current* driver's store and view
in ``DRIVER`` after a restore, instead of dragging the old ones along.
"""

from __future__ import annotations

import json
from typing import Any

from ray import tune

#: The running driver's ``store`` (ResultsStore), ``progress`` (view or None) and ``running``
#: (trial_id -> (identity, last result)) of trials that reported but did not end yet.
DRIVER: dict[str, Any] = {}


def trial_row(meta: dict[str, Any], status: str, summary: dict[str, Any], error: str | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    row = {**summary, **meta, "status": status, "error": error}
    row["recipe_warnings"] = "; ".join(summary.get("recipe_warnings", []) or [])
    if extra:
        row.update(extra)
    return row


class StoreCallback(tune.Callback):
    """Writes each trial to the results store when it ends (complete, diverged, error, stopped)."""

    def __init__(self, experiment: str):
        self.experiment = experiment

    @staticmethod
    def identify(trial) -> dict[str, Any]:
        cfg = trial.config.get("cell", trial.config)
        t = cfg["trial"]
        meta = {"workload": t["workload"], "optimizer": t["optimizer"], "method": t["method"],
                "batch_size": t["batch_size"], "seed": t["seed"]}
        if "trial_id" in cfg:
            meta["trial_id"] = cfg["trial_id"]
        else:
            index = int(str(trial.trial_id).rsplit("_", 1)[-1])
            meta.update(trial_id=f"{cfg['study']}-t{index:02d}", study=cfg["study"], tuned_index=index)
        return meta

    def on_trial_result(self, iteration, trials, trial, result, **info):
        meta = self.identify(trial)
        DRIVER.setdefault("running", {})[meta["trial_id"]] = (meta, result)
        if DRIVER.get("progress"):
            DRIVER["progress"].result(meta["trial_id"], result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.record(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.record(trial, status="error", error=error_message(trial))

    def record(self, trial, status: str | None = None, error: str | None = None) -> None:
        meta = self.identify(trial)
        last = trial.last_result or {}
        measurements = json.loads(last.get("measurements") or "[]")
        summary = json.loads(last.get("summary") or "{}")
        extra = {}
        if status is None:
            status = last.get("trial_status", "incomplete")
            if status == "running":  # ended without its final report: stopped early by the scheduler
                status, extra = "incomplete", {"stopped_by": "asha", "examples_at_stop": last.get("examples")}
        if not summary:
            summary = {"steps": last.get("step"), "examples_seen": last.get("examples")}
        if "peak_lr" not in summary and "peak_lr" in trial.config:
            summary["peak_lr"] = trial.config["peak_lr"]
        DRIVER["store"].record(trial_row(meta, status, summary, error, extra), measurements)
        DRIVER.get("running", {}).pop(meta["trial_id"], None)
        if DRIVER.get("progress"):
            DRIVER["progress"].finished(meta["trial_id"], status, summary)


def error_message(trial) -> str:
    """The last line of the trial's exception (its type and message)."""
    try:
        err = trial.get_pickled_error() or trial.get_error()
    except Exception:  # noqa: BLE001 - best effort: the message is informative
        err = None
    text = str(err) if err else "trial failed (no error message recorded)"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else text[:500]
