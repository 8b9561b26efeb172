"""The teacher-student regression against its closed forms: the noise scale measured by the trial
loop and by the fixed-weight probe, and the critical batch fitted from steps to the target."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analysis.critical import fit_critical_batch
from harness.trial.noise import noise_scale_at
from harness.spec import load_spec
from harness.trial.loop import Trial
from harness.workloads import get_workload

SMALL = {"dim": 16, "n_train": 2**17}


def at_fixed_weights(options: dict, error_scale: float):
    """The workload and a student at w* + e with e = error_scale x (-w*) (the start shrunk)."""
    wl = get_workload("teacher_regression", {**SMALL, **options})
    model = wl.build_model()
    with torch.no_grad():
        model.weight.copy_(((1 - error_scale) * wl.teacher()).float().unsqueeze(0))
    return wl, model


# slow (~25 s on the 2-core VM): each case: 3000 steps of 256 in micro-batches of 32 for the noise EMA to settle
@pytest.mark.slow
@pytest.mark.parametrize("options,error_scale", [
    ({"condition": 1, "noise_std": 0.5}, 0.5),
    ({"condition": 1, "noise_std": 2.0}, 0.5),
    ({"condition": 100, "noise_std": 3.0}, 0.3),
])
def test_trial_noise_scale_matches_the_closed_form_at_three_noise_settings(options, error_scale):
    """The in-trial estimator (micro-batches of 32 in steps of 256), at a negligible LR so that the
    weights (hence e) stay put, within 10% of tr(Lambda)(e'Lambda e + s^2)/|Lambda e|^2 + 1."""
    wl, model = at_fixed_weights(options, error_scale)
    expected = wl.noise_scales(wl.weight_error(model))["b_simple"]
    spec = load_spec(data={"workload": "teacher_regression", "workload_options": {**SMALL, **options},
                           "batch_size": 256, "micro_batch_size": 32, "method": "none", "threads": 1, "peak_lr": 1e-12,
                           "budget": {"examples": 256 * 3000}, "noise_ema_epochs": 2.0,
                           "eval": {"every_examples": 10**12}, "divergence": {"loss_factor": None}})
    trial = Trial(spec)
    trial.model.load_state_dict(model.state_dict())
    measured = trial.run().summary["noise_scale"]
    assert measured == pytest.approx(expected, rel=0.10), (measured, expected)


@pytest.mark.parametrize("noise_std", [0.5, 1.0, 3.0])
def test_fixed_weight_probe_matches_the_closed_form(noise_std):
    wl, model = at_fixed_weights({"condition": 1, "noise_std": noise_std}, 0.3)
    expected = wl.noise_scales(wl.weight_error(model))["b_simple"]
    assert expected == pytest.approx(16 * (1 + noise_std**2 / float(wl.weight_error(model).square().sum())) + 1)
    data = wl.load().train
    probe = noise_scale_at(model, wl.loss, data, micro_batch=64, count=2**17 // 64)
    assert probe["b_simple"] == pytest.approx(expected, rel=0.10), (probe, expected)


def test_excess_risk_metric_is_exact_and_the_student_starts_near_one():
    wl = get_workload("teacher_regression", SMALL)
    model = wl.build_model()
    e = wl.weight_error(model)
    lam = wl.spectrum()
    assert float(lam[0]) == 1.0 and float(lam[-1]) == pytest.approx(1 / 100)
    assert wl.excess_risk(e) == pytest.approx(0.5 * float((lam * e * e).sum()))
    loss, metric = wl.finish_eval(*wl.eval_sums(model, wl.load().eval))
    assert metric == pytest.approx(wl.excess_risk(e)) and loss == pytest.approx(metric + 0.5 * 3.0**2)
    assert 0.3 < metric < 3  # about 1 at the start


# slow (~18 s, Intel 2-core VM): 90 teacher-regression trials (6 batch sizes x 15 LRs, each cut at the fewest steps so far) to fit B_crit
@pytest.mark.slow
def test_critical_batch_fitted_from_steps_to_result_is_within_2x_of_the_closed_form():
    """Isotropic teacher (B_noise = B_simple exactly): per batch size, the fewest steps to an excess
    risk of 5e-4 over an LR grid (steps to result, evaluated every step), fitted to
    S_min (1 + B_crit/B); the closed form at the target, |e|^2 = 2 x 5e-4, is d(1 + s^2/|e|^2) + 1."""
    options = {"dim": 16, "condition": 1, "noise_std": 1.0, "n_train": 2**18}
    target = 5e-4
    closed = 16 * (1 + 1.0 / (2 * target)) + 1
    batches, steps = [64, 256, 1024, 4096, 16384, 65536], []  # past B_crit, where S(B) flattens
    for b in batches:
        best = max(30, min(1500, 2**17 // b))  # the step budget; then the fewest steps so far
        reached = False
        for lr in [2.0 ** (-k / 2) for k in range(0, 15)]:  # 1 ... 1/128 by factors of sqrt(2)
            # the LR is constant, so a budget of the fewest steps so far cuts a trial short without
            # changing its path: one that has not reached the target by then cannot lower the minimum
            spec = load_spec(data={
                "workload": "teacher_regression", "workload_options": options, "batch_size": b, "method": "none",
                "peak_lr": lr, "threads": 1, "noise_scale": False, "recipe": {"warmup_epochs": 0},
                "budget": {"examples": b * best}, "eval": {"every_examples": b},
                "target": {"metric": "excess_risk", "value": target, "stop": True}})
            s = Trial(spec).run().summary
            if s["target_reached"]:
                best, reached = min(best, s["steps_to_target"]), True
        steps.append(best if reached else math.inf)
    assert all(np.isfinite(steps)), steps
    fit = fit_critical_batch(batches, steps)
    print(f"steps {steps}; fit S_min {fit.s_min:.2f}, B_crit {fit.b_crit:.0f}; closed form {closed:.0f}")
    assert closed / 2 <= fit.b_crit <= 2 * closed, (fit, steps, closed)


def test_every_eighth_step_runs_without_the_noise_split_and_times_the_model_alone():
    """B0 = 256 runs as one micro-batch, so measuring the noise splits it in two: 7 steps in 8 do,
    every 8th runs unsplit and unmeasured and gives the model's own step time; the moving average
    still decays per step (one update covering two steps decays twice)."""
    from harness.trial.noise import NoiseScale
    from harness.trial.loop import TIMING_EVERY

    spec = load_spec(data={"workload": "teacher_regression", "workload_options": SMALL, "batch_size": 256,
                           "method": "none", "threads": 1, "budget": {"examples": 256 * 100},
                           "eval": {"every_examples": 10**12}})
    trial = Trial(spec)
    assert (trial.micro_batch_size, trial.timing_micro_batch) == (128, 256)
    summary = trial.run().summary
    assert TIMING_EVERY == 8 and summary["timing_steps"] == 100 // 8 and trial.noise.updates == 100 - 100 // 8
    assert summary["model_step_seconds"] > 0 and summary["model_throughput"] == pytest.approx(
        256 / summary["model_step_seconds"])
    quiet = Trial(load_spec(data={**spec.model_dump(mode="json"), "noise_scale": False}))
    assert quiet.run().summary["timing_steps"] == 99  # all but the first step, which warms up
    ema = NoiseScale(1, 2, decay=0.5)
    ema.update(torch.tensor(3.0), torch.tensor(2.0))
    ema.update(torch.tensor(5.0), torch.tensor(2.0), steps=2)
    # each update's trace is (small - big) / (1/1 - 1/2); over two steps the average keeps 0.5^2 of its old value
    first_trace, second_trace = (3 - 2) / 0.5, (5 - 2) / 0.5
    assert float(ema.trace_ema) == pytest.approx(0.25 * 0.5 * first_trace + 0.75 * second_trace)


# -- the non-linear teacher-student (teacher_mlp) ---------------------------------------------------

MLP_SMALL = {"n_train": 2**18, "n_eval": 2048}


def test_teacher_mlp_data_noisy_labels_and_two_separate_noise_free_evaluation_samples():
    """Training labels are the teacher plus N(0, s^2); the test and validation samples are noise-free
    teacher outputs on different inputs; with validation.fraction 0.1 nothing is held out."""
    wl = get_workload("teacher_mlp", {**MLP_SMALL, "noise_std": 1.5}, validation_fraction=0.1)
    data = wl.load()
    (x, y), (xe, ye), (xv, yv) = data.train, data.eval, data.valid
    assert data.train_size == 2**18 and wl.train_size() == 2**18  # nothing held out
    assert float((y - wl.target_fn(x)).var()) == pytest.approx(1.5**2, rel=0.02)
    assert torch.equal(ye, wl.target_fn(xe)) and torch.equal(yv, wl.target_fn(xv))
    assert not torch.equal(xe, xv) and len(xe) == len(xv) == 2048
    # the metric is 1/2 E(f - f*)^2: the mean predictor scores 1/2 Var f*, the chance level
    mean_model = torch.nn.Linear(16, 1)
    with torch.no_grad():
        mean_model.weight.zero_()
        mean_model.bias.fill_(float(ye.mean()))
    loss_sum, metric_sum, n = wl.eval_sums(mean_model, data.eval)
    assert metric_sum / n == pytest.approx(0.5 * float(ye.var(unbiased=False)), rel=1e-4)
    assert loss_sum / n == pytest.approx(metric_sum / n + 0.5 * 1.5**2)
    assert wl.chance_metric() == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize("seed", [0, 1])
def test_teacher_mlp_warmup_decides_whether_a_large_lr_trains(seed):
    """The reason the workload exists: at B=4096 and LR 0.4 (4x the B0 recipe's), the ReLU student
    without warmup diverges or collapses to the mean (excess risk ~0.3); the same LR reached over a
    40-step ramp trains to an excess risk of 0.1 well within 100 steps."""
    def run(warmup_steps: int):
        spec = load_spec(data={"workload": "teacher_mlp", "workload_options": MLP_SMALL, "batch_size": 4096,
                               "method": "none", "threads": 1, "peak_lr": 0.4, "seed": seed,
                               "warmup_epochs": warmup_steps * 4096 / 2**18, "budget": {"examples": 4096 * 100},
                               "eval": {"every_examples": 4096 * 10},
                               "target": {"metric": "excess_risk", "value": 0.1}})
        return Trial(spec).run().summary

    cold, warm = run(0), run(40)
    assert cold["status"] == "diverged" or cold["best_metric"] > 0.25, cold
    assert warm["status"] == "complete" and warm["steps_to_target"] is not None and warm["steps_to_target"] <= 70, warm
