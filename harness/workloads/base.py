"""The workload contract: ``Workload`` (what the trial loop needs of a model and its data) and
``Dataset`` (tensors held in memory). The registry is in ``harness.workloads``; the workloads
themselves import only this module."""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import SpecError
from harness.rules.scaling import BaseRecipe, merge_recipe


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def recipes(peak_lrs: dict[str, float], *, base_batch_size: int, warmup_epochs: float, epochs: float,
            decay: dict | None = None, optimizer_params: dict[str, dict] | None = None) -> dict[str, dict]:
    """A workload's base recipes, one per optimizer, that differ only in their peak LR (and any
    optimizer parameters): {optimizer: BaseRecipe fields}. The decay defaults to poly(2)."""
    decay = decay or {"kind": "poly", "power": 2.0}
    params = optimizer_params or {}
    return {name: dict(base_batch_size=base_batch_size, peak_lr=lr, warmup_epochs=warmup_epochs, epochs=epochs,
                       decay=dict(decay), optimizer={"name": name, **params.get(name, {})})
            for name, lr in peak_lrs.items()}


#: Seed of the permutation that picks the validation examples (never a trial's seed).
VALIDATION_SEED = 20190123


def held_out(n: int, fraction: float) -> int:
    """How many of ``n`` training examples the validation split takes."""
    return max(1, round(fraction * n)) if fraction else 0


@dataclass
class Dataset:
    """Training and evaluation tensors; row i of every tensor in a tuple belongs to example i. A
    column too large for memory may be a ``harness.data.loader.StreamedColumn`` (ImageNet's images):
    indexed like a tensor, read ahead by a DataLoader."""

    train: tuple[torch.Tensor, ...]
    eval: tuple[torch.Tensor, ...]
    info: dict[str, Any]
    #: The validation split held out of the training data (``Workload.load``); None: none held out.
    valid: tuple[torch.Tensor, ...] | None = None

    @property
    def train_size(self) -> int:
        return len(self.train[0])

    @property
    def eval_size(self) -> int:
        return len(self.eval[0])

    def to(self, device: torch.device) -> "Dataset":
        return Dataset(tuple(t.to(device) for t in self.train), tuple(t.to(device) for t in self.eval), self.info,
                       None if self.valid is None else tuple(t.to(device) for t in self.valid))

    def hold_out(self, fraction: float, seed: int = VALIDATION_SEED) -> "Dataset":
        """This dataset with a fixed, seeded ``fraction`` of its training examples moved to ``valid``
        (the same examples for every trial and batch size)."""
        if not all(isinstance(t, torch.Tensor) for t in self.train):
            from harness.errors import SpecError

            raise SpecError("validation.fraction", fraction, "allowed: 0 for a streamed workload (hold out a folder "
                            "of its images as data instead)")
        n = self.train_size
        k = held_out(n, fraction)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        held, kept = order[:k].sort().values, order[k:].sort().values
        return Dataset(tuple(t[kept] for t in self.train), self.eval,
                       {**self.info, "train_size": n - k, "validation_size": k, "validation_fraction": fraction},
                       tuple(t[held] for t in self.train))


class Workload(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    default_optimizer: ClassVar[str]
    base_recipes: ClassVar[dict[str, dict[str, Any]]]
    recipe_source: ClassVar[str]
    #: Largest micro-batch chosen automatically on a CPU: the fastest one measured here on one
    #: thread (larger ones fall out of cache), which also bounds activation memory.
    #: ``micro_batch_cap(cuda=True)`` is 32 times larger.
    cpu_micro_batch_cap: ClassVar[int] = 256
    eval_batch_size: ClassVar[int] = 2048
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: Whether the inputs (the batch's first tensor) are real-valued, so that adversarial
    #: augmentation (harness.trial.adversarial) can perturb them; token ids cannot be.
    adversarial_inputs: ClassVar[bool] = True
    #: Whether the batch's last tensor holds one class label per example, so that
    #: ``data_parallel.shards: label`` can split the training set by class.
    class_labels: ClassVar[bool] = True
    #: BatchNorm's default ghost batch (harness.trial.ghostbn; the spec's ``bn_batch_size`` overrides it);
    #: None: the model has no BatchNorm.
    bn_batch_size: ClassVar[int | None] = None
    #: Whether the metric is computed exactly from the weights (no evaluation sample): then nothing
    #: is held out for validation, and the validation metric is that same exact number.
    exact_metric: ClassVar[bool] = False
    #: Whether the workload generates its own validation sample (``Dataset.valid`` from ``_load``,
    #: independent of the test sample): then nothing is held out of the training data.
    own_validation: ClassVar[bool] = False

    def __init__(self, options: dict[str, Any] | None = None, data_dir: str | None = None,
                 validation_fraction: float = 0.0):
        self.validation_fraction = (0.0 if self.exact_metric or self.own_validation
                                    else float(validation_fraction or 0.0))
        try:
            self.options = self.Options(**(options or {}))
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise SpecError(f"workload_options.{key}", err.get("input"),
                            f"{err['msg']}; allowed keys: {', '.join(self.Options.model_fields) or 'none'}") from None
        self.data_dir = data_dir

    # -- data -------------------------------------------------------------------------------
    def loader_workers(self, cpus: int) -> int | None:
        """DataLoader worker processes a trial of ``cpus`` CPUs reads the data with; None: the data
        is in memory (a streamed workload, harness.data.loader, overrides this)."""
        return None

    def prepare(self) -> None:
        """Make sure the data can be loaded (generate or convert caches); cheap when done."""
        self.load()

    def train_size(self) -> int:
        """Training examples, as cheaply as the format allows (a sweep's driver needs only this),
        after the validation split is held out (``kept``)."""
        return self.load().train_size

    def kept(self, n: int) -> int:
        """Training examples left of ``n`` once the validation split is held out (``Dataset.hold_out``)."""
        return n - held_out(n, self.validation_fraction)

    def load(self) -> Dataset:
        """The dataset, loaded once per process for the same options and data folder."""
        return _load_cached(type(self), json.dumps(self.options.model_dump(), sort_keys=True), self.data_dir,
                            self.validation_fraction)

    @abstractmethod
    def _load(self) -> Dataset: ...

    # -- model and loss ---------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> torch.nn.Module: ...

    def augment(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """A training batch as the model trains on it (random crops, flips, ...), drawing from
        torch's global RNG, which the trial seeds and checkpoints. Evaluation never calls it."""
        return batch

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Mean training loss over the examples of ``batch``."""

    @abstractmethod
    def eval_sums(self, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[float, float, float]:
        """``(loss_sum, metric_sum, count)`` over ``batch``; aggregated by ``finish_eval``."""

    def finish_eval(self, loss_sum: float, metric_sum: float, count: float) -> tuple[float, float]:
        return loss_sum / count, metric_sum / count

    # -- recipes ----------------------------------------------------------------------------
    def base_recipe(self, optimizer: str | None = None, overrides: dict[str, Any] | None = None) -> BaseRecipe:
        name = optimizer or self.default_optimizer
        overrides = overrides or {}
        if name in self.base_recipes:
            fields = merge_recipe(self.base_recipes[name], overrides)
        else:  # an optimizer we have no tuned recipe for: the spec must give the whole recipe
            missing = [k for k in ("base_batch_size", "peak_lr", "epochs") if k not in overrides]
            if missing:
                raise SpecError("optimizer", name, f"workload {self.name} has base recipes for "
                                f"{', '.join(self.base_recipes)}; for another optimizer give a whole recipe "
                                f"(missing: {', '.join(missing)})")
            fields = {"optimizer": {"name": name}, **overrides}
        fields.setdefault("source", self.recipe_source)
        return BaseRecipe.model_validate(fields)

    def chance_metric(self) -> float | None:
        """The metric of a model that learned nothing (a uniform guess, the untrained student), or
        None where there is no such level. analysis.outcome marks a run that ends there ``failed``."""
        return None

    def micro_batch_cap(self, cuda: bool) -> int:
        return self.cpu_micro_batch_cap * (32 if cuda else 1)


class ImageClassifier(Workload):
    """Colour images held as uint8 (N x 3 x H x W), normalised per channel by ``MEAN`` and ``STD`` on
    the device; cross-entropy loss; accuracy. ``augment`` gives the model normalised training batches
    (subclasses add their augmentation); evaluation batches are normalised here."""

    metric = "accuracy"
    higher_is_better = True
    MEAN: ClassVar[tuple[float, float, float]]
    STD: ClassVar[tuple[float, float, float]]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.STD, device=x.device).view(1, 3, 1, 1)
        return (x.float() / 255.0 - mean) / std

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.is_floating_point() else self.normalise(x)  # raw uint8 images: normalised only

    def augment(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x, y = batch
        return self.normalise(x), y

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(self._inputs(x)), y)

    def eval_sums(self, model, batch):
        x, y = batch
        logits = model(self._inputs(x))
        return (F.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(1) == y).sum().item(), len(y))


@functools.lru_cache(maxsize=4)
def _load_cached(cls, options_json: str, data_dir: str | None, validation_fraction: float = 0.0) -> Dataset:
    if validation_fraction:
        return _load_cached(cls, options_json, data_dir, 0.0).hold_out(validation_fraction)
    data = cls(json.loads(options_json), data_dir)._load()
    return Dataset(data.train, data.eval, data.info, data.eval) if cls.exact_metric else data
