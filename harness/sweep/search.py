"""What a sweep still needs, handed to Ray Tune one trial at a time: the grid's cells and every
tuned study's trials, in one Tune run, so that no slot idles while anything is left to run.

Each tuned study is an Optuna study driven by ask/tell (``StudyRun``): built in memory from the
results store at the start of every run (its finished trials told to the sampler, its unfinished
ones issued again with their own parameters and checkpoints, the rules' start points not yet
tried enqueued), so the store alone decides what a study has done. A study has at most
``tuning.concurrent_trials`` trials running at once; TPE treats the running ones with the
constant-liar heuristic. ``SweepSearcher`` shares the slots between the studies and the grid while
both have trials left (a study's trial when as many grid trials are running as study trials, the
study with most trials left first: its chain of trials is the longest), and gives every slot to
whichever is left. Each finished study is written to ``optuna.db`` (``export_optuna_study``) for
optuna-dashboard.
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Any

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from harness.results.store import FINAL, Status
from harness.sweep.plan import Study
from harness.trial.objective import steps_objective, worst_objective


def counts_against_budget(row: dict[str, Any]) -> bool:
    """A study's trial that is done: final, or stopped early by ASHA."""
    return row["status"] in FINAL or "stopped_by" in json.loads(row.get("extra") or "{}")


def carried(row: dict[str, Any]) -> dict[str, Any]:
    """What an unfinished trial's record keeps of its config (harness.sweep.records)."""
    return json.loads(row.get("extra") or "{}").get("carried", {})


def resume_from(row: dict[str, Any]) -> str | None:
    return json.loads(row.get("extra") or "{}").get("resume_from")


class StudyRun:
    """One tuned study during a run: its Optuna study, and the trials it may still issue."""

    def __init__(self, study: Study, rows: list[dict[str, Any]], *, budget: int, concurrent: int,
                 higher_is_better: bool, sampler_seed: int, warmup_range, base_config: dict[str, Any]):
        self.study, self.budget, self.concurrent = study, budget, concurrent
        self.by_steps = study.objective == "steps"
        self.higher_is_better = higher_is_better
        self.base_config = base_config
        self.dists = {"peak_lr": FloatDistribution(*study.lr_range, log=True)}
        if warmup_range:
            self.dists["warmup_epochs"] = FloatDistribution(*warmup_range, log=True)
        # The rules' predictions are the start-up trials (evaluated first, in the study like any
        # other); TPE models the results from there. Without them, TPE's 10 random start-up trials
        # would make a small study a random search.
        startup = {"n_startup_trials": max(len(study.start_points), 2)} if study.start_points else {}
        sampler = optuna.samplers.TPESampler(seed=sampler_seed + study.batch_size, constant_liar=True, **startup)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna.create_study(study_name=study.name, sampler=sampler,
                                          direction="minimize" if self.minimize else "maximize")
        done = [r for r in rows if counts_against_budget(r)]
        for r in done:
            self.optuna.add_trial(optuna.trial.create_trial(
                params=self._params_of(r), distributions=self.dists, value=self.stored_objective(r)))
        self.resume = [r for r in rows if not counts_against_budget(r)]
        tried = [self._params_of(r) for r in rows]
        self.starts = deque(p for p in study.start_points
                            if not any(math.isclose(p["peak_lr"], t["peak_lr"], rel_tol=1e-9) for t in tried))
        self.used, self.pending = len(done), 0
        self.ids = {r["trial_id"] for r in rows}

    @property
    def minimize(self) -> bool:
        return self.by_steps or not self.higher_is_better

    def _params_of(self, row: dict[str, Any]) -> dict[str, float]:
        kept = {**row, **carried(row)}
        return {k: float(kept[k]) for k in self.dists}

    def stored_objective(self, row: dict[str, Any]) -> float:
        if self.by_steps:
            return steps_objective(row, self.study.budget_steps)
        return row["final_metric"] if row["final_metric"] is not None else worst_objective(self.higher_is_better)

    def left(self) -> int:
        """Trials still to issue (the unfinished ones to continue included)."""
        return self.budget - self.used - self.pending

    def can_issue(self) -> bool:
        return self.left() > 0 and self.pending < self.concurrent

    def issue(self) -> tuple[dict[str, Any], optuna.trial.Trial]:
        """The next trial's config: an unfinished trial again, a start point, or TPE's choice."""
        trial_id, extra = None, {}
        if self.resume:
            row = self.resume.pop(0)
            trial_id, extra = row["trial_id"], {"resume_from": resume_from(row)}
            self.optuna.enqueue_trial(self._params_of(row))
        elif self.starts:
            self.optuna.enqueue_trial({k: v for k, v in self.starts.popleft().items() if k in self.dists})
        ot = self.optuna.ask(self.dists)
        if trial_id is None:
            n = len(self.ids)
            while f"{self.study.name}-t{n}" in self.ids:
                n += 1
            trial_id = f"{self.study.name}-t{n}"
        self.ids.add(trial_id)
        self.pending += 1
        config = {**self.base_config, "trial_id": trial_id, "peak_lr": ot.params["peak_lr"],
                  "warmup_epochs": ot.params.get("warmup_epochs", self.study.warmup_epochs),
                  **{k: v for k, v in extra.items() if v}}
        return config, ot

    def tell(self, ot: optuna.trial.Trial, result: dict[str, Any] | None, error: bool) -> None:
        """What a finished trial gives its study (ASHA-stopped trials tell their objective so far)."""
        self.pending -= 1
        self.used += 1
        value = (result or {}).get("objective")
        if error or value is None or not math.isfinite(value):
            self.optuna.tell(ot, state=TrialState.FAIL)
        else:  # a trial ASHA stopped tells the objective it had reached, as Tune's OptunaSearch does
            self.optuna.tell(ot, value)


#: the candidates' LRs as one Optuna distribution (wide: the search may extend past the range)
LR_DISTRIBUTION = FloatDistribution(1e-12, 1e6, log=True)


class BracketStudyRun:
    """One bracketing study during a run (harness.spec.tuning): every seed of each candidate LR, the
    next candidates decided once the current ones finished. Rebuilt from the store at every run:
    finished trials are results, unfinished ones are issued again from their checkpoints."""

    def __init__(self, study: Study, rows: list[dict[str, Any]], *, higher_is_better: bool,
                 base_configs: dict[int, dict[str, Any]]):
        self.study, self.search, self.higher_is_better = study, study.bracket, higher_is_better
        self.by_steps = study.objective == "steps"
        self.base_configs = base_configs
        self.results: dict[tuple[int, int], float] = {}  # (lattice index, seed) -> objective
        self.resume = [r for r in rows if not counts_against_budget(r)]
        for r in rows:
            if counts_against_budget(r):
                self.results[(self.search.lattice.index(r["peak_lr"]), r["seed"])] = self._objective(r)
        self.running = {(self.search.lattice.index(carried(r).get("peak_lr", r["peak_lr"])), r["seed"])
                        for r in self.resume}
        self.queue: deque[tuple[int, int]] = deque()
        self.optuna_trials: dict[int, optuna.trial.Trial] = {}
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Optuna holds the study (ask/tell; export_optuna_study stores it): every candidate is
        # enqueued, so its sampler never chooses
        self.optuna = optuna.create_study(study_name=study.name, direction="minimize",
                                          sampler=optuna.samplers.RandomSampler(seed=0))
        self.pending = 0

    def _objective(self, row: dict[str, Any]) -> float:
        from harness.spec.tuning import objective

        return objective(row, self.by_steps, self.study.budget_steps, self.higher_is_better)

    def values(self) -> dict[int, tuple[float, float]]:
        """Every candidate that ran every deciding seed: (median, mean) of its seeds' objectives."""
        from harness.spec.tuning import candidate_value

        seeds, out = self.study.search_seeds, {}
        for j in {j for j, _ in self.results}:
            if all((j, s) in self.results for s in seeds):
                out[j] = candidate_value(self.results[(j, s)] for s in seeds)
        return out

    def _refill(self) -> None:
        if self.queue or self.resume or self.pending or self.running:
            return
        tried = {j for j, _ in self.results}
        seeds = self.study.search_seeds
        missing = [(j, s) for j in sorted(tried) for s in seeds if (j, s) not in self.results]
        if missing:  # a grown sweep's new seeds, on every LR tried so far
            self.queue.extend(missing)
            return
        values = self.values()
        todo = self.search.next(values)
        if not todo and values and len(seeds) < len(self.study.seeds):  # select_seeds: first: the search is over,
            from harness.spec.tuning import (
                best_index,  # and its LR runs the other seeds
            )

            best = best_index(values)
            todo_seeds = [(best, s) for s in self.study.seeds if (best, s) not in self.results]
            self.queue.extend(todo_seeds)
            return
        self.queue.extend((j, s) for j in todo for s in seeds)

    def left(self) -> int:
        self._refill()
        if not (self.queue or self.resume or self.pending):
            return 0
        done = len(self.results) + self.pending
        return max(len(self.queue) + len(self.resume), self.study.max_trials - done)

    def can_issue(self) -> bool:
        self._refill()
        return bool(self.queue or self.resume)

    def issue(self) -> tuple[dict[str, Any], tuple[int, int]]:
        extra = {}
        if self.resume:
            row = self.resume.pop(0)
            j, seed = self.search.lattice.index(carried(row).get("peak_lr", row["peak_lr"])), row["seed"]
            trial_id, extra = row["trial_id"], {"resume_from": resume_from(row)}
        else:
            j, seed = self.queue.popleft()
            trial_id = f"{self.study.name}-j{j}-s{seed}"
        if j not in self.optuna_trials:  # one Optuna trial per candidate LR (its value: the seeds' median)
            self.optuna.enqueue_trial({"peak_lr": self.search.lattice.lr(j)})
            self.optuna_trials[j] = self.optuna.ask({"peak_lr": LR_DISTRIBUTION})
        self.pending += 1
        config = {**self.base_configs[seed], "trial_id": trial_id, "peak_lr": self.search.lattice.lr(j),
                  "warmup_epochs": self.study.warmup_epochs, **{k: v for k, v in extra.items() if v}}
        return config, (j, seed)

    def tell(self, token: tuple[int, int], result: dict[str, Any] | None, error: bool) -> None:
        self.pending -= 1
        self.running.discard(token)
        summary = json.loads((result or {}).get("summary") or "{}")
        # a trial without a result (an error) is scored as a miss, as objective() scores an empty row
        self.results[token] = self._objective({} if error else summary)
        j, values = token[0], self.values()
        if j in self.optuna_trials and j in values:
            value = values[j][0]
            self.optuna.tell(self.optuna_trials.pop(j), value if math.isfinite(value) else None,
                             state=TrialState.COMPLETE if math.isfinite(value) else TrialState.FAIL)


class SweepSearcher(Searcher):
    """Every trial a sweep still needs, for one Tune run: the grid's cells and the studies' trials,
    sharing the slots while both have trials left."""

    def __init__(self, cells: list[dict[str, Any]], studies: list[StudyRun], mode: str):
        super().__init__(metric="objective", mode=mode)
        self.cells, self.studies = deque(cells), studies
        self.issued: dict[str, tuple[Any, Any]] = {}  # Tune's trial id -> (its study run, the run's token)
        self.grid_running: set[str] = set()

    def total(self) -> int:
        return len(self.cells) + sum(s.left() for s in self.studies)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        ready = [s for s in sorted(self.studies, key=lambda s: -s.left()) if s.can_issue()]
        if ready and (not self.cells or len(self.issued) <= len(self.grid_running)):
            config, ot = ready[0].issue()
            self.issued[trial_id] = (ready[0], ot)
            return config
        if self.cells:
            self.grid_running.add(trial_id)
            return self.cells.popleft()
        return Searcher.FINISHED if not any(s.left() for s in self.studies) else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.grid_running.discard(trial_id)
        if trial_id in self.issued:
            run, ot = self.issued.pop(trial_id)
            run.tell(ot, result, error)

    # The store is the searcher's state: nothing to save with Tune's experiment (never restored).
    def save(self, checkpoint_path: str) -> None:
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


class StudyASHA(FIFOScheduler):
    """ASHA for each tuned study on its own (rungs in examples seen); grid trials run to the end."""

    def __init__(self, make):
        super().__init__()
        self.make, self.by_study = make, {}

    def _asha(self, trial):
        study = trial.config.get("study")
        if study is None:
            return None
        if study not in self.by_study:
            self.by_study[study] = self.make(study)
        return self.by_study[study]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True

    def on_trial_add(self, tune_controller, trial):
        if asha := self._asha(trial):
            asha.on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        asha = self._asha(trial)
        return asha.on_trial_result(tune_controller, trial, result) if asha else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result):
        if asha := self._asha(trial):
            asha.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial):
        if asha := self._asha(trial):
            asha.on_trial_remove(tune_controller, trial)


def export_optuna_study(study: Study, rows: list[dict], measurements: list[dict], mode: str, storage_url: str,
                        warmup_range) -> None:
    """Write a finished study to SQLite (``optuna-dashboard sqlite:///.../optuna.db``)."""
    try:
        optuna.delete_study(study_name=study.name, storage=storage_url)
    except KeyError:
        pass
    st = optuna.create_study(study_name=study.name, storage=storage_url,
                             direction="maximize" if mode == "max" else "minimize")
    dists = {"peak_lr": FloatDistribution(*study.lr_range, log=True)}
    if warmup_range:
        dists["warmup_epochs"] = FloatDistribution(*warmup_range, log=True)
    curves: dict[str, dict[int, float]] = {}
    for m in measurements:
        if m["metric"] == m["metric"]:
            curves.setdefault(m["trial_id"], {})[int(m["examples"])] = m["metric"]
    states = {Status.COMPLETE: TrialState.COMPLETE, Status.INCOMPLETE: TrialState.PRUNED}
    by_steps = study.objective == "steps"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for t in rows:  # in the order they finished
        state = states.get(t["status"], TrialState.FAIL)
        curve = curves.get(t["trial_id"], {})
        st.add_trial(optuna.trial.create_trial(
            params={k: t[k] for k in dists}, distributions=dists,
            intermediate_values={} if by_steps else curve,  # the metric's curve, not the objective's
            value=(steps_objective(t, study.budget_steps) if by_steps else t["final_metric"])
            if state == TrialState.COMPLETE else None, state=state,
            user_attrs={"trial_id": t["trial_id"], "status": t["status"], "batch_size": t["batch_size"]}))


def export_bracket_study(study: Study, values: dict[float, tuple[float, float]], storage_url: str) -> None:
    """A bracketing study to SQLite: one Optuna trial per candidate LR, its value the seeds' median
    objective on the validation split (``optuna-dashboard sqlite:///.../optuna.db``)."""
    try:
        optuna.delete_study(study_name=study.name, storage=storage_url)
    except KeyError:
        pass
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    st = optuna.create_study(study_name=study.name, storage=storage_url, direction="minimize")
    for lr, (median, mean) in sorted(values.items()):
        finite = math.isfinite(median)
        st.add_trial(optuna.trial.create_trial(
            params={"peak_lr": lr}, distributions={"peak_lr": LR_DISTRIBUTION}, value=median if finite else None,
            state=TrialState.COMPLETE if finite else TrialState.FAIL,
            user_attrs={"mean_over_seeds": mean, "seeds": list(study.seeds), "batch_size": study.batch_size}))
