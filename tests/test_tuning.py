"""The tuned arm: the bracketing search of the peak LR finds what a dense grid finds, with a fraction
of its trials; it is deterministic; selection is on the validation split, over the seeds' median;
the validation split is held out of the training data."""

from __future__ import annotations

import functools
import math

import pandas as pd
import pytest
import torch

from harness.spec import SweepSpec, TrialSpec
from harness.sweep.plan import plan
from harness.trial.loop import Trial
from harness.spec.tuning import BracketSearch, Lattice, PENALTY, candidate_value, objective, select

ETA0 = 0.0707  # teacher_regression's base LR at B0 = 256
OPTIONS = {"n_train": 2**15, "dim": 16}  # a small teacher: an 18-point dense grid at 3 batch sizes in ~15 s
MAX_STEPS = 1200


@functools.lru_cache(maxsize=None)
def steps_to_target(batch: int, j: int) -> float:
    """Steps of a teacher_regression trial at lattice LR j to excess risk 0.05 (PENALTY x the
    budget when it misses or diverges), evaluated at every step."""
    lr = Lattice(ETA0 / 2).lr(j)
    spec = TrialSpec(workload="teacher_regression", workload_options=OPTIONS, method="tuned", optimizer="sgd",
                     batch_size=batch, seed=0, peak_lr=lr, warmup_epochs=0.0, noise_scale=False,
                     budget={"examples": batch * MAX_STEPS}, eval={"every_examples": batch},
                     target={"metric": "excess_risk", "value": 0.05, "stop": True}, micro_batch_cap=batch, threads=1)
    s = Trial(spec).run().summary
    return objective(s, True, MAX_STEPS, False)


def run_search(batch: int) -> tuple[dict[int, tuple], BracketSearch]:
    k = batch / 256
    search = BracketSearch(Lattice(ETA0 / 2), ETA0 / 2, ETA0 * k * 2)
    values: dict[int, tuple] = {}
    while todo := search.next(values):
        for j in todo:
            values[j] = candidate_value([steps_to_target(batch, j)])
    return values, search


@pytest.mark.parametrize("batch", [256, 1024, 4096])
def test_the_bracketing_search_finds_the_dense_grids_best_lr_with_a_fraction_of_its_trials(batch):
    torch.set_num_threads(1)
    dense = {j: candidate_value([steps_to_target(batch, j)]) for j in range(-2, 16)}  # 18 LRs, factor sqrt 2
    best_dense = min(dense, key=lambda j: (*dense[j], j))
    assert dense[best_dense][0] < PENALTY * MAX_STEPS  # the grid has an answer
    values, search = run_search(batch)
    best = min(values, key=lambda j: (*values[j], j))
    assert abs(best - best_dense) <= 1, (batch, best, best_dense, values)  # within one grid spacing
    assert values[best][0] <= dense[best_dense][0] * 1.1  # and as good, up to the evaluation's resolution
    assert len(values) <= 0.6 * len(dense), (len(values), sorted(values))
    b = search.bracket(values)
    assert b["bracketed"] and b["spacing_below"] == b["spacing_above"] == pytest.approx(math.sqrt(2))
    assert run_search(batch)[0] == values  # deterministic: the same LRs, the same values


def test_the_coarse_stage_tries_the_rules_predictions_which_lie_on_the_lattice():
    spec = SweepSpec.model_validate({"workload": "teacher_regression", "axes": {"batch_sizes": [256, 8192],
                                                                                 "methods": ["tuned"]}})
    p = plan(spec, 2**20)
    for study in p.studies:
        k = study.batch_size / 256
        lattice = study.bracket.lattice
        rules = [ETA0, ETA0 * k**0.5, ETA0 * k]  # none, sqrt, linear
        assert all(abs(lattice.lr(lattice.index(lr)) / lr - 1) < 1e-9 for lr in rules)  # on the lattice
        assert {lattice.index(lr) for lr in rules} <= set(study.bracket.coarse_indices())
        lo, hi = study.lr_range
        assert lo == pytest.approx(ETA0 / 2) and hi == pytest.approx(2 * ETA0 * k)  # none/2 .. linear x 2


def test_the_search_extends_an_edge_only_where_the_best_beats_its_neighbour():
    search = BracketSearch(Lattice(1.0), 1.0, 16.0, coarse=4, max_extensions=2)
    assert search.coarse_indices() == [0, 4, 8]
    # monotone: the largest LR is best -> one coarse step beyond it, twice, then no more
    values = {j: (100.0 - j,) for j in (0, 4, 8)}
    assert search.next(values) == [4 + 2, 12]  # the gap below the best is refined at the same time
    values.update({6: (94.0,), 12: (88.0,)})
    assert 16 in search.next(values)
    values.update({j: (100.0 - j,) for j in search.next(values)})
    assert not any(j > 16 for j in search.next(values))  # max_extensions reached: stays open
    assert search.bracket(values)["edge"] == "high" and not search.bracket(values)["bracketed"]
    # a flat low edge (every small LR missed) is not extended
    flat = {0: (50.0,), 4: (50.0,), 8: (60.0,)}
    assert all(j >= 0 for j in search.next(flat))


def test_the_tuned_lr_is_selected_on_the_validation_split_over_the_seeds_median():
    def row(lr, seed, valid, test):
        return {"peak_lr": lr, "seed": seed, "status": "complete", "final_metric": test, "valid_final_metric": valid,
                "valid_target_reached": valid > 0.5}
    # LR 0.1 is better on the test split, 0.2 on the validation split: the validation split decides
    rows = [row(0.1, s, 0.80, 0.95) for s in range(3)] + [row(0.2, s, 0.90, 0.85) for s in range(3)]
    lr, values = select(rows, by_steps=False, budget_steps=None, higher_is_better=True)
    assert lr == 0.2 and values[0.2][0] == pytest.approx(-0.90)
    # the median over seeds: one lucky seed does not carry an LR
    rows = [row(0.1, 0, 0.99, 0.9), row(0.1, 1, 0.70, 0.9), row(0.1, 2, 0.70, 0.9)] + \
           [row(0.2, s, 0.80, 0.9) for s in range(3)]
    assert select(rows, False, None, True)[0] == 0.2
    # an LR that has not run every seed is not a candidate yet
    assert select(rows + [row(0.3, 0, 0.999, 0.99)], False, None, True)[0] == 0.2
    # steps: a miss on the validation split counts as PENALTY x the budget
    assert objective({"valid_target_reached": False, "valid_steps_to_target": None, "target_reached": True,
                      "steps_to_target": 10}, True, 100, True) == PENALTY * 100


def test_the_aggregate_reports_the_selected_lr_on_every_seed_from_the_test_split():
    from analysis.aggregate import Results, representative_trials

    rows = []
    for lr, valid, test in ((0.1, 0.80, 0.95), (0.2, 0.90, 0.85)):
        for s in range(3):
            rows.append({"trial_id": f"sgd-tuned-b256-lr{lr}-s{s}", "study": "sgd-tuned-b256", "method": "tuned",
                         "optimizer": "sgd", "batch_size": 256, "seed": s, "peak_lr": lr, "status": "complete",
                         "outcome": "complete", "final_metric": test + s / 1000, "extra": f'{{"valid_final_metric": {valid}}}'})
    meta = {"workload": {"higher_is_better": True, "metric": "accuracy", "base_recipes": {}},
            "spec_resolved": {"axes": {"batch_sizes": [256]}, "protocol": {"kind": "fixed_epochs"}}}
    res = Results(None, meta, pd.DataFrame(rows), pd.DataFrame())
    picked = representative_trials(res)
    assert sorted(picked.seed) == [0, 1, 2] and set(picked.peak_lr) == {0.2}
    assert picked.final_metric.mean() == pytest.approx(0.851)  # reported on the test split


def test_a_sweep_with_a_tuned_arm_holds_out_a_validation_split_and_plans_one_study_per_batch_size():
    spec = SweepSpec.model_validate({"workload": "mnist1d_mlp", "workload_options": {"n_train": 2000, "n_test": 500},
                                     "axes": {"batch_sizes": [128, 512], "methods": ["legw", "tuned"], "seeds": [0, 1, 2]}})
    assert spec.validation.fraction == 0.1
    wl = spec.workload_obj()
    data = wl.load()
    assert data.train_size == 1800 == wl.train_size() and len(data.valid[0]) == 200
    full = spec.model_copy(update={"validation": spec.validation.model_copy(update={"fraction": 0.0})}).workload_obj().load()
    rows = {tuple(r.tolist()) for r in full.train[0]}
    assert all(tuple(r.tolist()) in rows for r in data.valid[0])  # held out of the training data ...
    kept = {tuple(r.tolist()) for r in data.train[0]}
    assert not any(tuple(r.tolist()) in kept for r in data.valid[0])  # ... and not trained on
    p = plan(spec, data.train_size)
    assert [s.name for s in p.studies] == ["momentum-tuned-b128", "momentum-tuned-b512"]
    assert all(s.seeds == [0, 1, 2] and s.trials_by_seed[1]["validation"]["evaluate"] for s in p.studies)
    assert not any(t["validation"]["evaluate"] for t in p.grid.values())  # rule arms do not pay for it
    # without a tuned arm nothing is held out
    plain = SweepSpec.model_validate({"workload": "mnist1d_mlp", "axes": {"methods": ["legw"]}})
    assert plain.validation.resolved_fraction() == 0.0


def test_a_tuned_trial_measures_the_validation_split_and_stops_when_both_splits_reached_the_target():
    spec = TrialSpec(workload="mnist1d_mlp", workload_options={"n_train": 3000, "n_test": 500}, method="tuned",
                     optimizer="momentum", batch_size=128, seed=0, peak_lr=0.2, warmup_epochs=0.1,
                     validation={"fraction": 0.2, "evaluate": True}, budget={"epochs": 3}, eval={"per_epoch": 4},
                     target={"metric": "accuracy", "value": 0.3, "stop": True}, threads=1)
    r = Trial(spec).run()
    s = r.summary
    assert s["valid_final_metric"] is not None and s["valid_target_reached"] is not None
    assert all("valid_metric" in m for m in r.measurements)
    assert any(m["valid_metric"] != m["metric"] for m in r.measurements)  # two splits, two numbers
    if s["status"] == "complete" and s["steps"] < r.recipe.total_steps:  # stopped early: both splits were there
        assert s["target_reached"] and s["valid_target_reached"]


def _bracket_run(mode: str):
    """Drive one bracketing study (B=1024, 3 seeds) against a made-up objective whose optimum is LR
    0.3 at every seed: (study, tokens issued, rows, selected LR)."""
    import json
    import math as m

    from harness.sweep.search import BracketStudyRun

    spec = SweepSpec.model_validate({"workload": "teacher_regression", "workload_options": OPTIONS,
                                     "axes": {"batch_sizes": [1024], "methods": ["tuned"], "seeds": [0, 1, 2]},
                                     "tuning": {"select_seeds": mode}})
    study = plan(spec, 2**15).studies[0]
    run = BracketStudyRun(study, [], higher_is_better=False, base_configs={s: {} for s in (0, 1, 2)})
    issued, rows = [], []
    while run.left():
        assert run.can_issue()
        config, token = run.issue()
        value = m.log2(config["peak_lr"] / 0.3) ** 2 + 0.01 * token[1]
        issued.append(token)
        rows.append({"peak_lr": config["peak_lr"], "seed": token[1], "status": "complete", "final_metric": value,
                     "valid_final_metric": value})
        run.tell(token, {"summary": json.dumps({"valid_final_metric": value, "final_metric": value})}, False)
    return study, issued, rows, select(rows, False, None, False, mode)[0]


def test_select_seeds_first_searches_on_the_first_seed_then_runs_the_chosen_lr_on_the_others():
    """``tuning.select_seeds: first``: every candidate LR runs seed 0 only; once the bracket closes, the
    LR it chose runs seeds 1 and 2. The same LRs are tried, and the same chosen, as when every seed
    decides (the optimum does not depend on the seed here), with a third of the trials plus two."""
    study, issued, rows, lr = _bracket_run("first")
    _, issued_all, _, lr_all = _bracket_run("all")
    tried = sorted({j for j, s in issued if s == 0})
    chosen = study.bracket.lattice.index(lr)
    assert lr == lr_all and abs(lr / 0.3 - 1) < 0.2 and chosen in tried
    assert sorted(issued_all) == sorted((j, s) for j in tried for s in (0, 1, 2))
    assert sorted(issued) == sorted([(j, 0) for j in tried] + [(chosen, 1), (chosen, 2)])
    assert len(issued) == len(tried) + 2 <= study.max_trials < len(issued_all)
    # the aggregate's selection reads the first seed: an LR seeds 1 and 2 alone would prefer does not count
    rows += [{"peak_lr": study.bracket.lattice.lr(chosen + 1), "seed": s, "status": "complete", "final_metric": -1.0,
              "valid_final_metric": -1.0} for s in (1, 2)]
    assert select(rows, False, None, False, "first")[0] == lr


def test_sqrt_or_linear_says_when_the_interval_cannot_tell_them_apart():
    from analysis.tuning import lr_scaling_sentence

    def fit(alpha, half):
        return {"method": "tuned", "alpha": alpha, "half_width": half, "points": 5, "scope": "below B_crit",
                "b_max": 4096, "plateau_from": 4096}

    assert "cannot tell them apart" in lr_scaling_sentence([fit(0.80, 0.41)])  # the default study's fit
    assert "consistent with Linear (alpha = 1), not Sqrt" in lr_scaling_sentence([fit(0.95, 0.2)])
    assert "consistent with Sqrt (alpha = 0.5), not Linear" in lr_scaling_sentence([fit(0.55, 0.2)])
    assert "neither Sqrt nor Linear" in lr_scaling_sentence([fit(0.75, 0.1)])
