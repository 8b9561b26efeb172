"""Study protocols: budgets sized from S(B) = S_min (1 + B_crit/B), refusal of budgets that cannot
reach the target, the pilot, steps_to_result trial settings, and verdicts that say "not measurable"
where the budget could not answer."""

from __future__ import annotations

import math

import pytest

from analysis.aggregate import aggregate, load_results
from analysis.reproduce import FAILS, HOLDS, UNMEASURABLE, judge_all
from harness.errors import SpecError
from harness.sweep.protocol import Estimate, best_trial, budget_table, refuse_infeasible, run_pilot, trial_settings
from harness.spec import load_spec
from harness.sweep import plan
from tests.handmade import write_handmade_store

N = 130_000


def sweep_spec(**protocol):
    return load_spec(data={
        "name": "p", "workload": "mnist1d_mlp", "target": {"metric": "accuracy", "value": 0.9},
        "axes": {"batch_sizes": [256, 4096, 32768], "methods": ["goyal", "legw", "tuned"]},
        "protocol": {"s_min": 100, "b_crit": 1000, **protocol}}, kind="sweep")


def test_fixed_epochs_budget_table_follows_the_formula():
    spec = sweep_spec()
    est = {"momentum": Estimate("momentum", 100, 1000, "given")}
    rows = {r["batch_size"]: r for r in budget_table(spec, N, est)}
    for b, r in rows.items():
        s = 100 * (1 + 1000 / b)
        assert r["steps_predicted"] == pytest.approx(s)
        assert r["steps_needed"] == math.ceil(2 * s)
        assert r["budget_steps"] == math.ceil(10 * N / b - 1e-9)  # the recipe's 10 epochs
        assert r["feasible"] == (r["budget_steps"] >= r["steps_needed"])
        assert r["eval_every_steps"] == max(1, min(math.ceil(N / 2 / b), math.floor(0.05 * s / 2)))
    assert rows[256]["feasible"] and not rows[32768]["feasible"]
    assert rows[32768]["epochs_needed"] == pytest.approx(math.ceil(2 * 100 * (1 + 1000 / 32768)) * 32768 / N)


def test_an_infeasible_budget_is_refused_in_one_line_naming_batch_and_epochs():
    spec = sweep_spec()
    rows = budget_table(spec, N, {"momentum": Estimate("momentum", 100, 1000, "given")})
    with pytest.raises(SpecError) as e:
        refuse_infeasible(spec, rows)
    msg = str(e.value)
    needed = math.ceil(2 * 100 * (1 + 1000 / 32768)) * 32768 / N
    assert "\n" not in msg and e.value.exit_code == 2
    assert "budget.epochs" in msg and "batch size 32768 needs" in msg and f"{needed:.3g} epochs" in msg
    assert "allow_infeasible" in msg
    refuse_infeasible(sweep_spec(allow_infeasible=True), rows)  # allowed: runs, verdicts marked


def test_steps_to_result_gives_each_batch_its_own_budget_and_stops_at_the_target():
    spec = sweep_spec(kind="steps_to_result")
    rows = budget_table(spec, N, {"momentum": Estimate("momentum", 100, 1000, "given")})
    assert all(r["feasible"] and r["budget_steps"] == r["steps_needed"] for r in rows)
    r = next(r for r in rows if r["batch_size"] == 32768)
    settings = trial_settings(spec, r, N)
    assert settings["budget"] == {"epochs": None, "examples": r["budget_steps"] * 32768}
    assert settings["target"]["stop"] is True
    assert settings["eval"]["every_examples"] == r["eval_every_steps"] * 32768
    assert settings["fixed_warmup_epochs"] == pytest.approx(10 * 5 / 90)  # the same epochs at every batch
    p = plan(spec, N, {}, rows)
    goyal = {c["batch_size"]: c for c in p.grid.values() if c["method"] == "goyal"}
    assert {b: c["recipe"]["fixed_warmup_epochs"] for b, c in goyal.items()} == pytest.approx(
        {256: 10 * 5 / 90, 4096: 10 * 5 / 90, 32768: 10 * 5 / 90})
    assert all(s.objective == "steps" and s.budget_steps for s in p.studies)
    given = sweep_spec(kind="steps_to_result", step_budgets={32768: 50})
    with pytest.raises(SpecError, match="protocol.step_budgets.32768"):
        refuse_infeasible(given, budget_table(given, N, {"momentum": Estimate("momentum", 100, 1000, "given")}))


def test_protocol_spec_errors():
    with pytest.raises(SpecError, match="protocol.s_min and protocol.b_crit together"):
        sweep_spec(b_crit=None)
    with pytest.raises(SpecError, match="allowed only with a target"):
        load_spec(data={"workload": "mnist1d_mlp", "axes": {"batch_sizes": [256]},
                        "protocol": {"kind": "steps_to_result"}}, kind="sweep")
    with pytest.raises(SpecError, match="protocol.step_budgets.512"):
        sweep_spec(kind="steps_to_result", step_budgets={512: 10})


def test_tuned_selection_on_steps_prefers_the_fewest_steps_then_the_metric():
    rows = [{"trial_id": "a", "final_metric": 0.95, "target_reached": True, "steps_to_target": 120},
            {"trial_id": "b", "final_metric": 0.91, "target_reached": True, "steps_to_target": 80},
            {"trial_id": "c", "final_metric": 0.97, "target_reached": False, "steps_to_target": None}]
    assert best_trial(rows, True, by_steps=True)["trial_id"] == "b"
    assert best_trial(rows, True, by_steps=False)["trial_id"] == "c"


def test_pilot_measures_s0_and_b_simple_at_b0():
    """On the teacher with an isotropic spectrum: S_min (1 + B_crit/B0) is the pilot's S0; B_crit is
    the smaller of the fixed-weight probe and the moving average; the probe at the target is within
    a factor 2 of the closed form there, d (1 + s^2/|e|^2) + 1 with |e|^2 <= 2 x the target."""
    spec = load_spec(data={
        "name": "pilot", "workload": "teacher_regression",
        "workload_options": {"dim": 16, "condition": 1, "noise_std": 1.0, "n_train": 2**16},
        "target": {"metric": "excess_risk", "value": 0.01}, "budget": {"epochs": 2},
        "recipe": {"peak_lr": 0.05}, "axes": {"batch_sizes": [64, 1024]},
    }, kind="sweep")
    est = run_pilot(spec, "sgd", 2**16)
    s0, b0 = est.pilot["steps_to_target"], est.pilot["batch_size"]
    assert est.b_crit == min(est.pilot["b_simple_probe"], est.pilot["b_simple_moving_average"])
    assert est.s_min * (1 + est.b_crit / b0) == pytest.approx(s0)
    closed = 16 * (1 + 1.0 / (2 * 0.01)) + 1  # |e|^2 = 2 x excess risk at the target
    assert 0.5 * closed < est.pilot["b_simple_probe"] < 2 * closed
    assert est.pilot["b_simple_probe_examples"] >= 4 * est.pilot["b_simple_probe"]


def handmade_with_budgets(tmp_path, feasible: dict[int, bool], unreached: tuple[int, ...] = ()):
    """The hand-made store with a budget table; ``unreached`` batch sizes lose their target hits."""
    from harness.results.store import TRIAL_SCHEMA, write_table

    store = write_handmade_store(tmp_path / "handmade")
    rows = store.trial_rows()
    for r in rows:
        if r["batch_size"] in unreached:
            r.update(target_reached=False, steps_to_target=None, examples_to_target=None, seconds_to_target=None)
    write_table(store.trials_path, rows, TRIAL_SCHEMA)
    store.update_meta(protocol={"kind": "fixed_epochs", "checked": True, "estimates": {}, "budgets": [
        {"optimizer": "momentum", "batch_size": b, "feasible": ok, "budget_steps": 100, "eval_every_steps": 4}
        for b, ok in feasible.items()]})
    res = load_results(store.root)
    return res, {v.id: v for v in judge_all(res, aggregate(res))}


def test_a_batch_size_where_an_arm_reached_the_target_is_measurable_whatever_the_prediction(tmp_path):
    # legw reached 85% at 2048 in one seed of three: the budget can reach the target there
    res, v = handmade_with_budgets(tmp_path, {128: True, 512: True, 2048: False})
    agg = aggregate(res)
    assert agg[agg.batch_size == 2048].feasible.tolist() == [True] * 3
    assert "not measurable at" not in v["legw-flat"].measured  # judged at 2048 (within the seeds' noise there)
    assert "B=2048 (16x) 0.8700: within seed noise" in v["legw-flat"].measured


def test_claims_at_batch_sizes_the_budget_cannot_serve_are_not_measurable(tmp_path):
    res, v = handmade_with_budgets(tmp_path, {128: True, 512: True, 2048: False}, unreached=(2048,))
    # legw holds at 128 and 512; 2048 (16x) cannot be judged: the 16x claim is not measurable
    assert v["legw-flat"].verdict == UNMEASURABLE and "not measurable at B=2048" in v["legw-flat"].measured
    assert v["legw-flat-strict"].verdict == UNMEASURABLE  # it failed only where nothing could be judged
    assert v["goyal-breaks"].verdict == UNMEASURABLE and "budget cannot reach" in v["goyal-breaks"].measured
    assert v["legw-beats-goyal"].verdict == UNMEASURABLE
    agg = aggregate(res)
    assert list(agg[agg.method == "legw"].sort_values("batch_size").feasible) == [True, True, False]
    from analysis.tables import accuracy_table, time_to_target_table

    for table in (accuracy_table(res, agg), time_to_target_table(res, agg)):  # the tables say so under the title
        assert "Not measurable: B = 2048, where the budget cannot reach the target for any rule" in table.note
    # a failure where the budget could answer stays a failure
    res, v = handmade_with_budgets(tmp_path / "b", {128: True, 512: False, 2048: True})
    assert v["goyal-breaks"].verdict == HOLDS
    assert v["legw-flat-strict"].verdict == UNMEASURABLE and "not measurable at" not in v["legw-flat-strict"].measured


def test_a_diverged_seed_spoils_a_cell_and_time_speedups_on_one_cpu_are_not_judged(tmp_path):
    store = write_handmade_store(tmp_path / "h")
    spec = store.read_meta()["spec_resolved"]
    claims = [{"id": "goyal-512", "text": "goyal within 3 points up to 4x", "kind": "within_base",
               "params": {"method": "goyal", "max_scale": 4, "tolerance": 0.03}},
              {"id": "time", "text": "5x faster in time", "kind": "speedup",
               "params": {"method": "legw", "min": 1.0, "kind": "time"}}]
    store.update_meta(spec_resolved={**spec, "claims": claims})
    res = load_results(store.root)
    v = {x.id: x for x in judge_all(res, aggregate(res))}
    # goyal at 512: two seeds at 0.87 (2 points down: within 3) but the third diverged
    assert v["goyal-512"].verdict == FAILS and "1/3 seeds diverged" in v["goyal-512"].measured
    assert v["time"].verdict == UNMEASURABLE and "flat in the batch size" in v["time"].measured


def test_a_difference_from_one_seed_is_not_judged(tmp_path):
    store = write_handmade_store(tmp_path / "h")
    spec = store.read_meta()["spec_resolved"]
    claims = [{"id": "tuned-over-legw", "text": "tuned better than legw at B0", "kind": "better_than",
               "params": {"method": "tuned", "other": "legw", "at": "all", "max_scale": 1}}]
    store.update_meta(spec_resolved={**spec, "claims": claims})
    res = load_results(store.root)
    v = judge_all(res, aggregate(res))[0]
    # at 128: tuned (one study, seed 0) 0.90 vs legw's 3 seeds: one seed of tuned gives no interval
    assert v.verdict == UNMEASURABLE and "B=128" in v.measured and "one seed" in v.measured
