"""The driver's side of Tune: a callback that writes each finished trial to the results store.

Its own module so that the callback class is importable: Tune pickles callbacks with the
experiment state, and a class pickled by reference finds the *current* driver's store and view
in ``DRIVER`` after a restore, instead of dragging the old ones along.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from pyarrow.fs import FileSelector, FileType
from ray import tune
from ray.tune.search import Searcher

from harness.store import FINAL

#: The running driver's ``store`` (ResultsStore), ``progress`` (view or None), ``finished``
#: (trial ids already final in the store) and ``running`` (trial_id -> (identity, last result))
#: of trials that reported but did not end yet.
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

    @staticmethod
    def identify(trial) -> dict[str, Any]:
        cfg = trial.config.get("cell", trial.config)
        t = cfg["trial"]
        meta = {"workload": t["workload"], "optimizer": t["optimizer"], "method": t["method"],
                "batch_size": t["batch_size"], "seed": t["seed"]}
        if "trial_id" in cfg:
            meta["trial_id"] = cfg["trial_id"]
        else:  # a searcher's trial: Tune's id is stable across restores
            meta.update(trial_id=f"{cfg['study']}-{trial.trial_id}", study=cfg["study"])
        return meta

    def on_trial_result(self, iteration, trials, trial, result, **info):
        meta = self.identify(trial)
        DRIVER.setdefault("running", {})[meta["trial_id"]] = (meta, result)
        if DRIVER.get("progress"):
            DRIVER["progress"].result(meta["trial_id"], result)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        DRIVER.setdefault("checkpoints", {})[trial.trial_id] = checkpoint

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.record(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.record(trial, status="error", error=error_message(trial))

    def record(self, trial, status: str | None = None, error: str | None = None) -> None:
        meta = self.identify(trial)
        if meta["trial_id"] in DRIVER.get("finished", set()):  # replayed from the registry: already stored
            DRIVER.get("running", {}).pop(meta["trial_id"], None)
            return
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
        if status in FINAL:
            DRIVER.setdefault("finished", set()).add(meta["trial_id"])
            drop_checkpoints(DRIVER.get("checkpoints", {}).pop(trial.trial_id, None))
        DRIVER.get("running", {}).pop(meta["trial_id"], None)
        if DRIVER.get("progress"):
            DRIVER["progress"].finished(meta["trial_id"], status, summary)


class StudyBudget(Searcher):
    """Keeps a tuned study at its planned number of trials across restores.

    Tune's experiment snapshot lags the truth by a few seconds: after a killed driver, a restored
    study does not know trials that started (and maybe finished) after the snapshot, and would
    suggest replacements. This wrapper stops suggesting once the trials finished in the results
    store plus those suggested and not yet finished reach the study's budget; its own record of
    the latter is saved with the searcher.
    """

    def __init__(self, searcher: Searcher, study: str, budget: int):
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher, self.study, self.budget = searcher, study, budget
        self.live: set[str] = set()

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def _finished(self) -> set[str]:
        prefix = f"{self.study}-"
        return {tid[len(prefix):] for tid in DRIVER.get("finished", ()) if tid.startswith(prefix)}

    def suggest(self, trial_id: str):
        if len(self._finished() | self.live) >= self.budget:
            return Searcher.FINISHED
        config = self.searcher.suggest(trial_id)
        if config not in (None, Searcher.FINISHED):
            self.live.add(trial_id)
        return config

    # Tune's experiment state and the searcher's are saved (and copied to storage) one after the
    # other: after a killed driver, a restored experiment may hold a trial its searcher never
    # suggested. The store records it; the searcher's model goes without it (OptunaSearch would
    # raise KeyError).
    def on_trial_result(self, trial_id: str, result: dict) -> None:
        try:
            self.searcher.on_trial_result(trial_id, result)
        except KeyError:
            pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.live.discard(trial_id)
        try:
            self.searcher.on_trial_complete(trial_id, result=result, error=error)
        except KeyError:
            pass

    # Tune saves a wrapper's own state with get_state/set_state and the wrapped searcher's itself.
    def get_state(self) -> dict:
        return {"study": self.study, "budget": self.budget, "live": sorted(self.live)}

    def set_state(self, state: dict) -> None:
        self.study, self.budget, self.live = state["study"], state["budget"], set(state["live"])

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def drop_checkpoints(latest) -> None:
    """Delete a finished trial's checkpoints (it is never resumed: the registry replays it).

    Tune keeps every checkpoint of a running trial (``num_to_keep=None``): its experiment
    snapshot, written every few seconds, may point at an older checkpoint than the newest, and a
    restore from a deleted one fails. Once the trial is in our store, none of them is needed.
    """
    if latest is None:
        return
    fs, folder = latest.filesystem, posixpath.dirname(latest.path.rstrip("/"))
    try:
        for info in fs.get_file_info(FileSelector(folder)):
            if info.type == FileType.Directory and info.base_name.startswith("checkpoint_"):
                fs.delete_dir(info.path)
    except OSError:
        pass  # informative cleanup only


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
