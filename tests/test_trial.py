import math

import pytest
import torch

from harness.spec import load_spec
from harness.trial.placement import auto_micro_batch
from harness.trial.loop import Trial
from tests.conftest import tiny_trial


def trial(data_dir, **over) -> Trial:
    return Trial(load_spec(data=tiny_trial(data_dir, **over)))


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("workload,opts,batch,optimizer", [
    ("fmnist_lstm", {}, 256, "momentum"),
    ("ptb_lstm_lm", {"unrolled_steps": 5}, 64, "sgd"),  # with gradient clipping of the whole batch
])
def test_accumulated_micro_batches_equal_one_big_batch(data_dir, workload, opts, batch, optimizer):
    """Same examples, same start: the update from 8 accumulated micro-batches equals one big batch."""
    params = {}
    for micro in (batch, batch // 8):
        t = trial(data_dir, workload=workload, workload_options=opts, batch_size=batch, micro_batch_size=micro,
                  method="none", optimizer=optimizer, recipe={"warmup_epochs": 0, "peak_lr": 0.5})
        before = flat_params(t.model)
        t._train_step()
        t._train_step()  # two steps: momentum state included
        params[micro] = flat_params(t.model) - before
    big, acc = params[batch], params[batch // 8]
    rel = (acc - big).norm() / big.norm()
    assert big.norm() > 0 and rel <= 1e-5, f"relative error {rel:.2e}"


def test_same_spec_and_seed_give_identical_measurements(data_dir):
    a = trial(data_dir, seed=7).run().measurements
    b = trial(data_dir, seed=7).run().measurements
    c = trial(data_dir, seed=8).run().measurements
    strip = lambda rows: [{k: v for k, v in r.items() if k != "train_seconds"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)


def test_checkpoint_resumes_bit_for_bit(data_dir):
    full_trial = trial(data_dir, budget={"epochs": 2})
    full = full_trial.run()

    first = trial(data_dir, budget={"epochs": 2})
    stop_after = {}

    def interrupt(t, row):
        if len(t.measurements) == 2 and not stop_after:
            stop_after["state"] = t.state_dict()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.run(on_eval=interrupt)
    second = trial(data_dir, budget={"epochs": 2})
    torch.manual_seed(12345)  # a fresh process has other RNG state: the checkpoint must restore it
    second.load_state_dict(stop_after["state"])
    resumed = second.run()
    key = lambda rows: [(r["step"], r["examples"], r["train_loss"], r["eval_loss"], r["metric"]) for r in rows]  # noqa: E731
    assert key(resumed.measurements) == key(full.measurements)
    assert torch.equal(flat_params(second.model), flat_params(full_trial.model))


def test_checkpoint_of_another_recipe_is_refused(data_dir):
    state = trial(data_dir).state_dict()
    with pytest.raises(Exception, match="different recipe"):
        trial(data_dir, batch_size=128).load_state_dict(state)


def test_divergence_is_a_status_with_its_step_not_a_crash(data_dir):
    t = trial(data_dir, method="none", recipe={"peak_lr": 1e4, "warmup_epochs": 0})
    res = t.run()
    assert res.status == "diverged"
    assert res.summary["diverged_step"] is not None and res.summary["diverged_step"] <= res.recipe.total_steps
    assert res.summary["final_metric"] is None
    assert math.isnan(res.measurements[-1]["metric"])


def test_loss_blow_up_factor_also_diverges(data_dir):
    t = trial(data_dir, method="none", recipe={"peak_lr": 50.0, "warmup_epochs": 0}, divergence={"loss_factor": 1.5})
    assert t.run().status == "diverged"


def test_target_is_recorded_at_first_evaluation_reaching_it_and_can_stop(data_dir):
    spec = dict(budget={"epochs": 4}, eval={"per_epoch": 4}, target={"metric": "accuracy", "value": 0.5})
    full = trial(data_dir, **spec).run()
    s = full.summary
    assert s["target_reached"], full.measurements
    first = next(r for r in full.measurements if r["metric"] >= 0.5)
    assert (s["steps_to_target"], s["examples_to_target"], s["seconds_to_target"]) == (
        first["step"], first["examples"], first["train_seconds"])
    stopped = trial(data_dir, **{**spec, "target": {"metric": "accuracy", "value": 0.5, "stop": True}}).run()
    assert stopped.status == "complete" and stopped.summary["steps"] == s["steps_to_target"] < s["steps"]


def test_past_the_target_evaluation_goes_back_to_the_sparser_grid_and_training_is_unchanged(data_dir):
    """The protocol evaluates densely to resolve the steps to the target; past it, a fixed-epoch
    trial evaluates on the per-epoch grid (harness.sweep.protocol). Same training, same target step, same
    last evaluation; a checkpoint taken past the target resumes on the sparse grid."""
    spec = dict(budget={"epochs": 4}, eval={"every_examples": 64}, target={"metric": "accuracy", "value": 0.5})
    dense = trial(data_dir, **spec).run()
    sparse_spec = {**spec, "eval": {"every_examples": 64, "after_target_every_examples": 512}}
    sparse = trial(data_dir, **sparse_spec).run()
    hit = dense.summary["steps_to_target"]
    assert hit is not None and hit < dense.summary["steps"] - 16, dense.measurements
    steps = [r["step"] for r in sparse.measurements]
    assert [s for s in steps if s <= hit] == list(range(1, hit + 1))  # every step (64 examples) up to the target
    after = [s for s in steps if s > hit]
    assert after[0] == hit + 8 and all(b - a == 8 for a, b in zip(after[:-1], after[1:-1]))  # then every 8
    assert after[-1] == dense.summary["steps"] and len(sparse.measurements) < len(dense.measurements) / 2
    by_step = {r["step"]: r for r in dense.measurements}
    for r in sparse.measurements:  # the same training: every shared evaluation is identical
        assert (r["metric"], r["eval_loss"]) == (by_step[r["step"]]["metric"], by_step[r["step"]]["eval_loss"])
    for k in ("steps_to_target", "final_metric", "steps"):
        assert sparse.summary[k] == dense.summary[k]
    first, saved = trial(data_dir, **sparse_spec), {}

    def interrupt(t, row):
        if t.target_hit and not saved:
            saved["state"] = t.state_dict()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.run(on_eval=interrupt)
    second = trial(data_dir, **sparse_spec)
    second.load_state_dict(saved["state"])
    assert [r["step"] for r in second.run().measurements] == steps


def test_unreached_target_is_null_not_a_number(data_dir):
    # a perfect accuracy after one step of 64 examples (10 classes): not reached
    s = trial(data_dir, target={"metric": "accuracy", "value": 1.0}, budget={"epochs": None, "examples": 64}).run().summary
    assert not s["target_reached"] and s["steps_to_target"] is None and s["seconds_to_target"] is None


def test_evaluation_cadence_and_records(data_dir):
    res = trial(data_dir, budget={"epochs": 3}, eval={"per_epoch": 2}).run()
    rows = res.measurements
    assert [round(r["epoch"]) for r in rows][-1] == 3
    assert all(b["epoch"] - a["epoch"] <= 1.0 for a, b in zip(rows, rows[1:]))
    assert len(rows) == 6
    assert rows[-1]["step"] == res.recipe.total_steps
    assert set(rows[0]) >= {"step", "examples", "epoch", "train_loss", "eval_loss", "metric", "lr", "train_seconds"}
    assert all(a["train_seconds"] <= b["train_seconds"] for a, b in zip(rows, rows[1:]))
    # evaluation time is off the training clock
    assert res.summary["train_seconds"] < res.summary["wall_seconds"]


def test_budget_in_examples(data_dir):
    res = trial(data_dir, budget={"examples": 1000}).run()
    assert res.recipe.total_steps == math.ceil(1000 / 64) and res.summary["examples_seen"] == 16 * 64


def test_auto_micro_batch_is_the_largest_divisor_under_the_cap(data_dir):
    assert auto_micro_batch(32768, 512) == 512
    assert auto_micro_batch(1000, 256) == 250
    assert auto_micro_batch(100, 256) == 100
    assert trial(data_dir, batch_size=4096, device="cpu").micro_batch_size == 128  # fmnist_lstm cap on a CPU


def test_another_optimizer_needs_a_whole_recipe(data_dir):
    with pytest.raises(Exception, match="for another optimizer give a whole recipe .missing: base_batch_size"):
        trial(data_dir, workload="ptb_lstm_lm", optimizer="adam")
    t = trial(data_dir, workload="ptb_lstm_lm", workload_options={"unrolled_steps": 5}, optimizer="adam",
              recipe={"base_batch_size": 64, "peak_lr": 1e-3, "epochs": 1})
    assert t.recipe.optimizer.name == "adam" and t.recipe.peak_lr == pytest.approx(1e-3)


def test_unavailable_cuda_is_a_clear_error(data_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(Exception, match="'cuda' was asked for"):
        trial(data_dir, device="cuda")


def test_the_micro_batch_cap_is_measured_once_per_machine_then_cached(tmp_path, monkeypatch):
    """On first use the fastest micro-batch is measured (the smallest within 3% of the best) and
    cached under the data cache; later uses read it; the spec's cap overrides it."""
    import json

    import torch

    from harness.trial import calibrate
    from harness.spec import TrialSpec

    assert calibrate.choose({64: 90.0, 128: 98.0, 256: 100.5, 512: 60.0}) == 128  # the smallest within 3% of 100.5
    monkeypatch.setenv("BATCHSCALE_CALIBRATE", "1")
    monkeypatch.setenv("BATCHSCALE_CACHE_DIR", str(tmp_path))
    spec = TrialSpec(workload="mnist1d_mlp", workload_options={"n_train": 2000, "n_test": 200}, batch_size=1024,
                     threads=1, noise_scale=False, device="cpu")
    wl = spec.workload_obj()
    measured = []
    real_scan = calibrate.scan
    monkeypatch.setattr(calibrate, "scan", lambda *a, **k: measured.append(1) or real_scan(*a, **k, seconds=0.02))
    cap, source = calibrate.micro_batch_cap(wl, torch.device("cpu"), 1)
    assert source == "measured on this machine just now" and measured == [1]
    cached = json.loads((tmp_path / "micro_batch.json").read_text())
    (entry,) = cached.values()
    assert entry["cap"] == cap == calibrate.choose({int(m): v for m, v in entry["examples_per_second"].items()})
    assert set(map(int, entry["examples_per_second"])) <= {8, 16, 32, 64, 128, 256, 512, 1024, 2048}
    trial = Trial(spec)  # reads the cache: no second measurement
    assert measured == [1] and trial.micro_batch_cap == cap and "measured on this machine on" in trial.micro_batch_cap_source
    assert trial.micro_batch_size == min(cap, 1024)
    # the scan stops before a size whose memory, extrapolated from the last size's peak, would
    # exceed a quarter of what is available: here each size's step "takes" 1 GB of 3 GB available
    peaks = iter(range(0, 100 * 2**30, 2**30))
    monkeypatch.setattr(calibrate, "_peak_bytes", lambda device: next(peaks))
    monkeypatch.setattr(calibrate, "available_bytes", lambda device: 3 * 2**30)
    assert list(real_scan(wl, torch.device("cpu"), 1, seconds=0.01)) == [8]
    pinned = Trial(spec.model_copy(update={"micro_batch_cap": 64}))
    assert pinned.micro_batch_size == 64 and pinned.micro_batch_cap_source == "the spec"
