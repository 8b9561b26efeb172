"""The function Ray Tune runs for every trial of a sweep, in a Ray worker.

It builds ``harness.trial.loop.Trial`` from the config the driver's searcher gave it, continues from a
checkpoint when there is one (Tune's, after a retry in this run; or ``resume_from``, the last
checkpoint an earlier run of the sweep recorded in the store), runs, and reports each evaluation
(with a checkpoint at the first and then every ``CHECKPOINT_SECONDS``) and the final result. No
training logic lives here.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.spec import TrialSpec
from harness.trial.objective import report_metrics, worst_objective

#: the keys a tuned study's searcher sets in a trial's config, over the trial's own fields
SEARCHED = ("peak_lr", "warmup_epochs")
#: seconds between a trial's checkpoints (``BATCHSCALE_CHECKPOINT_SECONDS``): one at its first
#: evaluation, then at the first evaluation this long after the last. A checkpoint (the trial's
#: whole state to Tune's storage, and its record to the store) at every evaluation made a short
#: trial's wall time a multiple of its training; a killed trial loses at most this much training.
CHECKPOINT_SECONDS = 10.0


def checkpoint_seconds() -> float:
    return float(os.environ.get("BATCHSCALE_CHECKPOINT_SECONDS", CHECKPOINT_SECONDS))


def tune_trial(config: dict[str, Any]) -> None:
    """One trial inside Tune: build, restore from the last checkpoint if any, run, report."""
    os.environ.update(config.get("env") or {})  # the sweep's BATCHSCALE_ variables, on any Ray
    import torch
    from ray import tune

    from harness.trial.loop import Trial

    spec_fields = dict(config["trial"])
    spec_fields.update({k: config[k] for k in SEARCHED if config.get(k) is not None})
    spec = TrialSpec.model_validate(spec_fields)
    steps_budget = config.get("objective_steps_budget")
    if spec.data_parallel.processes > 1:  # W workers of Ray Train; their reports reach Tune
        from harness.trial.distributed import run_in_tune

        res = config.get("resources", {})
        run_in_tune(spec_fields, config["trial_id"], spec.data_parallel.workers, res.get("cpus", 1),
                    res.get("gpus", 0.0), steps_budget)
        return
    trial = Trial(spec)
    checkpoint = tune.get_checkpoint() or _earlier_checkpoint(config.get("resume_from"))
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trial.load_state_dict(torch.load(Path(folder) / "trial.pt", weights_only=False))
    worst = worst_objective(trial.workload.higher_is_better)
    every = checkpoint_seconds()
    last = [None]  # when the last checkpoint was taken

    recipe = json.dumps(tracked_recipe(trial, steps_budget))

    def on_eval(t, row):
        metrics = {**report_metrics(t.measurements, t.summary(), "running", worst, steps_budget), "recipe": recipe}
        now = time.monotonic()
        if last[0] is not None and now - last[0] < every:  # a report without a checkpoint
            tune.report(metrics)
            return
        last[0] = now
        with tempfile.TemporaryDirectory() as folder:
            torch.save(t.state_dict(), Path(folder) / "trial.pt")
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    result = trial.run(on_eval=on_eval)
    tune.report({**report_metrics(result.measurements, result.summary, result.status, worst, steps_budget),
                 "recipe": recipe})


def tracked_recipe(trial, steps_budget: int | None) -> dict:
    """What a tracking tool shows of a trial's resolved recipe: the LR and warmup it ran with (the
    rule's, not only a tuned search's), its micro-batch and its budget."""
    r = trial.recipe
    return {"peak_lr": r.peak_lr, "realised_peak_lr": r.realised_peak_lr, "base_peak_lr": r.base_peak_lr,
            "lr_rule": r.lr_rule, "warmup_rule": r.warmup_rule, "warmup_epochs": r.warmup_epochs,
            "warmup_steps": r.warmup_steps, "total_steps": r.total_steps, "steps_per_epoch": r.steps_per_epoch,
            "micro_batch_size": trial.micro_batch_size, "protocol_budget_steps": steps_budget}


def _earlier_checkpoint(path: str | None):
    """The checkpoint an earlier run of the sweep left at ``path`` (local or a storage URI), or None
    when it is gone (the trial then starts again from step 0)."""
    if not path:
        return None
    from pyarrow.fs import FileSystem, FileType
    from ray import tune

    try:
        fs, fs_path = FileSystem.from_uri(path) if "://" in path else (None, path)
        if fs is None:
            return tune.Checkpoint(path) if Path(path, "trial.pt").is_file() else None
        if fs.get_file_info(f"{fs_path.rstrip('/')}/trial.pt").type != FileType.File:
            return None
        return tune.Checkpoint(fs_path, filesystem=fs)
    except (OSError, ValueError):
        return None
