"""The spec of a sweep (``batchscale sweep``): axes, tuning, protocol, projection, claims; and the
workload-free recipe spec of ``batchscale schedule``."""

from __future__ import annotations

import itertools
from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, StrictInt, model_validator

from harness.errors import SpecError
from harness.rules.optimizers import OPTIMIZERS
from harness.rules.scaling import AUTOMATIC_METHODS, BaseRecipe, validate_method
from harness.spec.common import Strict, _base_recipe, _check_batch_split, _merge
from harness.spec.trial import Common, Resources, TrialSpec


def arm_label(method: str, augment: str | None, algorithm: str | None) -> str:
    """A series' name: the LR/warmup method, then the augmentation and the data-parallel algorithm
    of its arm where they are not the defaults (``legw:conadv``, ``sqrt:dmsgd``); a store written before
these arms existed has nulls there, which are the defaults."""
    parts = [method] + ([augment] if isinstance(augment, str) and augment != "none" else [])
    return ":".join(parts + ([algorithm] if isinstance(algorithm, str) and algorithm != "allreduce" else []))


class Axes(Strict):
    # strict integers: a boolean or a string is never taken for a batch size or a seed
    batch_sizes: Annotated[list[Annotated[StrictInt, Field(gt=0)]], Field(min_length=1)] = [256 * 2**i for i in range(8)]
    methods: Annotated[list[str], Field(min_length=1)] = ["goyal", "legw", "sqrt", "linear-legw"]
    #: Default: the workload's default optimizer.
    optimizers: Annotated[list[str], Field(min_length=1)] | None = None
    seeds: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(min_length=1)] = [0]
    #: Adversarial augmentation per cell (the ``augment`` section's kind; its eps and norm apply).
    augment: Annotated[list[Literal["none", "disadv", "conadv"]], Field(min_length=1)] | None = None
    #: Data-parallel algorithm per cell (``data_parallel.algorithm``; its workers and topology apply).
    algorithm: Annotated[list[Literal["allreduce", "dmsgd", "decentlam"]], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _no_repeats(self):
        """A value twice on an axis would be one cell that ``plan`` counts twice: refused."""
        for axis in ("batch_sizes", "methods", "optimizers", "seeds", "augment", "algorithm"):
            values = getattr(self, axis) or []
            repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
            if repeated:
                raise SpecError(f"axes.{axis}", values, f"each value once (repeated: {', '.join(map(str, repeated))})")
        return self


class Asha(Strict):
    """ASHA early stopping for tuned studies; time is examples seen, fair across batch sizes."""

    grace_epochs: PositiveFloat = 1.0
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0


class Tuning(Strict):
    """The ``tuned`` method: a search of the peak LR per (optimizer, batch size, arm).

    ``search: bracket`` (the default; harness.spec.tuning): a deterministic bracketing search on a log
    lattice of LRs, every candidate run on every seed and judged on the seeds' median on the
    validation split; it ends when the best LR's neighbours one lattice step away were both tried.
    ``search: tpe``: one Optuna TPE study of ``trials`` trials per seed (selects per seed)."""

    search: Literal["bracket", "tpe"] = "bracket"
    #: bracket: spacing of the LR lattice (the bracket's final spacing), as a factor
    lattice_step: Annotated[float, Field(gt=1, le=4)] = 2**0.5
    #: bracket: lattice steps between the coarse stage's LRs (a power of 2: 4 = a factor 4 at sqrt 2)
    coarse_steps: Literal[1, 2, 4, 8] = 4
    #: bracket: coarse steps added beyond either end of the range while the best is at that end
    max_extensions: NonNegativeInt = 3
    #: tpe: trials per study
    trials: PositiveInt = 8
    #: LR searched log-uniformly over [min/f, max*f] of what the none/linear/sqrt rules predict.
    lr_range_factor: Annotated[float, Field(ge=1)] = 2.0
    #: Warmup rule of tuned trials (their LR is searched, their warmup follows this rule) ...
    warmup_rule: Literal["none", "fixed", "legw", "base"] = "legw"
    #: ... unless the warmup is searched too, log-uniformly in epochs over this range.
    search_warmup: bool = False
    warmup_epochs_range: tuple[PositiveFloat, PositiveFloat] = (0.01, 2.0)
    #: bracket: the coarse stage also tries the none, sqrt and linear predictions (on the lattice);
    #: tpe: the first trials of each study try them (deduplicated, with the warmup above), and TPE
    #: searches the range from there. Either way the tuned curve is never worse than the best
    #: rule's LR. False: the coarse grid alone (bracket), TPE's own random start-up trials (tpe).
    start_from_rules: bool = True
    asha: Asha | None = None
    sampler_seed: NonNegativeInt = 0
    #: bracket: which seeds decide. ``all``: every candidate LR runs every seed, the seeds' median
    #: decides. ``first``: candidates run the first (smallest) seed only, and the LR it selects then runs the
    #: others (Shallue et al.'s alternative: choose on one seed, then evaluate the choice over all of
    #: them); about a third of the trials with 3 seeds, and a selection noisier by one seed's spread.
    select_seeds: Literal["all", "first"] = "all"
    #: Trials of one study running at once. The studies share the sweep's slots with the grid (one
    #: Tune run); with more than 1, TPE places a study's concurrent trials with the constant-liar
    #: heuristic. On the default study 1 and 2 chose the same trials, and 2 packed the slots better
    #: (1.07x against 1.16x the perfectly packed time: docs/benchmarks.md).
    concurrent_trials: PositiveInt = 2


class Protocol(Strict):
    """How a study gives each batch size its budget, so that it can answer its question
    (harness.sweep.protocol; ../docs/protocols.md).

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


class Tracking(Strict):
    """Where every trial's config and measurements go besides the results store, as they arrive
    (harness.sweep.tracking; docs/sweeps.md#tracking). None of it changes a trial."""

    #: TensorBoard event files, one folder per trial: ``tensorboard --logdir results/<name>/tensorboard``
    tensorboard: bool = False
    #: MLflow: one run per trial, in the experiment named after the sweep
    mlflow: bool = False
    #: default: a SQLite store beside the results, ``sqlite:///results/<name>/mlflow.db``
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str | None = None
    #: Weights & Biases: one run per trial (the ``wandb`` package must be installed)
    wandb: bool = False
    wandb_project: str | None = None
    #: ``offline`` writes under ``results/<name>/wandb`` for ``wandb sync``; None: wandb's own default
    wandb_mode: Literal["online", "offline", "disabled"] | None = None


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
    #: Run only the cells the claims read (harness.spec.claims; ``--claims-only``); the report lists the
    #: cells left out. Turning it off later grows the sweep by them.
    claims_only: bool = False
    #: true: a batch size may exceed the training set (a stand-in data set smaller than the study's
    #: batches); such a step takes epoch after epoch of the stream, so it repeats examples.
    repeat_examples: bool = False
    tracking: Tracking = Tracking()

    @model_validator(mode="after")
    def _validation_default(self):
        """A sweep with a tuned arm holds out 10% of the training data for its selection."""
        if self.validation.fraction is None and "tuned" in self.axes.methods:
            self.validation = self.validation.model_copy(update={"fraction": 0.1})
        return self

    def check(self) -> "SweepSpec":
        wl = self.workload_obj()
        self._check_protocol()
        for i, name in enumerate(self.optimizers()):
            if name not in OPTIMIZERS:
                raise SpecError(f"axes.optimizers[{i}]", name, f"allowed: {', '.join(OPTIMIZERS)}", choices=list(OPTIMIZERS))
            _base_recipe(wl, name, _merge(self.recipe, self.recipes.get(name, {})), "recipe")
        for name in self.recipes:
            if name not in self.optimizers():
                raise SpecError(f"recipes.{name}", "...", f"allowed: the sweep's optimizers {self.optimizers()}")
        for i, method in enumerate(self.axes.methods):
            try:
                validate_method(method)
            except SpecError as e:
                raise SpecError(f"axes.methods[{i}]", method, e.allowed, choices=e.choices) from None
        for kind in self.arms():
            self._check_arm(wl, {o: self.base_recipe(o) for o in self.optimizers()}, self.axes.methods, *kind,
                            axes=True)
        for i, b in enumerate(self.axes.batch_sizes):
            _check_batch_split(self.micro_batch_size, b, f"axes.batch_sizes[{i}]", self.data_parallel.workers)
            self._check_ghost(wl, b, f"axes.batch_sizes[{i}]")
        if self.resources.gpus > 1 and self.resources.gpus != int(self.resources.gpus):
            raise SpecError("resources.gpus", self.resources.gpus, "allowed: a share of one GPU (0.25: four trials "
                            "on each GPU) or a whole number of GPUs per trial; Ray packs nothing in between")
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
        if self.tuning.search == "bracket" and "tuned" in self.axes.methods:
            if self.tuning.asha:
                raise SpecError("tuning.asha", "...", "allowed only with tuning.search tpe (the bracketing search "
                                "runs every candidate to the end, on every seed)")
            if self.tuning.search_warmup:
                raise SpecError("tuning.search_warmup", True, "allowed only with tuning.search tpe (the bracketing "
                                "search is over the peak LR)")
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

    def arms(self) -> list[tuple[str, str]]:
        """(augment, data-parallel algorithm) of every arm a cell of the grid runs in."""
        return list(itertools.product(self.axes.augment or [self.augment.kind],
                                      self.axes.algorithm or [self.data_parallel.algorithm]))

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
