"""A teacher-student regression whose gradient noise scale is known in closed form.

Why: on real data the critical batch is only estimated, and on the small data sets of a laptop it
is small (MNIST-1D reaches its target at 8K-32K only with budgets of ~100 epochs). Here it is a
parameter. A linear teacher ``y = w*.x + n`` with Gaussian inputs ``x ~ N(0, Lambda)`` (eigenvalues
geometric from 1 down to ``1/condition``) and label noise ``n ~ N(0, s^2)``; a linear student
trained on ``1/2 (w.x - y)^2``. With weight error ``e = w - w*`` (McCandlish et al. 2018, appendix;
Isserlis' theorem for the fourth moments):

    G = Lambda e,   Sigma = (e'Lambda e + s^2) Lambda + Lambda e e' Lambda
    B_simple = tr(Sigma)/|G|^2   = tr(Lambda) (e'Lambda e + s^2) / |Lambda e|^2 + 1
    B_noise  = tr(H Sigma)/G'HG  = tr(Lambda^2) (e'Lambda e + s^2) / (e'Lambda^3 e) + 1   (H = Lambda)

With ``condition: 1`` (Lambda = I) both are ``d (1 + s^2/|e|^2) + 1``, and McCandlish et al.'s
theory is exact: the critical batch of a target is B_simple there. The metric is the excess risk
``1/2 e'Lambda e``, computed exactly from the weights (no evaluation sample, hence no evaluation
noise: steps-to-target is exact when every step is evaluated). The student starts at 0, the teacher
is drawn so that the initial excess risk is about 1.

The training set is a finite sample (``n_train`` rows drawn once from ``data_seed``), read by the
usual stream of shuffled epochs; with ``n_train`` >> B_simple the finite sample changes the
estimates by about B_simple/n_train.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt

from harness.workloads.base import Dataset, Workload


class TeacherOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: PositiveInt = 64
    #: Ratio of the largest to the smallest input variance (1: isotropic, B_noise = B_simple).
    condition: Annotated[float, Field(ge=1)] = 100.0
    noise_std: PositiveFloat = 3.0
    n_train: PositiveInt = 2**20
    #: Seed of the teacher and of the training sample (the data, not the trial).
    data_seed: int = 0


class TeacherRegression(Workload):
    name = "teacher_regression"
    summary = ("linear teacher-student regression, Gaussian inputs with a set spectrum and label noise: "
               "noise scale in closed form (excess risk)")
    metric = "excess_risk"
    higher_is_better = False
    default_optimizer = "sgd"
    class_labels = False
    Options = TeacherOptions
    cpu_micro_batch_cap = 8192
    eval_batch_size = 1
    exact_metric = True  # the excess risk is computed from the weights: validation reads the same number
    # Tuned here at B0=256 for the default options (dim 64, condition 100, noise 3): the LR with the
    # fewest steps to an excess risk of 0.01, from a grid of factors of sqrt(2) (docs/workloads.md).
    base_recipes = {
        "sgd": dict(base_batch_size=256, peak_lr=0.0707, warmup_epochs=0.0025, epochs=1.0,
                    decay={"kind": "constant"}, optimizer={"name": "sgd"}),
    }
    recipe_source = "tuned here at B0=256 on steps to excess risk 0.01 (docs/workloads.md)"

    # -- the problem ----------------------------------------------------------------------------
    def spectrum(self) -> torch.Tensor:
        o = self.options
        return torch.logspace(0.0, -math.log10(o.condition), o.dim, dtype=torch.float64)

    def teacher(self) -> torch.Tensor:
        lam = self.spectrum()
        g = torch.Generator().manual_seed(self.options.data_seed)
        return torch.randn(self.options.dim, generator=g, dtype=torch.float64) * math.sqrt(2.0 / float(lam.sum()))

    def weight_error(self, model) -> torch.Tensor:
        return model.weight.detach().double().reshape(-1).cpu() - self.teacher()

    def excess_risk(self, e: torch.Tensor) -> float:
        return 0.5 * float((self.spectrum() * e * e).sum())

    def noise_scales(self, e: torch.Tensor) -> dict[str, float]:
        """B_simple and B_noise at weight error ``e`` (closed forms of the module docstring)."""
        lam, s2 = self.spectrum(), self.options.noise_std**2
        risk = float((lam * e * e).sum()) + s2
        return {"b_simple": float(lam.sum()) * risk / float((lam**2 * e * e).sum()) + 1,
                "b_noise": float((lam**2).sum()) * risk / float((lam**3 * e * e).sum()) + 1}

    def chance_metric(self) -> float:
        """The excess risk of the untrained (zero) student: 0.5 sum_i lambda_i w*_i^2."""
        return self.excess_risk(-self.teacher())

    # -- workload contract ----------------------------------------------------------------------
    def _load(self) -> Dataset:
        o = self.options
        g = torch.Generator().manual_seed(o.data_seed + 1)
        x = torch.randn(o.n_train, o.dim, generator=g) * self.spectrum().sqrt().float()
        y = x @ self.teacher().float() + o.noise_std * torch.randn(o.n_train, generator=g)
        # The metric is exact (from the weights): evaluation reads one placeholder row.
        return Dataset((x, y), (torch.zeros(1, o.dim), torch.zeros(1)),
                       {"source": "teacher_regression (generated)", "train_size": o.n_train})

    def build_model(self):
        model = torch.nn.Linear(self.options.dim, 1, bias=False)
        torch.nn.init.zeros_(model.weight)
        return model

    def loss(self, model, batch):
        x, y = batch
        return 0.5 * (model(x).squeeze(1) - y).square().mean()

    def eval_sums(self, model, batch):
        excess = self.excess_risk(self.weight_error(model))
        return excess + 0.5 * self.options.noise_std**2, excess, 1.0


class TeacherMLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dim: PositiveInt = 16
    #: The teacher: one tanh layer of this width, pre-activations scaled by ``teacher_gain``.
    teacher_width: PositiveInt = 32
    teacher_gain: PositiveFloat = 2.0
    #: The student's hidden layers (ReLU), no normalisation.
    widths: Annotated[list[PositiveInt], Field(min_length=1)] = [32, 32]
    noise_std: PositiveFloat = 2.0
    n_train: PositiveInt = 2**20
    #: Size of the test sample and of the (separate) validation sample, noise-free teacher outputs.
    n_eval: PositiveInt = 8192
    data_seed: int = 0


class TeacherMLP(Workload):
    """A non-linear teacher-student regression: a ReLU network without normalisation learns a tanh
    teacher from noisy labels.

    Why: on the linear teacher warmup cannot matter; here it does. A ReLU MLP at He initialisation
    trained with a large LR from the first step loses its hidden units (they die and the student
    collapses to the mean, excess risk ~0.3) or diverges, while the same LR reached over a short
    ramp trains: the early curvature is higher than the later one. The label noise sets the gradient
    noise, so the critical batch is in the thousands at the target and the batch sizes 4K-32K are
    where the LR rules and their warmups are told apart (docs/workloads.md has the measurements).

    Inputs ``x ~ N(0, I_dim)``; teacher ``f*(x) = v . tanh(gain W x / sqrt(dim)) / sqrt(width)`` with
    ``W, v ~ N(0, 1)`` drawn from ``data_seed``; labels ``y = f*(x) + N(0, noise_std^2)``. The metric
    is the excess risk ``1/2 E (f - f*)^2`` on a noise-free test sample of ``n_eval`` inputs (the
    chance level, the mean predictor, is about 0.3). The tuned arm selects on a second noise-free
    sample of the same size drawn apart from it (``own_validation``), so nothing is held out of the
    training set.
    """

    name = "teacher_mlp"
    summary = ("non-linear teacher-student regression: ReLU MLP without normalisation, tanh teacher, label "
               "noise; warmup decides whether large LRs train (excess risk)")
    metric = "excess_risk"
    higher_is_better = False
    default_optimizer = "momentum"
    class_labels = False
    Options = TeacherMLPOptions
    cpu_micro_batch_cap = 4096
    eval_batch_size = 8192
    own_validation = True
    # Tuned here at B0=256 for the default options: the LR with the fewest steps to an excess risk of
    # 0.05 on a factor-of-sqrt(2) grid; warmup of 40 steps (docs/workloads.md).
    base_recipes = {
        "momentum": dict(base_batch_size=256, peak_lr=0.05, warmup_epochs=0.01, epochs=1.0,
                         decay={"kind": "constant"}, optimizer={"name": "momentum"}),
    }
    recipe_source = "tuned here at B0=256 on steps to excess risk 0.05 (docs/workloads.md)"

    def teacher(self) -> tuple[torch.Tensor, torch.Tensor]:
        o = self.options
        g = torch.Generator().manual_seed(o.data_seed)
        return (torch.randn(o.teacher_width, o.dim, generator=g) * (o.teacher_gain / math.sqrt(o.dim)),
                torch.randn(o.teacher_width, generator=g) / math.sqrt(o.teacher_width))

    def target_fn(self, x: torch.Tensor) -> torch.Tensor:
        w, v = self.teacher()
        return torch.tanh(x @ w.T) @ v

    def _load(self) -> Dataset:
        o = self.options
        seed = 1000 * o.data_seed
        return Dataset(self._sample(o.n_train, seed + 1, o.noise_std), self._sample(o.n_eval, seed + 2),
                       {"source": "teacher_mlp (generated)", "train_size": o.n_train, "validation_size": o.n_eval},
                       self._sample(o.n_eval, seed + 3))

    def _sample(self, n: int, seed: int, noise_std: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, self.options.dim, generator=g)
        y = self.target_fn(x)
        return x, (y + noise_std * torch.randn(n, generator=g)) if noise_std else y

    def build_model(self):
        layers, width = [], self.options.dim
        for hidden in self.options.widths:
            linear = torch.nn.Linear(width, hidden)
            torch.nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
            torch.nn.init.zeros_(linear.bias)
            layers += [linear, torch.nn.ReLU()]
            width = hidden
        out = torch.nn.Linear(width, 1)
        torch.nn.init.normal_(out.weight, std=1 / math.sqrt(width))
        torch.nn.init.zeros_(out.bias)
        return torch.nn.Sequential(*layers, out)

    def loss(self, model, batch):
        x, y = batch
        return 0.5 * (model(x).squeeze(1) - y).square().mean()

    def eval_sums(self, model, batch):
        # noise-free labels: the excess risk directly; the test loss adds the label noise's 1/2 s^2
        x, y = batch
        excess = 0.5 * float((model(x).detach().squeeze(1) - y).square().sum())
        return excess + 0.5 * self.options.noise_std**2 * len(y), excess, len(y)

    def chance_metric(self) -> float:
        """The excess risk of the mean predictor on the test sample: 1/2 Var f*."""
        return 0.5 * float(self._sample(self.options.n_eval, 1000 * self.options.data_seed + 2)[1].var())


WORKLOADS = (TeacherRegression, TeacherMLP)
