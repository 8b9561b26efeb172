import math

import pytest

from harness.errors import SpecError
from harness.scaling import METHODS, BaseRecipe, get_method, resolve
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


@pytest.mark.parametrize("method,lr_factor,warmup_factor", [
    ("none", 1, 1), ("goyal", 16, 1), ("sqrt", 4, 1), ("legw", 4, 16), ("linear-legw", 16, 16),
    ("sqrt+none", 4, 0), ("linear+fixed", 16, 1), ("none+legw", 1, 16),
])
def test_rules_follow_their_formulas(method, lr_factor, warmup_factor):
    base = BaseRecipe(base_batch_size=128, peak_lr=0.1, warmup_epochs=0.05, epochs=10, optimizer={"name": "sgd"})
    r = resolve(base, 2048, method, 60_000)
    assert r.scale == 16
    assert r.peak_lr == pytest.approx(0.1 * lr_factor)
    assert r.warmup_epochs == pytest.approx(0.05 * warmup_factor)
    assert r.warmup_steps == math.ceil(0.05 * warmup_factor * 60_000 / 2048 - 1e-9)
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
