"""The driver's side of Tune: a callback that writes each trial's record to the results store.

Every checkpoint a trial reports is recorded at once as an ``incomplete`` record (its curve so far,
the searched parameters and where the checkpoint lies), and the trial's final result replaces it
when the trial ends. So the store always holds what a rerun needs: which trials are finished (never
run again), and from which checkpoint each unfinished one continues. Tune's own experiment state is
never restored.

The callback holds the driver's store and progress view as plain attributes. Tune pickles the
callbacks once, into ``tuner.pkl``, which this project never reads back: the pickled copy is an
empty one.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from pyarrow.fs import FileSelector, FileSystem, FileType, LocalFileSystem
from ray import tune

from harness.results.store import FINAL, ResultsStore, Status

#: what a trial's config carries besides its TrialSpec fields, kept in its record's ``extra`` so
#: that a rerun can issue the same trial again
CARRIED = ("peak_lr", "warmup_epochs", "objective_steps_budget")


def trial_row(meta: dict[str, Any], status: str, summary: dict[str, Any], error: str | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    row = {**summary, **meta, "status": status, "error": error}
    row["recipe_warnings"] = "; ".join(summary.get("recipe_warnings", []) or [])
    row.update(extra or {})  # keys outside the store's columns go to its ``extra`` JSON
    return row


def identify(config: dict[str, Any]) -> dict[str, Any]:
    """The store's identity columns of the trial a config describes."""
    t = config["trial"]
    meta = {"trial_id": config["trial_id"], "workload": t["workload"], "optimizer": t["optimizer"],
            "method": t["method"], "batch_size": t["batch_size"], "seed": t["seed"],
            "augment": (t.get("augment") or {}).get("kind", "none"),
            "dp_algorithm": (t.get("data_parallel") or {}).get("algorithm", "allreduce")}
    if config.get("study"):
        meta["study"] = config["study"]
    return meta


def checkpoint_uri(checkpoint) -> str:
    """Where a Tune checkpoint lies, as a path (local storage) or a URI (cloud storage)."""
    fs = checkpoint.filesystem
    if fs is None or isinstance(fs, LocalFileSystem):
        return checkpoint.path
    return f"{fs.type_name}://{checkpoint.path.lstrip('/')}"


class StoreCallback(tune.Callback):
    """Records every trial in the store: ``incomplete`` at each checkpoint, final when it ends."""

    def __init__(self, store: ResultsStore | None, progress=None):
        self.store, self.progress = store, progress
        self.last: dict[str, tuple[dict, dict]] = {}  # trial_id -> (config, last result) of running trials
        self.checkpoints: dict[str, str] = {}  # trial_id -> its newest checkpoint in this run

    def __reduce__(self):
        return StoreCallback, (None, None)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.config["trial_id"]
        self.last[tid] = (trial.config, result)
        if self.progress:
            self.progress.result(tid, result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        tid = trial.config["trial_id"]
        self.checkpoints[tid] = checkpoint_uri(checkpoint)
        config, result = self.last.get(tid, (trial.config, trial.last_result or {}))
        if result.get("trial_status", "running") == "running":
            self._write(config, result, Status.INCOMPLETE, resume_from=self.checkpoints[tid])

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finish(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finish(trial, status=Status.ERROR, error=error_message(trial))

    def finish(self, trial, status: str | None = None, error: str | None = None) -> None:
        config, last = trial.config, trial.last_result or {}
        tid = config["trial_id"]
        extra = {}
        if status is None:
            status = last.get("trial_status", Status.INCOMPLETE)
            if status == "running":  # ended without its final report: stopped early by the scheduler
                status, extra = Status.INCOMPLETE, {"stopped_by": "asha", "examples_at_stop": last.get("examples")}
        summary = self._write(config, last, status, error, **extra)
        for path in (self.checkpoints.pop(tid, None), config.get("resume_from")):
            drop_checkpoints(path)  # a finished trial is never resumed
        self.last.pop(tid, None)
        if self.progress:
            self.progress.finished(tid, status, summary)

    def unfinished(self) -> None:
        """At the end of a run: trials that reported but did not end stay ``incomplete`` (with
        their newest checkpoint, if any) until a rerun continues them."""
        for tid, (config, result) in list(self.last.items()):
            self._write(config, result, Status.INCOMPLETE, resume_from=self.checkpoints.get(tid)
                        or config.get("resume_from"))

    def _write(self, config, result, status, error=None, **extra) -> dict[str, Any]:
        measurements = json.loads(result.get("measurements") or "[]")
        summary = json.loads(result.get("summary") or "{}") or {"steps": result.get("step"),
                                                                "examples_seen": result.get("examples")}
        if "peak_lr" not in summary and config.get("peak_lr") is not None:
            summary["peak_lr"] = config["peak_lr"]
        if status not in FINAL:  # what a rerun needs to issue this trial again
            extra["carried"] = {k: config[k] for k in CARRIED if config.get(k) is not None}
            extra = {k: v for k, v in extra.items() if v is not None}
        self.store.record(trial_row(identify(config), status, summary, error, extra), measurements)
        return summary


def drop_checkpoints(path: str | None) -> None:
    """Delete the checkpoints of a trial's folder, given one of them (informative cleanup only).

    Tune keeps every checkpoint of a running trial (``num_to_keep=None``): the store names the
    newest, and a rerun continues from it. Once the trial is final none of them is needed.
    """
    if not path:
        return
    try:
        fs, fs_path = FileSystem.from_uri(path) if "://" in path else (LocalFileSystem(), path)
        folder = posixpath.dirname(fs_path.rstrip("/"))
        for info in fs.get_file_info(FileSelector(folder, allow_not_found=True)):
            if info.type == FileType.Directory and info.base_name.startswith("checkpoint_"):
                fs.delete_dir(info.path)
    except (OSError, ValueError):
        pass


def error_message(trial) -> str:
    """The last line of the trial's latest exception (its type and message)."""
    text = None
    try:  # the driver's local copy is written before the callbacks run; storage is synced later
        if trial.error_file and os.path.exists(trial.error_file):
            text = open(trial.error_file).read().split("Failure # ")[-1]
        else:
            err = trial.get_pickled_error() or trial.get_error()
            text = str(err) if err else None
    except Exception:  # noqa: BLE001 - best effort: the message is informative
        text = None
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "trial failed (no error message recorded)"
