import math

import pytest

from harness.errors import SpecError
from harness.rules.scaling import METHODS, BaseRecipe, get_method, resolve
from harness.spec import load_spec

IMAGENET = 1_281_167


def imagenet_1k_row() -> BaseRecipe:
    return BaseRecipe(base_batch_size=1024, peak_lr=2**2.5, warmup_epochs=0.3125, epochs=90,
                      decay={"kind": "poly", "power": 2}, optimizer={"name": "lars"})


@pytest.mark.parametrize("batch,log2_lr,warmup_epochs", [
    (1024, 2.5, 0.3125), (2048, 3.0, 0.625), (4096, 3.5, 1.25),
    (8192, 4.0, 2.5), (16384, 4.5, 5.0), (32768, 5.0, 10.0),
])
def test_legw_reproduces_published_imagenet_table_from_its_1k_row(batch, log2_lr, warmup_epochs):
    r = resolve(imagenet_1k_row(), batch, "legw", IMAGENET)
    assert math.log2(r.peak_lr) == pytest.approx(log2_lr, abs=1e-12)
    assert r.warmup_epochs == pytest.approx(warmup_epochs, abs=1e-12)
    assert r.warmup_steps == 391  # the notes: 391 warmup iterations at every batch size
    assert r.total_steps == math.ceil(90 * IMAGENET / batch)
    assert r.warmup_start_lr == 0.0


def test_shipped_imagenet_recipe_spec_resolves_to_the_table():
    spec = load_spec("experiments/paper/legw_imagenet_recipe.yaml")
    lrs = [resolve(spec.recipe, b, "legw", spec.dataset_size).peak_lr for b in spec.batch_sizes]
    assert [round(math.log2(x), 6) for x in lrs] == [2.5, 3.0, 3.5, 4.0, 4.5, 5.0]


GOYAL = 10 * 5 / 90  # Goyal et al.'s fixed warmup: 5 of 90 epochs, here of a 10-epoch budget


@pytest.mark.parametrize("method,lr_factor,warmup_epochs", [
    ("none", 1, 0.05), ("goyal", 16, GOYAL), ("sqrt", 4, GOYAL), ("legw", 4, 0.05 * 16),
    ("linear-legw", 16, 0.05 * 16), ("sqrt+none", 4, 0), ("linear+fixed", 16, GOYAL), ("none+legw", 1, 0.05 * 16),
    ("sqrt+base", 4, 0.05),
])
def test_rules_follow_their_formulas(method, lr_factor, warmup_epochs):
    base = BaseRecipe(base_batch_size=128, peak_lr=0.1, warmup_epochs=0.05, epochs=10, optimizer={"name": "sgd"})
    r = resolve(base, 2048, method, 60_000)
    assert r.scale == 16
    assert r.peak_lr == pytest.approx(0.1 * lr_factor)
    assert r.warmup_epochs == pytest.approx(warmup_epochs)
    assert r.warmup_steps == math.ceil(warmup_epochs * 60_000 / 2048 - 1e-9)
    assert r.total_steps == math.ceil(10 * 60_000 / 2048)
    assert r.steps_per_epoch == pytest.approx(60_000 / 2048)


def test_goyal_warmup_starts_at_base_lr_and_legw_at_zero():
    base = BaseRecipe(base_batch_size=256, peak_lr=0.1, warmup_epochs=5, epochs=90, optimizer={"name": "momentum"})
    assert resolve(base, 8192, "goyal", IMAGENET).warmup_start_lr == pytest.approx(0.1)
    assert resolve(base, 8192, "legw", IMAGENET).warmup_start_lr == 0.0


def test_warmup_over_half_and_whole_run_warn_but_are_not_clipped():
    base = BaseRecipe(base_batch_size=128, peak_lr=0.1, warmup_epochs=0.5, epochs=10, optimizer={"name": "sgd"})
    half = resolve(base, 128 * 12, "legw", 60_000)  # 6 of 10 epochs
    assert half.warmup_epochs == pytest.approx(6) and any("more than half" in w for w in half.warnings)
    whole = resolve(base, 128 * 64, "legw", 60_000)  # 32 epochs of warmup in a 10-epoch run
    assert whole.warmup_epochs == pytest.approx(32)
    assert whole.warmup_steps > whole.total_steps
    assert any("whole run" in w for w in whole.warnings)
    assert resolve(base, 128, "legw", 60_000).warnings == ()


def test_explicit_lr_and_warmup_replace_the_rule():
    base = BaseRecipe(base_batch_size=128, peak_lr=0.1, warmup_epochs=0.5, epochs=10, optimizer={"name": "sgd"})
    r = resolve(base, 1024, "none+none", 60_000, peak_lr=0.7, warmup_epochs=1.0, lr_method_label="tuned")
    assert (r.method, r.peak_lr, r.warmup_epochs, r.lr_rule) == ("tuned", 0.7, 1.0, "given")


def test_unknown_method_error_lists_the_allowed_ones():
    with pytest.raises(SpecError) as e:
        get_method("cubic")
    msg = str(e.value)
    assert "'cubic'" in msg and all(m in msg for m in METHODS) and "\n" not in msg


@pytest.mark.parametrize("batch", [256, 1024, 4096, 8192, 32768])
def test_fixed_warmup_is_goyals_5_of_90_epochs_at_every_batch_not_the_b0_recipes(batch):
    """Goyal et al. warm up for 5 of 90 epochs at every B; the B0 recipe's 0.02-epoch w0 (one step
    at 4K) is what LEGW scales, not the fixed baseline."""
    base = BaseRecipe(base_batch_size=256, peak_lr=0.4, warmup_epochs=0.02, epochs=90, optimizer={"name": "momentum"})
    r = resolve(base, batch, "goyal", 130_000)
    assert r.warmup_epochs == pytest.approx(5.0)
    assert r.warmup_steps == math.ceil(5 * 130_000 / batch - 1e-9) > 1
    assert r.warmup_start_lr == pytest.approx(0.4)  # from eta0 to k*eta0
    assert resolve(base, batch, "goyal", 130_000, epochs=18).warmup_epochs == pytest.approx(1.0)  # 5/90 of the budget
    given = base.model_copy(update={"fixed_warmup_epochs": 2.5})
    assert resolve(given, batch, "sqrt", 130_000).warmup_epochs == 2.5


def test_realised_peak_lr_is_stated_and_a_shortfall_warns():
    """PTB-small's LEGW at 64x: a 6.4-epoch warmup runs into the halving that starts at epoch 4, so
    the schedule never goes above 20 although the rule says 160; counting the decay's epochs from
    the end of the warmup restores the peak."""
    base = BaseRecipe(base_batch_size=20, peak_lr=20, warmup_epochs=0.1, epochs=13, grad_clip_norm=5,
                      decay={"kind": "exponential", "gamma": 0.5, "start_epoch": 4}, optimizer={"name": "sgd"})
    n = 37_095 * 20  # ~PTB-sized: 1855 steps per epoch at B0
    r = resolve(base, 1280, "legw", n)
    assert r.peak_lr == pytest.approx(160)
    from harness.rules.schedules import lr_at

    assert r.realised_peak_lr == pytest.approx(max(lr_at(s, r) for s in range(r.total_steps)))
    assert r.realised_peak_lr < 0.2 * r.peak_lr
    assert any("realised peak LR" in w and "never reaches" in w for w in r.warnings)
    after = base.model_copy(update={"decay": {"kind": "exponential", "gamma": 0.5, "start_epoch": 4,
                                              "after_warmup": True}})
    r2 = resolve(after, 1280, "legw", n)
    assert r2.realised_peak_lr == pytest.approx(160) and not any("realised" in w for w in r2.warnings)
    assert resolve(base, 20, "legw", n).realised_peak_lr == pytest.approx(20)
