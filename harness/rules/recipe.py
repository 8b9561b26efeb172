"""The recipe models: a base recipe tuned at B0 (``BaseRecipe``: peak LR, warmup, decay, epochs,
optimizer) and the recipe resolved at one batch size (``ResolvedRecipe``), which ``scaling`` builds
and ``schedules`` and ``harness.rules.optimizers`` read. Pure pydantic: no torch, no rule."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from harness.rules.optimizers import OPTIMIZERS, optimizer_params


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- decays (applied after warmup; see harness.rules.schedules) -------------------------------------


class ConstantDecay(_Frozen):
    kind: Literal["constant"] = "constant"


class PolyDecay(_Frozen):
    """LR falls from the peak at the end of warmup to ``end_factor * peak`` at the last step."""

    kind: Literal["poly"] = "poly"
    power: PositiveFloat = 1.0
    end_factor: NonNegativeFloat = 0.0


class CosineDecay(_Frozen):
    kind: Literal["cosine"] = "cosine"
    end_factor: NonNegativeFloat = 0.0


class ExponentialDecay(_Frozen):
    """Multiply by ``gamma`` once per epoch, from the (0-based) epoch ``start_epoch`` on.

    Zaremba et al.'s PTB-small (LR 1, halved every epoch after the 4th) is ``gamma: 0.5,
    start_epoch: 4``. ``after_warmup: true`` counts the epochs from the end of the warmup
    instead of from the start of the run, so that a long (LEGW) warmup reaches the peak.
    """

    kind: Literal["exponential"] = "exponential"
    gamma: Annotated[float, Field(gt=0, le=1)]
    start_epoch: NonNegativeFloat = 1.0
    after_warmup: bool = False


class MultiStepDecay(_Frozen):
    """Multiply by ``gamma`` at each milestone epoch (Goyal et al.: 30, 60, 80 with 0.1)."""

    kind: Literal["multistep"] = "multistep"
    milestones_epochs: Annotated[list[PositiveFloat], Field(min_length=1)]
    gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    #: Count the milestones' epochs from the end of the warmup (see ExponentialDecay).
    after_warmup: bool = False


Decay = Annotated[
    Union[ConstantDecay, PolyDecay, CosineDecay, ExponentialDecay, MultiStepDecay],
    Field(discriminator="kind"),
]
DECAY_KINDS = ("constant", "poly", "cosine", "exponential", "multistep")


class OptimizerSpec(BaseModel):
    """``{name: momentum, momentum: 0.9, weight_decay: 5e-4}``; parameters are checked against
    the optimizer registry, so a misspelt one is an error that lists the allowed ones."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="after")
    def _known(self) -> "OptimizerSpec":
        if self.name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; allowed: {', '.join(OPTIMIZERS)}")
        allowed = OPTIMIZERS[self.name].defaults
        for key in self.model_extra or {}:
            if key not in allowed:
                raise ValueError(
                    f"unknown parameter {key!r} for optimizer {self.name!r}; allowed: {', '.join(allowed)}"
                )
        return self

    @property
    def params(self) -> dict[str, Any]:
        """Registry defaults overlaid with what the spec set."""
        return optimizer_params(self.name, dict(self.model_extra or {}))


class BaseRecipe(_Frozen):
    """A recipe tuned at ``base_batch_size``; every workload states one per optimizer."""

    base_batch_size: PositiveInt
    peak_lr: PositiveFloat
    warmup_epochs: NonNegativeFloat = 0.0
    # Where a warmup ramp starts: 0 (LEGW, You et al.) or the unscaled eta0 (Goyal et al.:
    # "from eta0 to k*eta0"). Methods may set it; see METHODS.
    warmup_init: Literal["zero", "base"] = "zero"
    epochs: PositiveFloat
    #: Length of the ``fixed`` warmup rule (Goyal et al.'s baseline), the same at every batch size;
    #: default: 5/90 of the epoch budget, Goyal et al.'s 5 of 90 epochs.
    fixed_warmup_epochs: NonNegativeFloat | None = None
    decay: Decay = ConstantDecay()
    optimizer: OptimizerSpec
    grad_clip_norm: PositiveFloat | None = None
    source: str = ""


def merge_recipe(base: dict, over: dict) -> dict:
    """``over`` layered on ``base``, recursively; a mapping whose ``kind`` (decay) or ``name``
    (optimizer) changes is replaced, not merged (a poly decay's ``power`` means nothing to cosine)."""
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        switched = isinstance(v, dict) and isinstance(old, dict) and any(
            tag in v and v[tag] != old.get(tag) for tag in ("kind", "name"))
        out[k] = merge_recipe(old, v) if isinstance(v, dict) and isinstance(old, dict) and not switched else v
    return out


class ResolvedRecipe(_Frozen):
    """Everything a schedule and an optimizer need at one batch size."""

    method: str
    lr_rule: str
    warmup_rule: str
    batch_size: int
    base_batch_size: int
    scale: float
    dataset_size: int
    steps_per_epoch: float
    epochs: float
    total_steps: int
    base_peak_lr: float
    peak_lr: float
    warmup_epochs: float
    warmup_steps: int
    warmup_start_lr: float
    decay: Decay
    optimizer: OptimizerSpec
    grad_clip_norm: float | None
    #: The largest LR the schedule uses (harness.rules.schedules.realised_peak_lr): below ``peak_lr``
    #: when the run ends inside the warmup or a decay in absolute epochs starts before it ends.
    realised_peak_lr: float = 0.0
    warnings: tuple[str, ...] = ()

    @property
    def warmup_fraction(self) -> float:
        return self.warmup_steps / self.total_steps
