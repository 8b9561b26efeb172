"""claims_only: a study runs the cells its claims read, and says which it left out."""

from __future__ import annotations

import pytest

from harness.spec.claims import left_out, needed_cells
from harness.errors import SweepConflict
from harness.spec import load_spec
from harness.sweep import growth, plan


def test_the_lstm_study_needs_legw_everywhere_goyal_at_b0_and_8k_sqrt_at_8k():
    spec = load_spec("experiments/paper/mnist_lstm.yaml", ["claims_only=true"], kind="sweep")
    every = {128, 256, 512, 1024, 2048, 4096, 8192}
    # within_base and speedup: legw at every batch size; loses_or_diverges: goyal at B0 and the
    # largest; better_than at the largest: sqrt (and goyal) at 8192; linear-legw: no claim reads it
    assert needed_cells(spec) == {"legw": every, "goyal": {128, 8192}, "sqrt": {8192}}
    assert ("linear-legw", 128) in left_out(spec) and ("goyal", 8192) not in left_out(spec)
    assert len(left_out(spec)) == 28 - 10
    the_plan = plan(spec, 60_000)
    assert len(the_plan.grid) == 10 * 3  # cells x seeds
    assert {(r["method"], r["batch_size"]) for r in the_plan.rows} == {
        (m, b) for m, bs in needed_cells(spec).items() for b in bs}


def test_arms_are_read_by_their_labels_and_a_matches_claim_needs_every_batch_size():
    spec = load_spec("experiments/paper/conadv.yaml", ["claims_only=true"], kind="sweep")
    # smaller_drop (tuned:conadv vs tuned at B0 and the largest), better_than (at the largest),
    # matches (tuned:conadv vs tuned:disadv at every batch size); no claim reads a legw arm
    assert needed_cells(spec) == {"tuned:conadv": {256, 1024, 4096}, "tuned:disadv": {256, 1024, 4096},
                                  "tuned": {256, 4096}}
    assert set(left_out(spec)) == {(arm, b) for arm in ("legw", "legw:disadv", "legw:conadv")
                                   for b in (256, 1024, 4096)} | {("tuned", 1024)}
    the_plan = plan(spec, 60_000)
    assert {(r.get("arm", r["method"]), r["batch_size"]) for r in the_plan.rows} == {
        (a, b) for a, bs in needed_cells(spec).items() for b in bs}


def test_claims_only_grows_into_the_whole_grid_and_never_back():
    on = load_spec("experiments/paper/mnist_lstm.yaml", ["claims_only=true"], kind="sweep").model_dump(mode="json")
    off = load_spec("experiments/paper/mnist_lstm.yaml", [], kind="sweep").model_dump(mode="json")
    assert growth(on, on) == {}
    assert growth(on, off) == {"claims_only": "off: every cell of the axes"}
    with pytest.raises(SweepConflict, match="claims_only turns on"):
        growth(off, on)


def test_the_report_header_names_the_cells_left_out(tmp_path):
    from analysis.aggregate import load_results
    from analysis.provenance import ran_with
    from tests.handmade import write_handmade_store

    res = load_results(write_handmade_store(tmp_path).root)
    res.meta["claims_left_out"] = [["goyal", 256], ["goyal", 512], ["linear-legw", 128]]
    assert "claims only, left out: goyal at B = 256, 512; linear-legw at B = 128" in ran_with(res)
