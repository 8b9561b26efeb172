"""Scaling rules: turn a recipe tuned at batch B0 into the recipe at batch B.

A base recipe is what somebody tuned at B0: peak LR eta0, warmup w0 epochs, a decay, an epoch
budget E and an optimizer. Moving to B (k = B/B0) needs two independent choices:

* the LR rule: ``none`` (eta0), ``linear`` (eta0*k, Goyal et al. 2017) or ``sqrt`` (eta0*sqrt(k),
  Hoffer et al. 2017; the variance of the gradient estimate falls as 1/B);
* the warmup rule: ``none``; ``fixed``, the same number of epochs at every B, Goyal et al.'s
  baseline: 5 of their 90 epochs, so by default 5/90 of the epoch budget (``fixed_warmup_epochs``
  sets it), *not* the B0 recipe's w0, which is tuned for B0 and is one step long at 4K; ``legw``
  (w0*k epochs: "linear-epoch gradual warmup", You et al. 2019, which keeps the number of warmup
  *iterations* constant because an epoch has k times fewer steps); ``base`` (w0 epochs at every
  B: the control arm, the base recipe unchanged).

The epoch budget stays E at every B, so a large batch takes k times fewer steps. With LEGW the
warmup share of the run grows with k and reaches the whole run at k*w0 >= E; we warn about that
rather than clip it, because clipping would silently change the method being measured. For the
same reason the resolved recipe states the *realised* peak LR (the largest LR the schedule ever
uses) beside the nominal one and warns when they differ by more than 5%: a long warmup that runs
into a decay measured in absolute epochs never reaches the nominal peak.

Step arithmetic: every optimizer step consumes exactly B examples of an endless stream of
shuffled epochs (see ``harness.data.stream``), so an epoch is N/B steps, a fractional number.
Epoch quantities become steps by rounding *up*: ``ceil(epochs * N / B)``. This keeps LEGW's
warmup constant in steps (391 at every batch for the published ImageNet recipe), which
``ceil(N/B)`` steps per epoch would not (400 at 32K).

This module is pure Python (pydantic, no torch) so rules test without a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.errors import SpecError
from harness.plugins import registered
from harness.rules.recipe import (  # noqa: F401  (the models a recipe is made of, importable from here)
    DECAY_KINDS,
    BaseRecipe,
    ConstantDecay,
    CosineDecay,
    Decay,
    ExponentialDecay,
    MultiStepDecay,
    OptimizerSpec,
    PolyDecay,
    ResolvedRecipe,
    merge_recipe,
)
from harness.rules.schedules import realised_peak_lr

# --- methods ------------------------------------------------------------------------------------

LR_RULES = {"none": lambda k: 1.0, "linear": lambda k: k, "sqrt": math.sqrt}
#: Goyal et al. 2017 warm up for 5 of 90 epochs at every batch size.
GOYAL_WARMUP_FRACTION = 5 / 90
WARMUP_RULES = ("none", "fixed", "legw", "base")


def lr_rules() -> dict:
    """LR rule -> f(k): the built-in ones, then those of plugin modules (harness.plugins)."""
    return {**LR_RULES, **registered("LR_RULES", LR_RULES)}


def warmup_rules() -> list[str]:
    """The built-in warmup rules, then those of plugin modules (f(base, k, budget_epochs) -> epochs)."""
    return [*WARMUP_RULES, *registered("WARMUP_RULES", WARMUP_RULES)]


def fixed_warmup_epochs(base: BaseRecipe, budget_epochs: float | None = None) -> float:
    """The ``fixed`` rule's warmup: the recipe's ``fixed_warmup_epochs``, else 5/90 of the budget."""
    if base.fixed_warmup_epochs is not None:
        return base.fixed_warmup_epochs
    return GOYAL_WARMUP_FRACTION * (base.epochs if budget_epochs is None else budget_epochs)


def warmup_epochs_for(rule: str, base: BaseRecipe, k: float, budget_epochs: float | None = None) -> float:
    """Warmup length in epochs of a warmup rule at scale k = B/B0."""
    if rule == "none":
        return 0.0
    if rule == "fixed":
        return fixed_warmup_epochs(base, budget_epochs)
    if rule == "legw":
        return base.warmup_epochs * k
    if rule == "base":
        return base.warmup_epochs
    if rule in (plugins := registered("WARMUP_RULES", WARMUP_RULES)):
        return float(plugins[rule](base, k, budget_epochs))
    raise ValueError(f"unknown warmup rule {rule!r}")


@dataclass(frozen=True)
class Method:
    name: str
    lr_rule: str
    warmup_rule: str
    warmup_init: str | None  # None keeps the base recipe's
    summary: str


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("goyal", "linear", "fixed", "base", "Linear LR, fixed warmup ramping eta0 -> k*eta0 (Goyal et al. 2017)"),
        Method("legw", "sqrt", "legw", "zero", "Sqrt LR, warmup linear in epochs from 0 (You et al. 2019)"),
        Method("sqrt", "sqrt", "fixed", None, "Sqrt LR, fixed warmup (Hoffer et al. 2017)"),
        Method("linear-legw", "linear", "legw", "zero", "Linear LR with LEGW warmup"),
        Method("none", "none", "base", None, "Control: the base recipe unchanged at every batch size"),
    )
}
#: Methods that are not a fixed rule: they choose the LR themselves (see harness.sweep and
#: harness.trial.autotune). Listed here so that specs validate them in one place.
AUTOMATIC_METHODS = {
    "tuned": "Per-batch Optuna search of the peak LR (Shallue et al. 2018)",
    "adascale": "AdaScale SGD: gain from the gradient noise scales LR and clock (Johnson et al. 2020)",
    "autowu": "AutoWU: exponential ramp, GP test for the loss minimum, then cosine decay (Kim et al. 2021)",
    "noise-aware": "LR eta0*k*(B0+Bn)/(B+Bn) with Bn the noise scale at B0, LEGW warmup (McCandlish et al. 2018)",
}


def get_method(name: str) -> Method:
    """A named method, or ``<lr_rule>+<warmup_rule>`` such as ``sqrt+none``."""
    if name in METHODS:
        return METHODS[name]
    if "+" in name:
        lr_rule, _, warmup_rule = name.partition("+")
        if lr_rule in lr_rules() and warmup_rule in warmup_rules():
            return Method(name, lr_rule, warmup_rule, None, f"{lr_rule} LR, {warmup_rule} warmup")
    if name in AUTOMATIC_METHODS:  # a caller that needs a rule (schedule, resolve) got one that has none
        raise SpecError("method", name, f"allowed here: a scaling rule ({', '.join(METHODS)} or <lr>+<warmup>); "
                        f"{name!r} decides its LR while training, so it has no schedule to resolve: run it in a "
                        "sweep (batchscale sweep)")
    raise SpecError("method", name, f"allowed: {', '.join(all_method_names())} or <lr>+<warmup> with lr in "
                    f"{{{', '.join(lr_rules())}}} and warmup in {{{', '.join(warmup_rules())}}}" + (
                        " (a plugin's rule? name its module in BATCHSCALE_WORKLOAD_MODULES, as for the sweep)"
                        if "+" in name else ""), choices=all_method_names())


def all_method_names() -> list[str]:
    return [*METHODS, *AUTOMATIC_METHODS]


def validate_method(name: str) -> str:
    if name not in AUTOMATIC_METHODS:
        get_method(name)
    return name


# --- resolution ------------------------------------------------------------------------------------


def epochs_to_steps(epochs: float, dataset_size: int, batch_size: int) -> int:
    """``ceil(epochs * N / B)``; the tolerance keeps exact products (10*N/B == 40) from rounding up."""
    return math.ceil(epochs * dataset_size / batch_size - 1e-9)


def resolve(
    base: BaseRecipe,
    batch_size: int,
    method: str,
    dataset_size: int,
    *,
    epochs: float | None = None,
    peak_lr: float | None = None,
    warmup_epochs: float | None = None,
    lr_method_label: str | None = None,
) -> ResolvedRecipe:
    """The recipe at ``batch_size`` under ``method``.

    ``peak_lr`` / ``warmup_epochs`` replace what the rule would give (a tuned trial chooses its own
    LR but keeps the rule's warmup); ``epochs`` replaces the base budget.
    """
    if batch_size <= 0:
        raise SpecError("batch_size", batch_size, "allowed: a positive integer")
    if dataset_size <= 0:
        raise SpecError("dataset_size", dataset_size, "allowed: a positive integer")
    rule = get_method(method)
    k = batch_size / base.base_batch_size
    lr = base.peak_lr * float(lr_rules()[rule.lr_rule](k)) if peak_lr is None else float(peak_lr)
    total_epochs = base.epochs if epochs is None else epochs
    w_epochs = warmup_epochs_for(rule.warmup_rule, base, k, total_epochs) if warmup_epochs is None else warmup_epochs
    total = max(1, epochs_to_steps(total_epochs, dataset_size, batch_size))
    warm = epochs_to_steps(w_epochs, dataset_size, batch_size) if w_epochs > 0 else 0
    init = rule.warmup_init or base.warmup_init
    start = min(base.peak_lr, lr) if init == "base" else 0.0

    warnings = []
    if warm >= total:
        warnings.append(
            f"warmup ({warm} steps, {w_epochs:g} epochs) covers the whole run ({total} steps, "
            f"{total_epochs:g} epochs): the peak LR is never left"
        )
    elif warm > total / 2:
        warnings.append(f"warmup takes {warm} of {total} steps ({100 * warm / total:.0f}%): more than half the run")
    if batch_size > dataset_size:
        warnings.append(f"batch size {batch_size} exceeds the dataset ({dataset_size} examples): a step spans epochs")

    recipe = ResolvedRecipe(
        method=lr_method_label or rule.name,
        lr_rule="given" if peak_lr is not None else rule.lr_rule,
        warmup_rule="given" if warmup_epochs is not None else rule.warmup_rule,
        batch_size=batch_size,
        base_batch_size=base.base_batch_size,
        scale=k,
        dataset_size=dataset_size,
        steps_per_epoch=dataset_size / batch_size,
        epochs=total_epochs,
        total_steps=total,
        base_peak_lr=base.peak_lr,
        peak_lr=lr,
        warmup_epochs=w_epochs,
        warmup_steps=warm,
        warmup_start_lr=start,
        decay=base.decay,
        optimizer=base.optimizer,
        grad_clip_norm=base.grad_clip_norm,
        warnings=tuple(warnings),
    )

    realised = realised_peak_lr(recipe)
    if realised < (1 - 0.05) * lr:
        warnings.append(f"realised peak LR {realised:.4g} is {100 * (1 - realised / lr):.0f}% below the nominal "
                        f"{lr:.4g}: the schedule never reaches it (a warmup of {w_epochs:g} epochs runs into the "
                        f"decay or the end of the run)")
    return recipe.model_copy(update={"realised_peak_lr": realised, "warnings": tuple(warnings)})
