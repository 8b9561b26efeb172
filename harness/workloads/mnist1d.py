"""MNIST-1D: 40-sample 1-D signals of the ten digits (Greydanus 2020), any number of examples.

It is the workload for studies that must reach 32K batches on a laptop: with 130K generated
training examples, B = 32768 still takes four steps per epoch, and the MLP trains at about
170K examples/s on one core here, so a 256 -> 32K study finishes in minutes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator
from torch import nn

from harness.data.mnist1d import PARALLEL_ABOVE, load_mnist1d
from harness.workloads.base import Dataset, Workload, recipes


class Mnist1dOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_train: PositiveInt = 130_000
    n_test: PositiveInt = 10_000
    #: Seed of the generator (the dataset, not the trial).
    data_seed: int = 42
    hidden: PositiveInt = 256

    @model_validator(mode="after")
    def _multiple_of_ten(self):
        if (self.n_train + self.n_test) % 10:
            raise ValueError("n_train + n_test must be a multiple of 10 (the generator draws the same number per class)")
        if self.n_train + self.n_test > PARALLEL_ABOVE and (self.n_train % 10 or self.n_test % 10):
            raise ValueError(f"above {PARALLEL_ABOVE} samples (generated in chunks), n_train and n_test must each be "
                             "multiples of 10")
        return self


class Mnist1dMLP(Workload):
    name = "mnist1d_mlp"
    summary = "MLP (40 -> 256 -> 256 -> 10, ReLU) on MNIST-1D generated offline (130K train by default)"
    metric = "accuracy"
    higher_is_better = True
    default_optimizer = "momentum"
    Options = Mnist1dOptions
    cpu_micro_batch_cap = 256
    eval_batch_size = 10_000
    base_recipes = recipes({"momentum": 0.4, "sgd": 2.0, "adam": 8e-3, "lars": 8.0, "lamb": 1.6e-2}, base_batch_size=256,
                           warmup_epochs=0.02, epochs=10, optimizer_params={"lamb": {"weight_decay": 0.0}})
    # Tuned here at B0=256: per optimizer an LR grid, keeping the smallest LR within 0.5 points of
    # the best final accuracy (docs/workloads.md has the grid and every result).
    recipe_source = "tuned here at B0=256 (docs/workloads.md)"

    def chance_metric(self) -> float:
        return 0.1  # ten balanced classes

    def _load(self) -> Dataset:
        o = self.options
        d = load_mnist1d(o.n_train, o.n_test, o.data_seed)
        t = {k: torch.from_numpy(v) for k, v in d.items()}
        return Dataset((t["x"], t["y"]), (t["x_test"], t["y_test"]), {"source": "mnist1d (generated)",
                                                                       "train_size": o.n_train})

    def build_model(self):
        h = self.options.hidden
        return nn.Sequential(nn.Linear(40, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y)

    def eval_sums(self, model, batch):
        x, y = batch
        logits = model(x)
        return (F.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(1) == y).sum().item(), len(y))


WORKLOADS = (Mnist1dMLP,)
