"""The gradient noise scale against its closed form, and the methods built on it."""

import math

import pytest
import torch

from harness.noise import NoiseScale
from harness.spec import load_spec
from harness.trial import Trial
from harness.workloads import register_workload
from tests.plugins import LinearRegression

register_workload(LinearRegression)


@pytest.mark.parametrize("noise_std,error_norm", [(1.0, 1.0), (2.0, 0.5)])
def test_noise_scale_matches_linear_regression_closed_form(noise_std, error_norm):
    """B_simple = d (1 + s^2/|e|^2) + 1, estimated from micro-batch (8) and step (64) gradient norms
    over 4000 steps at a negligible LR (the weights, hence e, stay put)."""
    spec = load_spec(data={"workload": "linreg", "workload_options": {"noise_std": noise_std, "error_norm": error_norm},
                           "batch_size": 64, "micro_batch_size": 8, "method": "none", "threads": 1,
                           "budget": {"examples": 64 * 4000}, "noise_ema_epochs": 0.25,
                           "eval": {"every_examples": 10**9}, "divergence": {"loss_factor": None}})
    t = Trial(spec)
    expected = t.workload.expected_noise_scale()
    measured = t.run().summary["noise_scale"]
    assert measured == pytest.approx(expected, rel=0.05), (measured, expected)


def test_estimator_formulas_on_exact_norms():
    # |G|^2 = 4, tr(Sigma) = 200: E|G_b|^2 = |G|^2 + tr(Sigma)/b
    est = NoiseScale(b_small=10, b_big=100, decay=0.5)
    est.update(torch.tensor(4 + 200 / 10), torch.tensor(4 + 200 / 100))
    assert est.value() == pytest.approx(200 / 4)
    assert float(est.gain(base_batch=10, batch=100)) == pytest.approx((200 / 10 + 4) / (200 / 100 + 4))


def test_noise_scale_is_logged_and_a_single_micro_batch_is_split_in_two(data_dir):
    spec = load_spec(data={"workload": "fmnist_lstm", "data_dir": str(data_dir), "batch_size": 64, "threads": 1,
                           "budget": {"epochs": 1}})
    t = Trial(spec)
    assert t.micro_batch_size == 32
    res = t.run()
    assert all(math.isfinite(r["noise_scale"]) for r in res.measurements)
    off = Trial(load_spec(data={**spec.model_dump(), "noise_scale": False}))
    assert off.micro_batch_size == 64 and math.isnan(off.run().measurements[-1]["noise_scale"])


def test_noise_scale_says_why_it_was_not_measured(data_dir):
    spec = load_spec(data={"workload": "fmnist_lstm", "data_dir": str(data_dir), "batch_size": 64,
                           "micro_batch_size": 64, "threads": 1, "budget": {"epochs": 0.5}})
    s = Trial(spec).run().summary
    assert s["noise_scale"] is None and "one micro-batch per step" in s["noise_note"]


def test_adascale_gain_scales_lr_and_clock(data_dir):
    """AdaScale at k = 4: the gain is in [1, 4], LR = gain * base LR(tau), and the run ends when
    the clock tau, advanced by the gain, reaches the base schedule's length."""
    spec = load_spec(data={"workload": "fmnist_lstm", "data_dir": str(data_dir), "batch_size": 256, "threads": 1,
                           "micro_batch_size": 64, "method": "adascale", "budget": {"epochs": 2},
                           "recipe": {"warmup_epochs": 0, "decay": {"kind": "constant"}}})
    t = Trial(spec)
    res = t.run()
    gains = [r["gain"] for r in res.measurements]
    base_steps = res.summary["adascale_base_steps"]
    assert base_steps == math.ceil(2 * 512 / 128)
    assert all(1.0 <= g <= 4.0 for g in gains)
    assert t.control.tau >= base_steps and t.control.tau - t.control.last_gain < base_steps
    assert res.measurements[-1]["lr"] == pytest.approx(gains[-1] * 0.4)  # constant decay: gain x eta0
    assert base_steps / 4 <= res.summary["steps"] <= base_steps


def test_gp_test_finds_a_minimum_behind_and_not_ahead():
    import numpy as np

    from harness.autotune import gp_minimum_behind

    x = np.linspace(0, 1, 120)
    rng = np.random.default_rng(0)
    u_shape = (x - 0.5) ** 2 * 8 + 0.05 * rng.standard_normal(120)
    falling = 2 - 1.5 * x + 0.05 * rng.standard_normal(120)
    behind, at = gp_minimum_behind(u_shape)
    assert behind and abs(at - 60) <= 12
    assert gp_minimum_behind(falling)[0] is False


def test_autowu_ramps_then_detects_and_decays(data_dir):
    spec = load_spec(data={"workload": "fmnist_lstm", "data_dir": str(data_dir), "batch_size": 32, "threads": 1,
                           "method": "autowu", "budget": {"epochs": 6}, "noise_scale": False,
                           "divergence": {"loss_factor": None},
                           "autowu": {"start_lr": 1e-3, "ramp_factor_per_epoch": 100, "check_every_epochs": 0.25}})
    t = Trial(spec)
    res = t.run()
    s = res.summary
    assert s["autowu_warmup_steps"] is not None, "the ramp must overshoot the loss minimum and be detected"
    w = s["autowu_warmup_steps"]
    assert 0 < w < res.recipe.total_steps
    ramp_at_w = 1e-3 * 100 ** (w / res.recipe.steps_per_epoch)
    assert s["autowu_peak_lr"] <= ramp_at_w  # reset to the LR at the smoothed minimum, behind the end
    lrs = [r["lr"] for r in res.measurements if r["step"] > w]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < s["autowu_peak_lr"] * 0.05  # cosine to 0
