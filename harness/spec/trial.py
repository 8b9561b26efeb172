"""The spec of one trial (``batchscale train``) and the sections a sweep shares with it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from harness.errors import SpecError
from harness.rules.optimizers import OPTIMIZERS
from harness.rules.scaling import BaseRecipe, validate_method
from harness.spec.common import Strict, _base_recipe, _check_batch_split

#: The optimizers whose update the decentralized algorithms and simulated workers reproduce
#: (heavy-ball momentum SGD; harness.trial.gossip).
DECENTRALIZED_OPTIMIZERS = ("sgd", "momentum")


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


#: metric -> (exclusive lower bound, inclusive upper bound, in words) of a reachable target
METRIC_RANGES = {"accuracy": (0.0, 1.0, "a value in (0, 1]"),
                 "perplexity": (1.0, None, "a value above 1"),
                 "excess_risk": (0.0, None, "a value above 0")}


class Target(Strict):
    """A metric value to reach; the first evaluation reaching it is recorded (and may stop the run)."""

    metric: str
    value: float
    stop: bool = False


class EvalSpec(Strict):
    #: Evaluations per epoch (at least one per epoch); ignored when ``every_examples`` is set.
    per_epoch: Annotated[float, Field(ge=1)] = 2.0
    every_examples: PositiveInt | None = None
    #: Once the target is reached (on the validation split too, when it is evaluated), evaluate every
    #: this many examples instead (at least ``every_examples``): the protocol sets it to the spec's
    #: per-epoch grid where it makes evaluation dense to resolve the steps to the target, which the
    #: rest of a fixed-epoch budget no longer needs. The last step is always evaluated.
    after_target_every_examples: PositiveInt | None = None
    #: Evaluate on the first n held-out examples only; all when unset.
    max_examples: PositiveInt | None = None


class Validation(Strict):
    """A validation split held out of the training data (``Workload.load``), on which the tuned arm
    selects its LR; the test split (``eval``) only reports. Workloads whose metric is exact (computed
    from the weights, not from a sample: ``teacher_regression``) hold nothing out: their validation
    metric is the same exact number."""

    #: Share of the training set held out (a fixed, seeded subset, the same for every trial).
    #: Default: 0.1 in a sweep with a ``tuned`` arm (every arm then trains on the same 90%), else 0.
    fraction: Annotated[float, Field(ge=0, lt=1)] | None = None
    #: Evaluate the validation split at every evaluation too (set for tuned trials by the sweep).
    evaluate: bool = False

    def resolved_fraction(self) -> float:
        return self.fraction or 0.0


class Divergence(Strict):
    """NaN/inf always diverges; so does a training loss above ``loss_factor`` x the first step's."""

    loss_factor: Annotated[float, Field(gt=1)] | None = 5.0


class AutoWUSpec(Strict):
    """Settings of the ``autowu`` method (harness.trial.autotune.AutoWUControl). The defaults are Kim et
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
    """A trial as several data-parallel workers (harness.trial.distributed, through Ray Train; or
    simulated in one process, harness.trial.decentralized)."""

    #: Workers per trial; each takes batch_size / workers examples of every step.
    workers: PositiveInt = 1
    #: ``allreduce``: every step averages the gradients over all workers (parallel momentum SGD);
    #: ``dmsgd`` / ``decentlam``: each worker averages only with its neighbours (Yuan et al. 2021).
    algorithm: Literal["allreduce", "dmsgd", "decentlam"] = "allreduce"
    #: The neighbours of a decentralized algorithm (harness.trial.decentralized.mixing_matrix).
    topology: Literal["ring", "exponential"] = "ring"
    #: Run the workers as K simulated workers in one process (identical mathematics, one CPU slot)
    #: instead of W Ray Train processes.
    simulate: bool = False
    #: Where each worker's examples come from. ``shared``: every step's B examples are drawn from
    #: one shuffle of the whole training set and split among the workers, so all workers see the
    #: same distribution. ``random``: the set is split once at random into one fixed shard per
    #: worker, each read in its own seeded epochs (each node holds its local data, as in Yuan et al.
    #: 2021). ``label``: the shards are cut from the set sorted by class, so each worker holds about
    #: C/W of the C classes (the non-IID split of Hsieh et al. 2020): the heterogeneity under which
    #: a decentralized algorithm's consensus bias shows. All-reduce over the same shards is
    #: unaffected by it (every step still averages all shards).
    shards: Literal["shared", "random", "label"] = "shared"

    @property
    def processes(self) -> int:
        """Ray Train workers the trial runs as (1: the trial runs in one process)."""
        return 1 if self.simulate else self.workers


class Augment(Strict):
    """Adversarial augmentation (harness.augment; Liu et al. 2022, arXiv 2106.00221): every example
    x adds x + delta, delta = eps * sign(grad_x loss) (``linf``) or eps * grad_x / |grad_x|
    (``l2``), taken at the current weights (``disadv``) or at the previous step's (``conadv``)."""

    kind: Literal["none", "disadv", "conadv"] = "none"
    #: The attack's radius, in the units of the workload's inputs.
    eps: PositiveFloat = 0.05
    norm: Literal["linf", "l2"] = "linf"
    #: ``sum``: loss(x) + loss(x + delta), as Liu et al. write it (with LARS or LAMB the trust ratio
    #: makes the scale irrelevant); ``mean``: their average, the mean loss over the 2B clean and
    #: adversarial examples, so that with SGD or Adam the learning rate means what it means without
    #: augmentation (the sum doubles the gradient, i.e. the effective learning rate).
    combine: Literal["sum", "mean"] = "sum"


class Sharpness(Strict):
    """The top eigenvalue of the training loss's Hessian at the end of a trial (harness.trial.sharpness),
    by power iteration on Hessian-vector products over a fixed set of training examples."""

    #: The first n training examples (the same set for every trial of a workload).
    examples: PositiveInt = 1024
    iterations: PositiveInt = 20


class Resources(Strict):
    cpus: PositiveInt = 1
    gpus: NonNegativeFloat = 0.0
    #: Memory one trial may use, in GB, for the check before a sweep runs (harness.sweep.memory);
    #: default: this machine's available memory less Ray's, shared by the trials that run at once.
    memory_gb: PositiveFloat | None = None


class Common(Strict):
    """What trial and sweep specs share."""

    workload: str
    workload_options: dict[str, Any] = {}
    data_dir: str | None = None
    budget: Budget = Budget()
    target: Target | None = None
    eval: EvalSpec = EvalSpec()
    validation: Validation = Validation()
    divergence: Divergence = Divergence()
    micro_batch_size: PositiveInt | None = None
    #: BatchNorm statistics over groups of this many examples (ghost batch norm, Hoffer et al. 2017;
    #: harness.trial.ghostbn), whatever the micro-batch, device or workers; default: the workload's
    #: (CIFAR-10 ResNets: 128). Every micro-batch is a whole number of groups.
    bn_batch_size: PositiveInt | None = None
    #: ``bf16``: the forward pass under bfloat16 autocast, weights and optimizer in float32
    #: (harness.trial.precision); ``float32``: everything in float32.
    precision: Literal["float32", "bf16"] = "float32"
    #: Convolutional models' weights and inputs in NHWC order (faster convolutions on GPUs).
    channels_last: bool = False
    #: ``torch.compile`` the model (the first steps pay the compilation; off the clock it is not).
    compile: bool = False
    #: Largest micro-batch chosen automatically (the largest divisor of the batch up to it).
    #: Default: measured on this machine on first use, then cached (harness.trial.calibrate).
    micro_batch_cap: PositiveInt | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: Measure the gradient noise scale (harness.trial.noise). It needs two micro-batches per step: a
    #: batch that fits one micro-batch is split in two (same update, a little slower).
    noise_scale: bool = True
    #: Window of the moving averages of the noise-scale estimates, in epochs of examples seen: they
    #: decay by exp(-B / (window * N)) per step, the same per example at every batch size (a
    #: per-step decay would average over 0.2 epochs at B=128 and 14 epochs at 8192).
    noise_ema_epochs: PositiveFloat = 0.2
    autowu: AutoWUSpec = AutoWUSpec()
    noise_aware: NoiseAwareSpec = NoiseAwareSpec()
    data_parallel: DataParallel = DataParallel()
    augment: Augment = Augment()
    #: Measure sharpness at the end of every trial (off when null).
    sharpness: Sharpness | None = None

    def workload_obj(self):
        from harness.workloads import get_workload

        return get_workload(self.workload, self.workload_options, self.data_dir,
                            validation_fraction=self.validation.resolved_fraction())

    def _check_arm(self, wl, bases: dict, methods: list[str], augment: str, algorithm: str, axes: bool = False) -> None:
        """An augmentation and a data-parallel algorithm the workload, optimizers and methods allow."""
        aug_key, alg_key = ("axes.augment", "axes.algorithm") if axes else ("augment.kind", "data_parallel.algorithm")
        if augment != "none" and not wl.adversarial_inputs:
            raise SpecError(aug_key, augment, f"allowed: none for {wl.name} (its inputs are token ids; adversarial "
                            "augmentation needs real-valued inputs)")
        dp = self.data_parallel
        if dp.shards != "shared" and dp.workers < 2:
            raise SpecError("data_parallel.shards", dp.shards, "allowed: shared with one worker (data_parallel.workers 1)")
        if dp.shards == "label" and not wl.class_labels:
            raise SpecError("data_parallel.shards", dp.shards, f"allowed: shared, random for {wl.name} (its targets "
                            "are not class labels)")
        if algorithm == "allreduce" and not dp.simulate:
            return
        if self.channels_last:
            raise SpecError("channels_last", True, f"allowed: false with {alg_key} {algorithm} or simulated workers "
                            "(their parameter vectors need contiguous weights)")
        if algorithm != "allreduce" and dp.workers < 2:
            raise SpecError("data_parallel.workers", dp.workers, f"allowed: 2 or more with {alg_key} {algorithm}")
        for name, base in bases.items():
            opt = base.optimizer
            if opt.name not in DECENTRALIZED_OPTIMIZERS or opt.params.get("nesterov") or opt.params.get("dampening"):
                raise SpecError(alg_key if algorithm != "allreduce" else "data_parallel.simulate",
                                algorithm if algorithm != "allreduce" else True,
                                f"allowed with optimizer {name!r} ({opt.name}): none; the decentralized algorithms and "
                                f"simulated workers run heavy-ball momentum SGD: optimizers {', '.join(DECENTRALIZED_OPTIMIZERS)}")
        if "adascale" in methods:
            raise SpecError(alg_key, algorithm, "allowed: allreduce without simulated workers for method adascale "
                            "(its gain needs the noise scale, not measured across decentralized workers)")

    def ghost_batch(self, wl) -> int | None:
        """The BatchNorm group size the trial uses: the spec's, else the workload's (None: no BN)."""
        return self.bn_batch_size or wl.bn_batch_size

    def _check_ghost(self, wl, batch: int, batch_key: str) -> None:
        ghost, share = self.ghost_batch(wl), batch // self.data_parallel.workers
        if self.bn_batch_size and wl.bn_batch_size is None:
            raise SpecError("bn_batch_size", self.bn_batch_size, f"allowed: none for {wl.name} (it has no BatchNorm)")
        if ghost and share % ghost:
            raise SpecError("bn_batch_size", ghost, f"allowed: a divisor of {batch_key} per worker ({share})")
        if ghost and self.micro_batch_size and self.micro_batch_size % ghost:
            raise SpecError("micro_batch_size", self.micro_batch_size, f"allowed: a multiple of bn_batch_size ({ghost})")

    def _check_target(self, wl) -> None:
        if self.target and self.target.metric != wl.metric:
            raise SpecError("target.metric", self.target.metric, f"allowed: {wl.metric!r} (the metric of {wl.name})")
        if self.target:  # a target the metric cannot reach is refused here, not after a pilot
            value, (low, high, words) = self.target.value, METRIC_RANGES.get(wl.metric, (None, None, ""))
            if (low is not None and value <= low) or (high is not None and value > high):
                raise SpecError("target.value", value, f"allowed: {words} (the range of {wl.metric})")


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
            raise SpecError("optimizer", self.optimizer, f"allowed: {', '.join(OPTIMIZERS)}", choices=list(OPTIMIZERS))
        validate_method(self.method)
        if self.method == "tuned" and self.peak_lr is None:
            raise SpecError("method", self.method, "a single trial cannot be 'tuned'; run a sweep, or give peak_lr")
        base = _base_recipe(wl, self.optimizer, self.recipe, "recipe")
        batch = self.batch_size or base.base_batch_size
        _check_batch_split(self.micro_batch_size, batch, "batch_size", self.data_parallel.workers)
        self._check_arm(wl, {self.optimizer or wl.default_optimizer: base}, [self.method], self.augment.kind,
                        self.data_parallel.algorithm)
        self._check_ghost(wl, batch, "batch_size")
        self._check_target(wl)
        return self

    def base_recipe(self) -> BaseRecipe:
        return _base_recipe(self.workload_obj(), self.optimizer, self.recipe, "recipe")
