"""What a reviewer found in the reports, checked on hand-made stores: each arm projected at its own
pace, one colour per method in every report, no spoiled cell bolded as a row's best, B_simple per
batch size (never a mean over them), the budget that ran in the header, relative links only, and
diverged runs marked on the noise-scale plot."""

from __future__ import annotations

import html
import json

import pandas as pd
import pytest

from analysis.aggregate import aggregate, load_results
from analysis.style import ARM_LINESTYLES, METHOD_STYLES, OKABE_ITO, series_styles, styles_for
from tests.handmade import write_handmade_store

STEP = 0.002  # model-only seconds per step of the plain arms


def _add_arm(store, rule: str, arm: str, step_seconds: float | None, rename: str | None = None) -> None:
    """Copy ``rule``'s trials into the arm ``rule:arm`` (same steps to the target), each step
    ``step_seconds`` long (None: the arm timed no step); ``rename`` gives the copies another rule."""
    new_rule = rename or rule
    measurements = pd.DataFrame(store.measurement_rows())
    for t in store.trial_rows():
        if t["method"] != rule:
            continue
        tid = t["trial_id"].replace(f"-{rule}-", f"-{new_rule}-{arm}-")
        extra = json.loads(t["extra"] or "{}")
        if step_seconds is None:
            extra = {}
        else:
            extra.update(model_step_seconds=step_seconds, model_throughput=t["batch_size"] / step_seconds)
        row = {**t, "trial_id": tid, "method": new_rule, "augment": arm, "extra": json.dumps(extra)}
        curve = measurements[measurements.trial_id == t["trial_id"]].drop(columns="trial_id").to_dict("records")
        store.record(row, curve)
    store.consolidate()


@pytest.fixture
def arms(tmp_path):
    """legw and legw:disadv reach the target in the same steps; DisAdv's step is 2.5x slower."""
    store = write_handmade_store(tmp_path / "arms", model_step_seconds=STEP)
    _add_arm(store, "legw", "disadv", 2.5 * STEP)
    return store


def test_two_arms_with_different_measured_paces_get_different_projected_times(arms):
    from analysis.costmodel import build_model, project

    res = load_results(arms.root)
    model, info = build_model(res)
    plain, disadv = model.for_series("momentum", "legw"), model.for_series("momentum", "legw:disadv")
    assert plain.curve[512] == pytest.approx(512 / STEP) and disadv.curve[512] == pytest.approx(512 / (2.5 * STEP))
    assert "legw:disadv: 25,600 at B=128, 102,400 at B=512" in info["throughput (examples/s per device), per series"]
    agg = aggregate(res)
    proj, _ = project(res, agg)
    by = proj.set_index(["method", "devices"])
    agg = agg.set_index(["method", "batch_size"])
    for n in (1, 4):
        a, b = by.loc[("legw", n)], by.loc[("legw:disadv", n)]
        assert a.best_batch == b.best_batch  # the same steps at every batch size ...
        steps = agg.loc[("legw:disadv", int(b.best_batch)), "steps_to_target"]
        assert b.seconds == pytest.approx(disadv.time_to_target(steps, int(b.best_batch), n))
        assert a.seconds == pytest.approx(plain.time_to_target(steps, int(a.best_batch), n))
        assert b.seconds > 2 * a.seconds  # ... but DisAdv's pace: never ranked faster than the plain arm
        assert a.pace == b.pace == "its own trials"


def test_a_series_that_timed_nothing_borrows_a_same_arm_rule_and_the_report_says_so(arms):
    from analysis.beyond import projection
    from analysis.costmodel import project

    _add_arm(arms, "legw", "disadv", None, rename="goyal")  # goyal:disadv: no model-only timing of its own
    res = load_results(arms.root)
    proj, info = project(res, aggregate(res))
    goyal = proj[proj.method == "goyal:disadv"].iloc[0]
    assert goyal.pace.startswith("no step of its own was timed: the pace of legw:disadv")
    assert proj[proj.method == "legw"].iloc[0].pace == "its own trials"
    table, plot, _ = projection(res, aggregate(res), arms.root / "plots")
    assert "borrowed: goyal:disadv: no step of its own was timed: the pace of legw:disadv" in table.note
    assert {"legw", "legw:disadv", "goyal:disadv"} <= set(table.display.columns) and "legw:disadv" in plot.legend


def test_a_method_keeps_its_colour_in_studies_with_different_method_orders(tmp_path):
    one = write_handmade_store(tmp_path / "one")  # goyal, legw, tuned
    two = write_handmade_store(tmp_path / "two")
    meta = json.loads((two.root / "sweep.json").read_text())
    meta["spec_resolved"]["axes"]["methods"] = ["tuned", "legw", "goyal"]
    (two.root / "sweep.json").write_text(json.dumps(meta))
    a, b = series_styles(load_results(one.root)), series_styles(load_results(two.root))
    assert list(a) == ["goyal", "legw", "tuned"] and list(b) == ["tuned", "legw", "goyal"]  # the spec's order
    for m in ("goyal", "legw", "tuned"):
        assert a[m] == b[m] and a[m].color == METHOD_STYLES[m][0]
    # and in other studies: legw is blue beside any other methods, first or last
    assert {styles_for(labels)["legw"].color for labels in (["legw"], ["goyal", "sqrt", "legw"],
                                                            ["none", "tuned", "adascale", "legw"])} == {"#0072B2"}


def test_arms_keep_their_methods_colour_and_no_two_series_share_a_whole_style():
    conadv = styles_for(["legw", "legw:disadv", "legw:conadv", "tuned", "tuned:disadv", "tuned:conadv"])
    assert {conadv[s].color for s in ("legw", "legw:disadv", "legw:conadv")} == {METHOD_STYLES["legw"][0]}
    assert [conadv[s].linestyle for s in ("legw", "legw:disadv", "legw:conadv")] == ["-", "--", "-."]
    decentlam = styles_for(["legw", "legw:dmsgd", "legw:decentlam", "goyal:dmsgd"])
    assert decentlam["legw:decentlam"].linestyle == ARM_LINESTYLES["decentlam"]
    assert decentlam["goyal:dmsgd"].color == METHOD_STYLES["goyal"][0]
    grids = [list(conadv), list(decentlam),
             [f"{o}/{m}" for o in ("momentum", "adam", "lars", "lamb")
              for m in ("none", "goyal", "linear-legw", "sqrt", "legw", "sqrt+none", "tuned")],
             ["adascale", "noise-aware", "autowu", "sqrt+none", "linear+fixed", "none+base", "legw"],
             ["legw:disadv:dmsgd", "legw:conadv:dmsgd", "legw:dmsgd", "legw"]]
    for labels in grids:
        styles = styles_for(labels)
        assert len({s.key() for s in styles.values()}) == len(labels), labels
        assert all(s.color in OKABE_ITO for s in styles.values())
    # a method outside the table: the same colour for the same company, one no other method there uses
    combo = styles_for(["goyal", "legw", "sqrt+none"])
    assert combo == styles_for(["goyal", "legw", "sqrt+none"])
    assert combo["sqrt+none"].color not in {combo["goyal"].color, combo["legw"].color}


def test_a_cell_with_a_diverged_or_failed_seed_is_never_bolded_as_its_rows_best(tmp_path):
    from analysis.tables import accuracy_table, time_to_target_table

    res = load_results(write_handmade_store(tmp_path / "best").root)
    agg = aggregate(res)
    at = (agg.method == "goyal") & (agg.batch_size == 512)  # 2 complete, 1 diverged
    assert agg.loc[at, "diverged"].item() == 1
    agg.loc[at, ["final_mean", "steps_to_target"]] = [0.99, 50.0]  # the row's top number, from a spoiled cell
    acc, ttt = accuracy_table(res, agg), time_to_target_table(res, agg)
    assert not acc.best.loc[512, "goyal"] and acc.best.loc[512, "legw"]  # the best clean cell instead
    assert not ttt.best.loc[512, "goyal"] and ttt.best.loc[512, "legw"]
    # a failed seed spoils a cell the same way
    at = (agg.method == "tuned") & (agg.batch_size == 128)
    agg.loc[at, ["final_mean", "complete", "failed", "seeds"]] = [0.999, 1, 1, 2]
    assert not accuracy_table(res, agg).best.loc[128, "tuned"]


def test_b_simple_at_the_target_is_a_median_per_batch_size_and_no_mean_over_batch_sizes(tmp_path):
    from analysis.beyond import critical_table
    from analysis.critical import critical_summary, noise_by_batch

    res = load_results(write_handmade_store(tmp_path / "noise").root)
    m = res.measurements
    m.loc[m.trial_id == "momentum-legw-b128-s2", "noise_scale"] *= 10  # 100, 100, 1000 at the target
    noise = noise_by_batch(res).set_index("batch_size")
    assert noise.loc[128, "noise_scale"] == pytest.approx(100)  # the median; the mean would be 400
    assert (noise.loc[128, "low"], noise.loc[128, "high"], noise.loc[128, "trials"]) == (100, 1000, 3)
    summary = critical_summary(res, aggregate(res))
    assert "mean_noise_scale" not in summary
    table = critical_table(res, summary)
    assert "mean" not in table.title.lower()
    assert table.display.loc[128, "B_simple at the target (median over trials)"] == "100 (3 trials, 100-1,000)"
    assert table.display.loc[2048, "B_simple at the target (median over trials)"] == "1,600 (1 trial)"


@pytest.fixture(scope="module")
def overridden(tmp_path_factory):
    """A store that ran with --set overrides, tracking on, a diverged legw run with a noise curve; its report."""
    from analysis.report import build_report

    store = write_handmade_store(tmp_path_factory.mktemp("overridden") / "overridden")
    meta = json.loads((store.root / "sweep.json").read_text())
    spec_file = json.loads(json.dumps(meta["spec_resolved"])) | {"budget": {"epochs": 120}}
    meta["spec_resolved"]["budget"] = {"epochs": 10.0, "examples": None}
    meta["spec_resolved"]["tracking"] = {"tensorboard": True, "mlflow": True}
    meta["spec_given"] = {"file": "/somewhere/experiments/paper/x.yaml", "spec": spec_file,
                          "overrides": ["budget.epochs=10", "protocol.allow_infeasible=true", "data_dir=/data"],
                          "effective": meta["spec_resolved"]}
    (store.root / "sweep.json").write_text(json.dumps(meta))
    # the first seed of legw at 2048 diverges after measuring the noise scale twice
    t = next(r for r in store.trial_rows() if r["trial_id"] == "momentum-legw-b2048-s0")
    curve = [{"step": s, "examples": s * 2048, "epoch": s * 2048 / 60000, "train_loss": 1.0, "eval_loss": 1.0,
              "metric": 0.5, "lr": 0.1, "train_seconds": 0.1 * s, "noise_scale": 500.0 * s} for s in (10, 20)]
    store.record({**t, "status": "diverged", "final_metric": None, "diverged_step": 25}, curve)
    store.consolidate()
    return store, build_report(store.root)


def test_the_header_says_the_budget_that_ran_before_the_spec_files_description(overridden):
    _, out = overridden
    for text in (html.unescape(out["html"].read_text()), out["markdown"].read_text()):
        ran = text.index("Ran with")
        assert ran < text.index("hand-made results with known answers")  # before the description
        line = text[ran:text.index("hand-made results with known answers")]
        assert "budget.epochs=10, protocol.allow_infeasible=true" in line
        assert "the spec file's: budget.epochs=120, protocol.allow_infeasible not set" in line
        assert "10 epochs at every batch size" in line and "data_dir" not in line


def test_every_path_the_report_writes_is_relative_to_the_report_folder(overridden):
    store, out = overridden
    absolute = str(store.root.resolve())
    for path in (out["markdown"], out["html"], out["folder"] / "summary.json"):
        assert absolute not in path.read_text(), path.name
    md = out["markdown"].read_text()
    assert "tensorboard --logdir ../tensorboard" in md and "../optuna.db" in md
    assert "/somewhere" not in md  # the spec file is named, not the machine's path to it


def test_the_noise_scale_plot_marks_a_run_that_diverged(overridden):
    _, out = overridden
    noise = next(p for p in out["plots"] if p.stem == "noise_scale")
    assert "diverged after its last point" in noise.legend
    assert "x: the run diverged after its last point drawn (legw B=2048)" in noise.caption
