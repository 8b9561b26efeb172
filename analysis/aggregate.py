"""Aggregation of a results store: one row per (workload, optimizer, method, batch size).

Over seeds: final and best metric (mean, std, 95% confidence half-width from Student's t when
there are several seeds); steps, examples and training seconds to target as medians in which a
miss counts as infinitely late, so that a cell where most seeds missed reads "not reached" rather
than the median of the lucky ones; how many seeds reached it; the divergence rate; speedups against
the base batch size of the same optimizer and method; the resolved peak LR and warmup.

A ``tuned`` cell is the LR its bracketing study selected (harness.spec.tuning.select: the best median
over seeds of the validation split's objective: fewest steps to the target under steps_to_result,
best final metric under fixed_epochs), evaluated over all seeds, so it aggregates like the rule
methods; the test split only reports. Stores of the older per-seed TPE studies keep their rule:
per seed, the best trial of that seed's study (selected on the metric the tables report).
``best_peak_lr`` is the LR of the selected trials.

The protocol's budget table (``sweep.json``: ``protocol.budgets``, see harness.sweep.protocol) adds per
cell whether the budget could reach the target at all (``feasible``: True, False, or None when it
was not checked; True wherever some arm of the same optimizer reached the target at that batch
size), the step budget, the evaluation interval k, and the resolution the steps to the target got
((k - 1) / steps: the first evaluation at the target is at most k - 1 steps late).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from analysis.outcome import _extra, chance_metric, outcomes
from harness.results.store import FINAL, RAN_TO_END, ResultsStore, Status
from harness.spec.sweep import arm_label
from harness.spec.tuning import select
from harness.sweep.protocol import best_trial

KEYS = ["workload", "optimizer", "method", "batch_size"]


@dataclass
class Results:
    root: Path
    meta: dict
    trials: pd.DataFrame
    measurements: pd.DataFrame

    @property
    def metric(self) -> str:
        return self.meta["workload"]["metric"]

    @property
    def higher_is_better(self) -> bool:
        return bool(self.meta["workload"]["higher_is_better"])

    @property
    def target(self) -> dict | None:
        return self.meta["spec_resolved"].get("target")

    @property
    def protocol(self) -> dict:
        """The protocol the sweep ran under, with its budget table (empty for older sweeps)."""
        given = (self.meta["spec_resolved"].get("protocol") or {})
        out = {"kind": given.get("kind", "fixed_epochs"), "checked": False, "budgets": [], "estimates": {}}
        out.update(self.meta.get("protocol") or {})
        return out

    @property
    def base_batch_size(self) -> int:
        """B0 of the recipe when the sweep ran it, else the sweep's smallest batch size."""
        b0s = {r["base_batch_size"] for r in self.meta["workload"]["base_recipes"].values()}
        batches = sorted(self.meta["spec_resolved"]["axes"]["batch_sizes"])
        common = sorted(b0s & set(batches))
        return common[0] if common else batches[0]


def rule_of(label: str) -> str:
    """The LR/warmup method of a series name (``tuned:conadv`` -> ``tuned``)."""
    return label.split(":")[0]


def is_tuned(labels: pd.Series) -> pd.Series:
    return labels.map(rule_of) == "tuned"


def load_results(root: str | Path) -> Results:
    """The store, with each trial's ``outcome`` (analysis.outcome) and its model-only pace. A
    trial's ``method`` is its series name (``arm_label``); ``rule`` keeps the LR/warmup method."""
    meta, trials, measurements = ResultsStore(root).load()
    trials["rule"] = trials.method
    trials["method"] = [arm_label(m, a, g) for m, a, g in zip(trials.method, trials.augment, trials.dp_algorithm)]
    hib = bool(meta["workload"]["higher_is_better"])
    trials = outcomes(trials, measurements, chance_metric(meta), hib)
    for key in ("model_step_seconds", "model_throughput", "timing_steps"):
        trials[key] = _extra(trials, key)
    # training seconds to the target at the model's own pace: the steps it took times its step time
    # measured without the noise measurement (harness.trial.loop.Trial.timing_step); older stores, which
    # did not measure it, keep their recorded seconds (and the report says so)
    paced = trials.model_step_seconds.notna() & trials.steps_to_target.notna()
    trials["seconds_to_target_recorded"] = trials.seconds_to_target
    trials.loc[paced, "seconds_to_target"] = trials.steps_to_target[paced] * trials.model_step_seconds[paced]
    return Results(Path(root), meta, trials, measurements)


def timing_source(res: Results) -> str:
    """How the report's seconds and throughputs were measured, in one sentence."""
    t = res.trials[res.trials.status.isin(RAN_TO_END)]
    if len(t) and t.timing_steps.notna().all():  # (a run that diverged within 8 steps timed none: nothing to show)
        return ("training seconds exclude evaluation and the noise-scale measurement: each trial's steps times its "
                "mean step time on steps run without the measurement (every 8th step, or all when it is off; "
                "AdaScale's own measurement is part of its cost)")
    if len(t) and t.timing_steps.notna().any():
        return ("training seconds exclude evaluation; the noise-scale measurement is excluded where the trial timed "
                "steps without it, and included in the others (older trials)")
    return ("training seconds exclude evaluation but include the noise-scale measurement (this store predates the "
            "model-only timing): batch sizes that were split only for the measurement look slower than they are")


def eval_grid(res: Results) -> str:
    """The sweep's evaluation interval in words (the spec's ``eval``)."""
    ev = res.meta["spec_resolved"].get("eval") or {}
    if ev.get("every_examples"):
        return f"every {ev['every_examples']:,} examples"
    return f"{ev.get('per_epoch', 'a few')} per epoch"


def series_order(res: Results) -> list[tuple[str, str, str]]:
    """(label, optimizer, method) of every series the trials have, in the spec's order: optimizers,
    then methods within each; a label carries the optimizer only when there are several."""
    axes = res.meta["spec_resolved"]["axes"]
    present = set(zip(res.trials.optimizer, res.trials.method))
    optimizers = [o for o in (axes.get("optimizers") or sorted(res.trials.optimizer.unique()))
                  if any(o == p[0] for p in present)]
    optimizers += sorted({o for o, _ in present} - set(optimizers))
    spec = res.meta["spec_resolved"]
    arms = [(a, g) for a in axes.get("augment") or [(spec.get("augment") or {}).get("kind", "none")]
            for g in axes.get("algorithm") or [(spec.get("data_parallel") or {}).get("algorithm", "allreduce")]]
    planned = [arm_label(m, a, g) for m in axes["methods"] for a, g in arms]
    methods = planned + sorted({m for _, m in present} - set(planned))
    return [(cell_label(o, m, optimizers), o, m) for o in optimizers for m in methods if (o, m) in present]


def _select_seeds(res: Results) -> str:
    """``tuning.select_seeds`` of the sweep (stores before it existed: ``all``)."""
    return ((res.meta.get("spec_resolved") or {}).get("tuning") or {}).get("select_seeds", "all")


def representative_trials(res: Results) -> pd.DataFrame:
    """Rule-method trials as they are; for ``tuned``, the best trial of each study."""
    t = res.trials
    rules = t[~is_tuned(t.method)]
    tuned = t[is_tuned(t.method)]
    if tuned.empty:
        return rules.copy()
    by_steps = res.protocol["kind"] == "steps_to_result"
    budgets = {(r["optimizer"], r["batch_size"]): r.get("budget_steps") for r in res.protocol.get("budgets", [])}
    picked = []
    for _, study in tuned.groupby("study"):
        if study.seed.nunique() > 1:  # one LR for every seed (harness.spec.tuning): that LR's trials, all seeds
            rows = study[study.status.isin(FINAL)].to_dict("records")
            first = rows[0] if rows else study.iloc[0]
            lr, _ = select(rows, by_steps, budgets.get((first["optimizer"], first["batch_size"])), res.higher_is_better,
                           _select_seeds(res))
            if lr is not None:
                picked.append(study[np.isclose(study.peak_lr.astype(float), lr, rtol=1e-6)
                                    & study.status.isin(FINAL)])
                continue
        ok = study[(study.outcome == "complete") & study.final_metric.notna()]
        if ok.empty:  # every finished trial failed: the least bad of them
            ok = study[(study.status == Status.COMPLETE) & study.final_metric.notna()]
        if ok.empty:  # every trial diverged or failed: the study's result is that
            picked.append(study.iloc[[0]])
        else:
            rows = [{**r, "target_reached": bool(pd.notna(r["target_reached"]) and r["target_reached"])}
                    for r in ok.to_dict("records")]
            best = best_trial(rows, res.higher_is_better, by_steps)
            picked.append(ok[ok.trial_id == best["trial_id"]])
    return pd.concat([rules, *picked], ignore_index=True)


def _ci95(values: pd.Series) -> float:
    v = values.dropna()
    if len(v) < 2:
        return math.nan
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def _median_with_misses(values: pd.Series) -> float:
    """Median over seeds where a miss (NaN) is +inf: inf means most seeds did not reach it."""
    return float(np.median(values.astype(float).fillna(np.inf))) if len(values) else math.nan


def aggregate(res: Results) -> pd.DataFrame:
    reps = representative_trials(res)
    rows = []
    for key, g in reps.groupby(KEYS, sort=True):
        finished = g[g.status.isin(RAN_TO_END)]
        row = dict(zip(KEYS, key))
        row.update(
            seeds=len(g),
            complete=int((g.outcome == "complete").sum()),  # clean: neither failed nor diverged
            failed=int((g.outcome == "failed").sum()),
            diverged=int((g.status == Status.DIVERGED).sum()),
            errors=int((g.status == Status.ERROR).sum()),
            incomplete=int((g.status == Status.INCOMPLETE).sum()),
            divergence_rate=float((finished.status == Status.DIVERGED).mean()) if len(finished) else math.nan,
            failure_rate=float((finished.outcome == "failed").mean()) if len(finished) else math.nan,
            final_mean=g.final_metric.mean(),
            final_std=g.final_metric.std(ddof=1) if g.final_metric.count() > 1 else math.nan,
            final_ci95=_ci95(g.final_metric),
            best_mean=g.best_metric.mean(),
            reached=int(g.target_reached.fillna(False).astype(bool).sum()),
            steps_to_target=_median_with_misses(g.steps_to_target),
            examples_to_target=_median_with_misses(g.examples_to_target),
            seconds_to_target=_median_with_misses(g.seconds_to_target),
            peak_lr=g.peak_lr.mean(),
            warmup_epochs=g.warmup_epochs.mean(),
            warmup_steps=g.warmup_steps.median(),
            total_steps=g.total_steps.median(),
            train_seconds=g.train_seconds.mean(),
            throughput=(g.model_throughput if g.model_throughput.notna().any() else g.throughput).mean(),
        )
        row["best_peak_lr"] = row["peak_lr"] if rule_of(key[2]) == "tuned" else math.nan
        rows.append(row)
    agg = pd.DataFrame(rows)
    if agg.empty:
        return agg
    base = res.base_batch_size
    for col, out in (("steps_to_target", "speedup_steps"), ("seconds_to_target", "speedup_time")):
        ref = agg[agg.batch_size == base].set_index(["workload", "optimizer", "method"])[col]
        refs = agg.set_index(["workload", "optimizer", "method"]).index.map(lambda k: ref.get(k, math.nan))
        own = agg[col].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.asarray(refs, dtype=float) / own
        # a miss (inf) on either side has no speedup, not a speedup of 0 or inf
        agg[out] = np.where(np.isfinite(ratio) & np.isfinite(own) & (ratio > 0), ratio, math.nan)
    agg["scale"] = agg.batch_size / base
    budgets = {(r["optimizer"], r["batch_size"]): r for r in res.protocol.get("budgets", [])}
    # a batch size where any arm reached the target has shown that its budget can: measurable whatever
    # the prediction said (the prediction is a margin over a lower bound)
    reached = set(zip(agg.optimizer[agg.reached > 0], agg.batch_size[agg.reached > 0]))
    agg["feasible"] = [True if (o, b) in reached and budgets.get((o, b), {}).get("feasible") is False
                       else budgets.get((o, b), {}).get("feasible") for o, b in zip(agg.optimizer, agg.batch_size)]
    agg["budget_steps"] = [budgets.get((o, b), {}).get("budget_steps", math.nan)
                           for o, b in zip(agg.optimizer, agg.batch_size)]
    agg["eval_every_steps"] = [budgets.get((o, b), {}).get("eval_every_steps", math.nan)
                               for o, b in zip(agg.optimizer, agg.batch_size)]
    with np.errstate(divide="ignore", invalid="ignore"):
        # read every k steps, the first evaluation at the target is at most k - 1 steps late
        agg["resolution"] = np.where(np.isfinite(agg.steps_to_target), (agg.eval_every_steps.astype(float) - 1)
                                     / agg.steps_to_target, math.nan)
    return agg


def cell_label(optimizer: str, method: str, optimizers: list[str]) -> str:
    """Column name of a table: the method, prefixed by the optimizer when there are several."""
    return f"{optimizer}/{method}" if len(optimizers) > 1 else method
