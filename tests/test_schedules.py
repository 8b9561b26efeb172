import math

import pytest

from harness.rules.scaling import BaseRecipe, resolve
from harness.rules.schedules import lr_at, lr_table


def recipe(decay, warmup_epochs=0.0, method="none", batch=100, n=1000, epochs=10, lr=1.0, **extra):
    base = BaseRecipe(base_batch_size=100, peak_lr=lr, warmup_epochs=warmup_epochs, epochs=epochs,
                      decay=decay, optimizer={"name": "sgd"}, **extra)
    return resolve(base, batch, method, n)  # 10 steps per epoch at B=100


def test_linear_warmup_from_zero_reaches_peak_at_its_last_step():
    r = recipe({"kind": "constant"}, warmup_epochs=0.5)  # 5 steps
    assert [lr_at(s, r) for s in range(7)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0])


def test_goyal_warmup_ramps_from_eta0_to_k_eta0():
    r = recipe({"kind": "constant"}, method="goyal", batch=400, n=4000, fixed_warmup_epochs=1)  # k=4, 10 steps
    assert r.warmup_steps == 10 and r.peak_lr == 4.0
    assert lr_at(0, r) == pytest.approx(1.0 + 3.0 * 1 / 10)
    assert lr_at(9, r) == pytest.approx(4.0)


def test_poly_decay_runs_from_peak_after_warmup_to_end_factor():
    r = recipe({"kind": "poly", "power": 2, "end_factor": 0.1}, warmup_epochs=1)  # w=10, T=100
    assert lr_at(10, r) == pytest.approx(1.0)
    frac = (55 - 10) / 90
    assert lr_at(55, r) == pytest.approx(0.1 + 0.9 * (1 - frac) ** 2)
    assert lr_at(100, r) == pytest.approx(0.1)


def test_cosine_decay_halfway_is_the_mean_of_peak_and_end():
    r = recipe({"kind": "cosine"}, warmup_epochs=0)
    assert lr_at(0, r) == pytest.approx(1.0)
    assert lr_at(50, r) == pytest.approx(0.5)
    assert lr_at(75, r) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))


def test_exponential_is_zaremba_ptb_small():
    # LR 1 for epochs 0-3, then halved every epoch: 0.5 ** max(i + 1 - 4, 0) in Zaremba et al.'s code.
    r = recipe({"kind": "exponential", "gamma": 0.5, "start_epoch": 4}, epochs=13)
    per_epoch = [lr_at(e * 10 + 5, r) for e in range(13)]
    assert per_epoch == pytest.approx([0.5 ** max(i + 1 - 4, 0) for i in range(13)])


def test_multistep_multiplies_at_each_milestone():
    r = recipe({"kind": "multistep", "milestones_epochs": [3, 6, 8], "gamma": 0.1})
    assert [lr_at(s, r) for s in (29, 30, 59, 60, 80, 99)] == pytest.approx([1, 0.1, 0.1, 0.01, 0.001, 0.001])


def test_warmup_into_a_decayed_epoch_ramps_to_the_decayed_value():
    # LEGW at large k can end warmup after a multi-step milestone: the ramp meets the decay, no jump.
    r = recipe({"kind": "multistep", "milestones_epochs": [2], "gamma": 0.1}, warmup_epochs=3)
    assert lr_at(r.warmup_steps - 1, r) == pytest.approx(lr_at(r.warmup_steps, r)) == pytest.approx(0.1)


def test_steps_count_updates_not_examples_and_table_ends_at_last_step():
    r = recipe({"kind": "poly", "power": 1}, batch=300, n=1000)  # 10 epochs of 3.33 steps -> 34 steps
    table = lr_table(r, every=10)
    assert r.total_steps == 34
    assert [s for s, _, _ in table] == [0, 10, 20, 30, 33]
    assert table[1][1] == pytest.approx(10 * 300 / 1000)


def test_multistep_clock_after_warmup_shifts_the_milestones():
    r = recipe({"kind": "multistep", "milestones_epochs": [2], "gamma": 0.1, "after_warmup": True}, warmup_epochs=1)
    assert lr_at(9, r) == pytest.approx(1.0)  # last warmup step reaches the peak
    assert lr_at(29, r) == pytest.approx(1.0) and lr_at(30, r) == pytest.approx(0.1)  # epoch 2 after warmup = step 30
    absolute = recipe({"kind": "multistep", "milestones_epochs": [2], "gamma": 0.1}, warmup_epochs=1)
    assert lr_at(20, absolute) == pytest.approx(0.1)
