"""Claim verdicts that weigh the seeds' noise (analysis.reproduce): every kind is not measurable
inside the noise and decided outside it, "within" is met by a better result, divergence decides a
comparison only against a clean arm, and a threshold stricter than the target needs a budget that
can reach it. Hand-made Results (no store, no training), plus the committed DecentLaM studies."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from analysis.aggregate import Results, aggregate, load_results
from analysis.reproduce import FAILS, HOLDS, UNMEASURABLE, judge, judge_all, verdict_table

ROOT = Path(__file__).resolve().parents[1]
B0 = 128


def results(cells: dict, *, hib: bool = True, target: float = 0.85, infeasible: tuple[int, ...] = (),
            claims: list | None = None, tuned: dict | None = None) -> Results:
    """``cells``: {(method, batch): finals by seed} as a list (seeds 0, 1, ...) or {seed: final}; a final
    of None diverged, ("failed", x) completed at x but learned nothing. ``tuned``: {batch: {lr: finals}},
    one study per batch over all seeds. ``infeasible``: batch sizes the pilot said the budget cannot
    reach the target at."""
    rows = []

    def add(method, b, seed, final, study=None, lr=0.1):
        outcome = "diverged" if final is None else "failed" if isinstance(final, tuple) else "complete"
        value = None if final is None else final[1] if isinstance(final, tuple) else final
        reached = value is not None and outcome == "complete" and (value >= target if hib else value <= target)
        rows.append({"trial_id": f"{method}-{b}-{seed}-{lr}", "workload": "w", "optimizer": "momentum",
                     "method": method, "batch_size": b, "seed": seed, "study": study, "peak_lr": lr,
                     "status": "diverged" if final is None else "complete", "outcome": outcome,
                     "final_metric": value, "best_metric": value, "target_reached": reached,
                     "steps_to_target": 100.0 if reached else math.nan,
                     "examples_to_target": 100.0 * b if reached else math.nan,
                     "seconds_to_target": 1.0 if reached else math.nan, "warmup_epochs": 0.1, "warmup_steps": 5,
                     "total_steps": 1000, "train_seconds": 10.0, "model_throughput": 100.0, "throughput": 100.0})

    for (method, b), finals in cells.items():
        for seed, final in (finals.items() if isinstance(finals, dict) else enumerate(finals)):
            add(method, b, seed, final)
    for b, by_lr in (tuned or {}).items():
        for lr, finals in by_lr.items():
            for seed, final in enumerate(finals):
                add("tuned", b, seed, final, study=f"momentum-tuned-b{b}", lr=lr)
    batches = sorted({b for _, b in cells} | set(tuned or {}))
    meta = {"name": "t", "status": "finished",
            "workload": {"name": "w", "metric": "accuracy" if hib else "perplexity", "higher_is_better": hib,
                         "dataset_size": 10_000, "base_recipes": {"momentum": {"base_batch_size": B0}}},
            "spec_resolved": {"axes": {"batch_sizes": batches, "methods": sorted({m for m, _ in cells}),
                                       "optimizers": ["momentum"], "seeds": [0, 1, 2]},
                              "target": {"metric": "accuracy", "value": target}, "protocol": {"kind": "fixed_epochs"},
                              "claims": claims or []},
            "protocol": {"kind": "fixed_epochs", "checked": True, "estimates": {}, "budgets": [
                {"optimizer": "momentum", "batch_size": b, "feasible": b not in infeasible, "budget_steps": 1000,
                 "eval_every_steps": 10} for b in batches]}}
    return Results(Path("hand-made"), meta, pd.DataFrame(rows), pd.DataFrame())


def verdict(res: Results, kind: str, **params):
    return judge(res, aggregate(res), {"id": "c", "text": "c", "kind": kind, "params": params})


def test_the_interval_is_students_t_over_paired_seeds_or_welch_when_the_seeds_differ():
    assert stats.t.ppf(0.95, 2) == pytest.approx(2.92, abs=0.005)
    # per-seed differences 1, 2, 3 points: mean 2, sd 1, half-width 2.92 / sqrt(3)
    res = results({("a", 2048): [0.90, 0.91, 0.92], ("b", 2048): [0.89, 0.89, 0.89]})
    v = verdict(res, "better_than", method="a", other="b")
    assert v.verdict == HOLDS and v.interval == "+2.00 ± 1.69 pt (90% t, paired, n=3)"
    # other seeds: Welch's unpaired interval, on each cell's own spread (1 point +- 1.74: inside the noise)
    res = results({("a", 2048): [0.90, 0.91, 0.92], ("b", 2048): {3: 0.89, 4: 0.90, 5: 0.91}})
    v = verdict(res, "better_than", method="a", other="b")
    se = math.sqrt(0.01**2 / 3 + 0.01**2 / 3)
    half = stats.t.ppf(0.95, 4) * se  # equal variances and sizes: Welch's df = 2 (n - 1) = 4
    assert v.interval == f"+1.00 ± {half * 100:.2f} pt (90% t, Welch, n=3 vs 3)" and v.verdict == UNMEASURABLE
    assert "within seed noise: difference +1.00 ±" in v.measured


def test_better_than_inside_the_noise_is_not_measurable_and_decided_outside_it():
    noisy = results({("a", 128): [0.9] * 3, ("b", 128): [0.9] * 3,
                     ("a", 2048): [0.880, 0.890, 0.900], ("b", 2048): [0.885, 0.880, 0.890]})
    v = verdict(noisy, "better_than", method="a", other="b")
    assert v.verdict == UNMEASURABLE and "within seed noise: difference +0.50 ± 1.46 pt" in v.measured
    assert v.interval == "+0.50 ± 1.46 pt (90% t, paired, n=3)"
    clear = results({("a", 2048): [0.910, 0.921, 0.909], ("b", 2048): [0.890, 0.900, 0.890]})  # +2.0 +- 0.17
    assert verdict(clear, "better_than", method="a", other="b").verdict == HOLDS
    assert verdict(clear, "better_than", method="b", other="a").verdict == FAILS
    # a margin: shown to be better, but by less than 2.5 points: "better by more than 2.5" does not hold
    assert verdict(clear, "better_than", method="a", other="b", margin=0.015).verdict == HOLDS
    assert verdict(clear, "better_than", method="a", other="b", margin=0.025).verdict == FAILS
    assert verdict(clear, "better_than", method="a", other="b", margin=0.02).verdict == UNMEASURABLE


def test_within_base_is_met_by_a_better_result_and_needs_the_interval_clear_of_the_tolerance():
    base = {("legw", B0): [0.90, 0.91, 0.92]}
    near = results(base | {("legw", 512): [0.897, 0.906, 0.918]})  # -0.3 +- 0.17 points
    assert verdict(near, "within_base", method="legw", tolerance=0.01).verdict == HOLDS
    better = results(base | {("legw", 512): [0.921, 0.929, 0.940]})  # 2 points better than B0
    v = verdict(better, "within_base", method="legw", tolerance=0.005)
    assert v.verdict == HOLDS and "B=512 (4x) 0.9300: difference +2.00" in v.measured
    lost = results(base | {("legw", 512): [0.871, 0.879, 0.890]})  # -3 +- 0.17 points
    assert verdict(lost, "within_base", method="legw", tolerance=0.01).verdict == FAILS
    noisy = results(base | {("legw", 512): [0.880, 0.910, 0.905]})  # -1.17 +- 1.75 points
    v = verdict(noisy, "within_base", method="legw", tolerance=0.01)
    assert v.verdict == UNMEASURABLE and "within seed noise: difference -1.17 ± 1.75 pt" in v.measured
    assert v.interval == "-1.17 ± 1.75 pt (90% t, paired, n=3)"
    # every batch must hold: one that fails outside the noise decides, whatever the noise elsewhere
    mixed = results(base | {("legw", 512): [0.880, 0.910, 0.905], ("legw", 2048): [0.871, 0.879, 0.890]})
    v = verdict(mixed, "within_base", method="legw", tolerance=0.01)
    assert v.verdict == FAILS and v.interval.startswith("-3.00 ± 0.17 pt")
    # a relative tolerance on a lower-is-better metric (perplexity 100 -> 103 +- 0.2: 3% worse)
    ppl = results({("legw", B0): [100.0, 101.0, 99.0], ("legw", 512): [103.0, 104.2, 101.9]}, hib=False, target=120)
    assert verdict(ppl, "within_base", method="legw", tolerance=0.05, relative=True).verdict == HOLDS
    assert verdict(ppl, "within_base", method="legw", tolerance=0.01, relative=True).verdict == FAILS


def test_matches_holds_for_a_better_arm_and_fails_only_clear_of_the_tolerance():
    b = [0.9561, 0.9530, 0.9592]
    # DecentLaM 0.68 +- 0.88 points better than all-reduce: "within 0.5 point, or better" holds
    better = results({("dl", 2048): [x + d for x, d in zip(b, (0.0126, 0.0025, 0.0052))], ("ar", 2048): b})
    v = verdict(better, "matches", method="dl", other="ar", tolerance=0.005)
    assert v.verdict == HOLDS and v.interval.startswith("+0.68 ± 0.88 pt")
    worse = results({("dl", 2048): [x - d for x, d in zip(b, (0.029, 0.031, 0.030))], ("ar", 2048): b})
    assert verdict(worse, "matches", method="dl", other="ar", tolerance=0.005).verdict == FAILS
    noisy = results({("dl", 2048): [x + d for x, d in zip(b, (-0.010, 0.005, -0.002))], ("ar", 2048): b})
    v = verdict(noisy, "matches", method="dl", other="ar", tolerance=0.005)
    assert v.verdict == UNMEASURABLE and "within seed noise" in v.measured


def test_smaller_drop_compares_the_per_seed_drops():
    def drop(a_big, b_big):
        return results({("a", B0): [0.99, 0.99, 0.99], ("a", 4096): a_big,
                        ("b", B0): [0.98, 0.98, 0.98], ("b", 4096): b_big})

    # ConAdv-like: drops 9, 6, 11 points against 9, 10, 8: 1.5 points narrower, +- 5
    v = verdict(drop([0.90, 0.93, 0.88], [0.89, 0.88, 0.90]), "smaller_drop", method="a", other="b")
    assert v.verdict == UNMEASURABLE and "within seed noise" in v.measured and "(90% t, paired, n=3)" in v.interval
    narrow = drop([0.980, 0.981, 0.979], [0.930, 0.931, 0.929])  # drops 1 against 5 points
    v = verdict(narrow, "smaller_drop", method="a", other="b")
    assert v.verdict == HOLDS and "drops 1.00 vs 5.00" in v.measured
    assert verdict(narrow, "smaller_drop", method="b", other="a").verdict == FAILS
    assert verdict(narrow, "smaller_drop", method="a", other="b", margin=0.05).verdict == FAILS


def test_loses_or_diverges_against_its_own_base_seed_by_seed():
    base = {("goyal", B0): [0.90, 0.91, 0.92]}
    lost = results(base | {("goyal", 2048): [0.871, 0.879, 0.890]})
    assert verdict(lost, "loses_or_diverges", method="goyal", tolerance=0.01).verdict == HOLDS
    kept = results(base | {("goyal", 2048): [0.899, 0.908, 0.919]})  # -0.2 +- 0.17 points: not a loss of 1
    assert verdict(kept, "loses_or_diverges", method="goyal", tolerance=0.01).verdict == FAILS
    noisy = results(base | {("goyal", 2048): [0.880, 0.910, 0.905]})
    assert verdict(noisy, "loses_or_diverges", method="goyal", tolerance=0.01).verdict == UNMEASURABLE
    gone = results(base | {("goyal", 2048): [None, None, None]})
    v = verdict(gone, "loses_or_diverges", method="goyal", tolerance=0.01)
    assert v.verdict == HOLDS and "diverged or failed in 3/3 seeds" in v.measured and v.interval == ""
    # at any batch from 4x: one clear loss suffices
    some = results(base | {("goyal", 512): [0.880, 0.910, 0.905], ("goyal", 2048): [0.871, 0.879, 0.890]})
    assert verdict(some, "loses_or_diverges", method="goyal", at="any", min_scale=4).verdict == HOLDS


def test_divergence_decides_only_against_a_clean_arm():
    both = results({("a", 2048): [None, None, None], ("b", 2048): [None, None, None]})
    v = verdict(both, "better_than", method="a", other="b")
    assert v.verdict == UNMEASURABLE and "both diverged or failed" in v.measured
    some = results({("a", 2048): [0.9, None, 0.9], ("b", 2048): [None, 0.8, 0.8]})
    assert verdict(some, "better_than", method="a", other="b").verdict == UNMEASURABLE
    assert verdict(some, "matches", method="a", other="b").verdict == UNMEASURABLE
    one = results({("a", 2048): [0.95, None, 0.95], ("b", 2048): [0.80, 0.81, 0.79]})
    v = verdict(one, "better_than", method="a", other="b")
    assert v.verdict == FAILS and "a diverged or failed in 1/3 seeds, b in none: b is better" in v.measured
    assert "a 0.9500 (1/3 seeds diverged or failed)" in v.measured
    assert verdict(one, "better_than", method="b", other="a").verdict == HOLDS
    assert verdict(one, "matches", method="b", other="a", tolerance=0.0).verdict == HOLDS  # better meets it
    # a run that completed but learned nothing (outcome failed) has no number either
    failed = results({("a", 2048): [("failed", 0.1)] * 3, ("b", 2048): [0.80, 0.81, 0.79]})
    assert verdict(failed, "better_than", method="b", other="a").verdict == HOLDS
    # smaller_drop: both arms diverged at the largest batch (DecentLaM and DmSGD, non-i.i.d.)
    drops = results({("a", B0): [0.95] * 3, ("a", 2048): [None] * 3, ("b", B0): [0.82] * 3, ("b", 2048): [None] * 3})
    v = verdict(drops, "smaller_drop", method="a", other="b")
    assert v.verdict == UNMEASURABLE and "drops diverged vs diverged" in v.measured
    # within_base: a seed that diverged at the larger batch fails it against a clean base
    base = results({("g", B0): [0.89] * 3, ("g", 512): [0.89, 0.89, None]})
    v = verdict(base, "within_base", method="g", tolerance=0.03)
    assert v.verdict == FAILS and "(1/3 seeds diverged or failed)" in v.measured


def test_one_seed_gives_no_interval():
    res = results({("a", 2048): [0.95], ("b", 2048): [0.80]})
    v = verdict(res, "better_than", method="a", other="b")
    assert v.verdict == UNMEASURABLE and "one seed" in v.measured and v.interval == ""


def test_a_threshold_stricter_than_the_target_needs_a_budget_that_reaches_it():
    """MNIST-LSTM at B=1024: the pilot says the budget cannot reach the 0.87 target, sqrt reached it
    anyway (the aggregate calls 1024 feasible), but no arm reached B0 - 1 point = 0.886."""
    cells = {("legw", B0): [0.896, 0.897, 0.895], ("legw", 1024): [0.864, 0.872, 0.873],
             ("sqrt", B0): [0.896, 0.897, 0.895], ("sqrt", 1024): [0.871, 0.872, 0.873]}
    res = results(cells, target=0.87, infeasible=(1024,))
    assert aggregate(res).set_index(["method", "batch_size"]).loc[("legw", 1024), "feasible"]
    v = verdict(res, "within_base", method="legw", tolerance=0.01)
    assert v.verdict == UNMEASURABLE and "not measurable at B=1024" in v.measured and "0.886" in v.measured
    assert verdict(res, "loses_or_diverges", method="legw", tolerance=0.01).verdict == UNMEASURABLE
    # the same numbers where the pilot said the budget can reach the target: a loss of 2.6 +- 0.9 points
    res = results(cells, target=0.87)
    assert verdict(res, "within_base", method="legw", tolerance=0.01).verdict == FAILS
    assert verdict(res, "loses_or_diverges", method="legw", tolerance=0.01).verdict == HOLDS
    # or where some arm reached the threshold in its mean: the budget can, legw did not
    res = results(cells | {("sqrt", 1024): [0.887, 0.888, 0.889]}, target=0.87, infeasible=(1024,))
    assert verdict(res, "within_base", method="legw", tolerance=0.01).verdict == FAILS
    # a looser claim whose threshold some arm reached is judged: within 3 points holds
    res = results(cells, target=0.87, infeasible=(1024,))
    v = verdict(res, "within_base", method="legw", tolerance=0.04)
    assert v.verdict == HOLDS and "not measurable" not in v.measured
    # where no arm reached the target at all, the batch stays not measurable whatever the tolerance
    res = results({("legw", B0): [0.896, 0.897, 0.895], ("legw", 1024): [0.864, 0.865, 0.866]}, target=0.87,
                  infeasible=(1024,))
    v = verdict(res, "within_base", method="legw", tolerance=0.04)
    assert v.verdict == UNMEASURABLE and "cannot reach the target there for any rule" in v.measured


def test_tuned_cells_use_the_trials_the_aggregate_selected():
    # at each seed the tuned study ran LR 0.1 (0.90-0.92) and LR 0.4 (about 0.5): the selected LR is 0.1
    res = results({("legw", 2048): [0.80, 0.81, 0.82]},
                  tuned={2048: {0.1: [0.90, 0.91, 0.92], 0.4: [0.50, 0.52, 0.51]}})
    v = verdict(res, "better_than", method="tuned", other="legw")
    assert v.verdict == HOLDS and "tuned 0.9100" in v.measured and v.interval.startswith("+10.00 ± 0.00 pt")


def test_the_claims_table_shows_the_interval_between_measured_and_published():
    claims = [{"id": "c1", "text": "a beats b", "kind": "better_than", "params": {"method": "a", "other": "b"},
               "published": "yes"},
              {"id": "c2", "text": "a 2x faster", "kind": "speedup", "params": {"method": "a", "min": 2.0}}]
    res = results({("a", B0): [0.90, 0.91, 0.92], ("b", B0): [0.89, 0.89, 0.89],
                   ("a", 2048): [0.90, 0.91, 0.92], ("b", 2048): [0.89, 0.89, 0.89]}, claims=claims)
    verdicts = judge_all(res, aggregate(res))
    table = verdict_table(verdicts)
    assert list(table.columns) == ["claim", "measured", "interval", "published", "verdict"]
    assert table.loc["c1", "interval"] == "+2.00 ± 1.69 pt (90% t, paired, n=3)"
    assert table.loc["c2", "interval"] == "—" and verdicts[1].interval == ""  # speedups are on medians
    assert "| interval" in table.to_markdown() and "<th>interval</th>" in table.to_html()


@pytest.mark.parametrize("study, expected", [
    ("decentlam", {"dmsgd-falls-behind": UNMEASURABLE, "decentlam-stays-with-allreduce": HOLDS,
                   "decentlam-smaller-drop": UNMEASURABLE}),
    ("decentlam_noniid", {"dmsgd-falls-behind": HOLDS, "decentlam-stays-with-allreduce": FAILS,
                          "decentlam-smaller-drop": UNMEASURABLE}),
])
def test_the_committed_decentlam_studies(study, expected):
    res = load_results(ROOT / "docs" / "results" / study)
    assert {v.id: v.verdict for v in judge_all(res, aggregate(res))} == expected


def test_measure_steps_compares_steps_to_the_target_relative_to_the_other_arm():
    """``measure: steps`` (steps-to-result sweeps): fewer steps is better, the difference is relative to the
    other arm's mean steps, and a seed that missed the target has no number, as a diverged one."""
    def with_steps(cells, steps):
        res = results(cells)
        for (method, b), by_seed in steps.items():
            for seed, n in enumerate(by_seed):
                res.trials.loc[(res.trials.method == method) & (res.trials.batch_size == b) &
                               (res.trials.seed == seed), "steps_to_target"] = n
        return res

    done = [0.9, 0.9, 0.9]
    res = with_steps({("a", 2048): done, ("b", 2048): done}, {("a", 2048): [80, 81, 85], ("b", 2048): [100, 100, 100]})
    v = verdict(res, "better_than", method="a", other="b", measure="steps")
    half = stats.t.ppf(0.95, 2) * pd.Series([20.0, 19.0, 15.0]).std() / math.sqrt(3)
    assert v.verdict == HOLDS and v.interval == f"+18.00 ± {half:.2f} % (90% t, paired, n=3)", v
    assert "a 82 steps vs b 100 steps" in v.measured
    # on the final metric (equal in every seed) the same arms show no advantage
    assert verdict(res, "better_than", method="a", other="b").verdict == FAILS
    # inside the seeds' noise; and a 5% slower arm matches within 10% but not within 2%
    res = with_steps({("a", 2048): done, ("b", 2048): done}, {("a", 2048): [90, 110, 95], ("b", 2048): [100, 100, 100]})
    assert verdict(res, "better_than", method="a", other="b", measure="steps").verdict == UNMEASURABLE
    res = with_steps({("a", 2048): done, ("b", 2048): done}, {("a", 2048): [105, 106, 104], ("b", 2048): [100, 100, 100]})
    assert verdict(res, "matches", method="a", other="b", measure="steps", tolerance=0.1).verdict == HOLDS
    assert verdict(res, "matches", method="a", other="b", measure="steps", tolerance=0.02).verdict == FAILS
    # a seed that missed the target (final 0.80 < 0.85) loses to an arm that reached it in every seed
    res = with_steps({("a", 2048): [0.9, 0.8, 0.9], ("b", 2048): done}, {("b", 2048): [300, 300, 300]})
    v = verdict(res, "better_than", method="a", other="b", measure="steps")
    assert v.verdict == FAILS and "a missed the target, diverged or failed in 1/3 seeds" in v.measured, v
    assert "(1/3 seeds missed the target, diverged or failed)" in v.measured
    assert verdict(res, "smaller_drop", method="a", other="b", measure="steps").verdict == UNMEASURABLE
