"""Experiment specs: YAML -> validated objects, ``--set`` overrides, one-line errors.

Layers, lowest first (as in init2winit): the workload's defaults (its base recipe per optimizer),
the YAML file, then ``--set a.b=c`` overrides. A spec with an ``axes`` key is a sweep spec
(``batchscale sweep``); without, it describes one trial (``batchscale train``).

Every problem is a ``SpecError``: exit code 2 and one line naming the key, the value and what is
allowed. Nothing is half-applied: a spec is validated whole before anything runs.
"""

from __future__ import annotations

import copy
import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      ValidationError, model_validator)

from harness.errors import BatchscaleError, SpecError
from harness.optimizers import OPTIMIZERS
from harness.scaling import AUTOMATIC_METHODS, BaseRecipe, merge_recipe, validate_method


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(Strict):
    """Training length: epochs or examples (one of them); the recipe's epochs when neither."""

    epochs: PositiveFloat | None = None
    examples: PositiveInt | None = None

    @model_validator(mode="after")
    def _one(self):
        if self.epochs is not None and self.examples is not None:
            raise ValueError("give budget.epochs or budget.examples, not both")
        return self

    def epochs_for(self, dataset_size: int) -> float | None:
        """The budget in epochs of ``dataset_size`` examples; None when neither is given (the
        recipe's epochs apply). The one place that converts examples to epochs."""
        if self.epochs:
            return self.epochs
        return self.examples / dataset_size if self.examples else None


class Target(Strict):
    """A metric value to reach; the first evaluation reaching it is recorded (and may stop the run)."""

    metric: str
    value: float
    stop: bool = False


class EvalSpec(Strict):
    #: Evaluations per epoch (at least one per epoch); ignored when ``every_examples`` is set.
    per_epoch: Annotated[float, Field(ge=1)] = 2.0
    every_examples: PositiveInt | None = None
    #: Evaluate on the first n held-out examples only; all when unset.
    max_examples: PositiveInt | None = None


class Divergence(Strict):
    """NaN/inf always diverges; so does a training loss above ``loss_factor`` x the first step's."""

    loss_factor: Annotated[float, Field(gt=1)] | None = 5.0


class AutoWUSpec(Strict):
    """Settings of the ``autowu`` method (harness.autotune.AutoWUControl). The defaults are Kim et
    al.'s (arXiv 2107.05855, official code kakaobrain/autowu); a trial that changes one says so in
    its recipe warnings."""

    min_lr: PositiveFloat = 1e-5
    max_lr: PositiveFloat = 1.0
    #: The exponential ramp reaches max_lr at this fraction of the run; the warmup ends there at the latest.
    max_warmup_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5
    #: How often the GP tests for the loss minimum (Kim et al.: at the end of every epoch).
    check_every_epochs: PositiveFloat = 1.0
    #: Switch when this many consecutive tests voted "minimum behind".
    patience: PositiveInt = 3
    #: Predictions per test (each on its own subsample); the test votes by majority.
    draws: PositiveInt = 5
    confidence: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    lengthscale: PositiveFloat = 0.2
    #: The last fraction of the run is a cosine cooldown to 0.
    cooldown_fraction: Annotated[float, Field(ge=0, le=1)] = 0.2


class NoiseAwareSpec(Strict):
    """Settings of the ``noise-aware`` rule: B_noise given, or measured at B0 by a probe run."""

    b_noise: PositiveFloat | None = None
    probe_epochs: PositiveFloat = 1.0
    warmup_rule: Literal["none", "fixed", "legw", "base"] = "legw"


class DataParallel(Strict):
    """A trial as several data-parallel workers (harness.distributed, through Ray Train)."""

    #: Workers per trial; each takes batch_size / workers examples of every step.
    workers: PositiveInt = 1


class Resources(Strict):
    cpus: PositiveInt = 1
    gpus: NonNegativeFloat = 0.0


class Common(Strict):
    """What trial and sweep specs share."""

    workload: str
    workload_options: dict[str, Any] = {}
    data_dir: str | None = None
    budget: Budget = Budget()
    target: Target | None = None
    eval: EvalSpec = EvalSpec()
    divergence: Divergence = Divergence()
    micro_batch_size: PositiveInt | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Measure the gradient noise scale (harness.noise). It needs two micro-batches per step: a
    #: batch that fits one micro-batch is split in two (same update, a little slower).
    noise_scale: bool = True
    #: Window of the moving averages of the noise-scale estimates, in epochs of examples seen: they
    #: decay by exp(-B / (window * N)) per step, the same per example at every batch size (a
    #: per-step decay would average over 0.2 epochs at B=128 and 14 epochs at 8192).
    noise_ema_epochs: PositiveFloat = 0.2
    autowu: AutoWUSpec = AutoWUSpec()
    noise_aware: NoiseAwareSpec = NoiseAwareSpec()
    data_parallel: DataParallel = DataParallel()

    def workload_obj(self):
        from harness.workloads import get_workload

        return get_workload(self.workload, self.workload_options, self.data_dir)

    def _check_target(self, wl) -> None:
        if self.target and self.target.metric != wl.metric:
            raise SpecError("target.metric", self.target.metric, f"allowed: {wl.metric!r} (the metric of {wl.name})")


class TrialSpec(Common):
    optimizer: str | None = None
    #: Overrides of the workload's base recipe for this optimizer (any BaseRecipe field).
    recipe: dict[str, Any] = {}
    batch_size: PositiveInt | None = None
    method: str = "legw"
    #: Explicit peak LR / warmup replacing the rule's (tuned trials set them).
    peak_lr: PositiveFloat | None = None
    warmup_epochs: NonNegativeFloat | None = None
    seed: NonNegativeInt = 0
    threads: PositiveInt | None = None

    def check(self) -> "TrialSpec":
        """Cross-field validation that needs the registries (no data is loaded)."""
        wl = self.workload_obj()
        if self.optimizer is not None and self.optimizer not in OPTIMIZERS:
            raise SpecError("optimizer", self.optimizer, f"allowed: {', '.join(OPTIMIZERS)}")
        validate_method(self.method)
        if self.method == "tuned" and self.peak_lr is None:
            raise SpecError("method", self.method, "a single trial cannot be 'tuned'; run a sweep, or give peak_lr")
        base = _base_recipe(wl, self.optimizer, self.recipe, "recipe")
        batch = self.batch_size or base.base_batch_size
        _check_batch_split(self.micro_batch_size, batch, "batch_size", self.data_parallel.workers)
        self._check_target(wl)
        return self

    def base_recipe(self) -> BaseRecipe:
        return _base_recipe(self.workload_obj(), self.optimizer, self.recipe, "recipe")


class Axes(Strict):
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] = [256 * 2**i for i in range(8)]
    methods: Annotated[list[str], Field(min_length=1)] = ["goyal", "legw", "sqrt", "linear-legw"]
    #: Default: the workload's default optimizer.
    optimizers: Annotated[list[str], Field(min_length=1)] | None = None
    seeds: Annotated[list[NonNegativeInt], Field(min_length=1)] = [0]


class Asha(Strict):
    """ASHA early stopping for tuned studies; time is examples seen, fair across batch sizes."""

    grace_epochs: PositiveFloat = 1.0
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0


class Tuning(Strict):
    """The ``tuned`` method: one Optuna study per (batch size, optimizer, seed)."""

    trials: PositiveInt = 8
    #: LR searched log-uniformly over [min/f, max*f] of what the none/linear/sqrt rules predict.
    lr_range_factor: Annotated[float, Field(ge=1)] = 2.0
    #: Warmup rule of tuned trials (their LR is searched, their warmup follows this rule) ...
    warmup_rule: Literal["none", "fixed", "legw", "base"] = "legw"
    #: ... unless the warmup is searched too, log-uniformly in epochs over this range.
    search_warmup: bool = False
    warmup_epochs_range: tuple[PositiveFloat, PositiveFloat] = (0.01, 2.0)
    #: The first trials of each study try the none, sqrt and linear predictions (deduplicated,
    #: with the warmup above), so the tuned curve is never worse than the best rule's LR; TPE
    #: searches the range from there. False: TPE from its own random start-up trials.
    start_from_rules: bool = True
    asha: Asha | None = None
    sampler_seed: NonNegativeInt = 0


class Protocol(Strict):
    """How a study gives each batch size its budget, so that it can answer its question
    (harness.protocol; ../docs/protocols.md).

    * ``fixed_epochs`` (You et al. 2019, Goyal et al. 2017): the same epoch budget at every batch
      size, no retuning; the budget must let the largest batch reach the target at all.
    * ``steps_to_result`` (Shallue et al. 2018): each batch size gets its own step budget, trials
      stop at the target, evaluation is dense, and the tuned arm selects on steps to the target.

    Both size budgets from S(B) = S_min (1 + B_crit/B) (McCandlish et al. 2018): measured by a
    pilot at B0 (steps to the target and the gradient noise scale there, B_crit ~ B_simple), or
    given as ``s_min`` and ``b_crit``.
    """

    kind: Literal["fixed_epochs", "steps_to_result"] = "fixed_epochs"
    #: Budget needed = margin x S_min (1 + B_crit/B): the formula is a lower bound (best LR).
    margin: Annotated[float, Field(ge=1)] = 2.0
    #: Run the pilot when the spec has a target and does not give s_min and b_crit. ``false``:
    #: budgets are not checked, and the report says so.
    pilot: bool = True
    #: Budget of the pilot in epochs (default: the larger of the study's and the recipe's epochs).
    pilot_epochs: PositiveFloat | None = None
    s_min: PositiveFloat | None = None
    b_crit: PositiveFloat | None = None
    #: Run batch sizes whose budget cannot reach the target, with their verdicts "not measurable".
    allow_infeasible: bool = False
    #: steps_to_result: step budget per batch size, replacing margin x S(B).
    step_budgets: dict[PositiveInt, PositiveInt] = {}
    #: Evaluate often enough that steps to the target are resolved to this fraction.
    eval_resolution: Annotated[float, Field(gt=0, le=1)] = 0.05

    @model_validator(mode="after")
    def _both(self):
        if (self.s_min is None) != (self.b_crit is None):
            raise ValueError("give protocol.s_min and protocol.b_crit together, or neither (the pilot measures them)")
        return self


class Projection(Strict):
    """The cost model projecting steps-to-target onto N data-parallel devices (analysis.costmodel)."""

    #: A row of the accelerator table (analysis/accelerators.yaml, or BATCHSCALE_ACCELERATORS);
    #: ``measured`` is this sweep's own per-trial throughput.
    accelerator: str = "measured"
    #: with ``measured``: read the throughput from another results folder of the same workload
    #: (e.g. a sweep run on a GPU) instead of this sweep's trials
    throughput_from: str | None = None
    devices: Annotated[list[PositiveInt], Field(min_length=1)] = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    link_bandwidth_gbps: PositiveFloat = 100.0
    link_latency_us: NonNegativeFloat = 5.0
    step_overhead_ms: NonNegativeFloat = 0.5
    bytes_per_parameter: PositiveInt = 4


class Claim(Strict):
    """A checkable expectation of a paper (``batchscale reproduce``); see analysis.reproduce."""

    id: str
    text: str
    kind: str
    params: dict[str, Any] = {}
    published: str | None = None


class SweepSpec(Common):
    name: str | None = None
    description: str = ""
    #: Overrides of the base recipe for every optimizer, then per optimizer.
    recipe: dict[str, Any] = {}
    recipes: dict[str, dict[str, Any]] = {}
    axes: Axes = Axes()
    resources: Resources = Resources()
    tuning: Tuning = Tuning()
    #: Retries of a trial that raised or was killed, before it is recorded as ``error``.
    retries: NonNegativeInt = 1
    max_concurrent: PositiveInt | None = None
    projection: Projection = Projection()
    protocol: Protocol = Protocol()
    claims: list[Claim] = []

    def check(self) -> "SweepSpec":
        wl = self.workload_obj()
        self._check_protocol()
        for i, name in enumerate(self.optimizers()):
            if name not in OPTIMIZERS:
                raise SpecError(f"axes.optimizers[{i}]", name, f"allowed: {', '.join(OPTIMIZERS)}")
            _base_recipe(wl, name, _merge(self.recipe, self.recipes.get(name, {})), "recipe")
        for name in self.recipes:
            if name not in self.optimizers():
                raise SpecError(f"recipes.{name}", "...", f"allowed: the sweep's optimizers {self.optimizers()}")
        for i, method in enumerate(self.axes.methods):
            try:
                validate_method(method)
            except SpecError as e:
                raise SpecError(f"axes.methods[{i}]", method, e.allowed) from None
        for i, b in enumerate(self.axes.batch_sizes):
            _check_batch_split(self.micro_batch_size, b, f"axes.batch_sizes[{i}]", self.data_parallel.workers)
        if self.data_parallel.workers > 1 and 0 < self.resources.gpus < 1:
            raise SpecError("resources.gpus", self.resources.gpus,
                            "allowed: 0 or at least 1 per worker when data_parallel.workers > 1 (nccl needs a GPU per rank)")
        self._check_target(wl)
        return self

    def _check_protocol(self) -> None:
        p = self.protocol
        if p.kind == "steps_to_result":
            if self.target is None:
                raise SpecError("protocol.kind", p.kind, "allowed only with a target (steps to what?); "
                                "give target: {metric: ..., value: ...}")
            if self.tuning.asha and "tuned" in self.axes.methods:
                raise SpecError("tuning.asha", "...", "allowed only with protocol.kind fixed_epochs (steps_to_result "
                                "trials stop at the target)")
        for b in p.step_budgets:
            if b not in self.axes.batch_sizes:
                raise SpecError(f"protocol.step_budgets.{b}", b, f"allowed: a batch size of axes.batch_sizes "
                                f"{self.axes.batch_sizes}")
        if p.step_budgets and p.kind != "steps_to_result":
            raise SpecError("protocol.step_budgets", "...", "allowed only with protocol.kind steps_to_result")

    def budget_epochs(self, optimizer: str, dataset_size: int) -> float:
        """The study's epoch budget: budget.epochs, budget.examples / N, or the base recipe's epochs."""
        return self.budget.epochs_for(dataset_size) or self.base_recipe(optimizer).epochs

    def optimizers(self) -> list[str]:
        return self.axes.optimizers or [self.workload_obj().default_optimizer]

    def base_recipe(self, optimizer: str) -> BaseRecipe:
        return _base_recipe(self.workload_obj(), optimizer, _merge(self.recipe, self.recipes.get(optimizer, {})), "recipe")

    def trial_spec(self, optimizer: str, method: str, batch_size: int, seed: int, **extra) -> TrialSpec:
        """One trial of this sweep; ``extra`` replaces fields (a protocol's budget, evaluation, target);
        ``fixed_warmup_epochs`` goes into the recipe."""
        recipe = _merge(self.recipe, self.recipes.get(optimizer, {}))
        if "fixed_warmup_epochs" in extra:
            recipe["fixed_warmup_epochs"] = extra.pop("fixed_warmup_epochs")
        fields = {**self.model_dump(include=set(Common.model_fields)), "optimizer": optimizer, "method": method,
                  "batch_size": batch_size, "seed": seed, "recipe": recipe, "threads": self.resources.cpus, **extra}
        return TrialSpec(**fields)

    def grid(self) -> list[tuple[str, str, int, int]]:
        """(optimizer, method, batch size, seed) of every cell, in a stable order."""
        return list(itertools.product(self.optimizers(), self.axes.methods, self.axes.batch_sizes, self.axes.seeds))


class RecipeSpec(Strict):
    """A recipe without a workload, for ``batchscale schedule`` (e.g. the LEGW ImageNet recipe)."""

    name: str | None = None
    description: str = ""
    dataset_size: PositiveInt
    recipe: BaseRecipe
    batch_sizes: Annotated[list[PositiveInt], Field(min_length=1)] | None = None
    methods: Annotated[list[str], Field(min_length=1)] = ["legw"]

    def check(self) -> "RecipeSpec":
        for i, method in enumerate(self.methods):
            if method in AUTOMATIC_METHODS:
                raise SpecError(f"methods[{i}]", method, "allowed: a scaling rule (automatic methods need a sweep)")
            validate_method(method)
        return self


def _merge(base: dict, over: dict) -> dict:
    return merge_recipe(copy.deepcopy(base), copy.deepcopy(over))


def _check_batch_split(micro: int | None, batch: int, batch_key: str, workers: int = 1) -> None:
    if batch % workers:
        raise SpecError("data_parallel.workers", workers, f"allowed: a divisor of {batch_key} ({batch})")
    if micro is not None and (batch // workers) % micro:
        share = f"{batch_key} ({batch})" if workers == 1 else f"{batch_key} / data_parallel.workers ({batch // workers})"
        raise SpecError("micro_batch_size", micro, f"allowed: a divisor of {share}")


def _base_recipe(wl, optimizer: str | None, overrides: dict, key: str) -> BaseRecipe:
    try:
        return wl.base_recipe(optimizer, overrides)
    except ValidationError as e:
        raise _spec_error(e, BaseRecipe, prefix=key) from None


# --- loading ------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML with 1.2-style floats: ``1e-3`` is a number (PyYAML's 1.1 rules make it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*\.?[\d_]*(?:[eE][-+]?\d+)|\.\d+(?:[eE][-+]?\d+)?|\d[\d_]*\.[\d_]*)$"),
    list("-+0123456789."),
)


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SpecError("--set", text, "allowed: KEY=VALUE with a dotted key, e.g. --set batch_size=4096")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise SpecError(".".join(path[: i + 1]), child, f"allowed: a mapping (cannot set {'.'.join(path)})")
            node = child
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BatchscaleError(f"spec file not found: {path}")
    try:
        data = yaml_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError("(file)", str(path), f"not valid YAML{where}: {getattr(e, 'problem', e)}", str(path)) from None
    if not isinstance(data, dict):
        raise SpecError("(file)", type(data).__name__, "allowed: a YAML mapping at the top level", str(path))
    return data


def load_spec(path: str | Path | None = None, overrides: list[str] = (), data: dict | None = None,
              kind: Literal["trial", "sweep", "any"] = "any") -> TrialSpec | SweepSpec | RecipeSpec:
    """Read, override, validate. ``kind`` refuses the other kind of spec with a clear message;
    ``any`` also accepts a workload-free recipe spec (``dataset_size`` + ``recipe``)."""
    source = str(path) if path else None
    raw = apply_overrides(read_yaml(path) if path else (data or {}), list(overrides))
    if kind == "any" and "workload" not in raw and "dataset_size" in raw:
        try:
            return RecipeSpec.model_validate(raw).check()
        except ValidationError as e:
            raise _spec_error(e, RecipeSpec, source=source) from None
    is_sweep = "axes" in raw
    if kind == "trial" and is_sweep:
        raise SpecError("axes", "...", "a trial spec has no 'axes'; run this sweep spec with 'batchscale sweep'", source)
    if kind == "sweep" and not is_sweep:
        raise SpecError("axes", None, "a sweep spec needs 'axes' (batch_sizes, methods, optimizers, seeds); "
                        "run a single trial with 'batchscale train'", source)
    cls = SweepSpec if is_sweep else TrialSpec
    if is_sweep and not raw.get("name") and path:
        raw["name"] = Path(path).stem
    try:
        spec = cls.model_validate(raw)
        return spec.check()
    except ValidationError as e:
        raise _spec_error(e, cls, source=source) from None
    except SpecError as e:
        if source and not e.source:
            raise SpecError(e.key, e.value, e.allowed, source) from None
        raise


def _spec_error(e: ValidationError, model: type[BaseModel], prefix: str = "", source: str | None = None) -> SpecError:
    err = e.errors()[0]
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc) or "(spec)"
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, err["loc"][:-1])
        hint = f"unknown key; allowed keys: {', '.join(allowed)}" if allowed else "unknown key"
        return SpecError(key, err.get("input"), hint, source)
    if err["type"] == "missing":
        return SpecError(key, None, "this key is required", source)
    msg = err["msg"].removeprefix("Value error, ")
    return SpecError(key, err.get("input"), f"allowed: {msg[0].lower()}{msg[1:]}" if msg else "invalid", source)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at ``loc``, following model-typed fields and the tags of
    discriminated unions (``decay.poly.<key>``)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        models = _models_in(current)
        if len(models) > 1:  # a discriminated union: this part is the tag
            current = next((m for m in models if "kind" in m.model_fields
                            and part in get_args(m.model_fields["kind"].annotation)), None)
            continue
        if not models or part not in models[0].model_fields:
            return []
        current = models[0].model_fields[part].annotation
    models = _models_in(current)
    return list(models[0].model_fields) if len(models) == 1 else []


def _models_in(annotation) -> list:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)]
