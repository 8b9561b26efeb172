"""Adversarial augmentation for large batches: DisAdv and ConAdv (Liu et al., "Concurrent
Adversarial Learning for Large-Batch Training", ICLR 2022, arXiv 2106.00221;
../shared/notes/large-batch-science.md section 7). The trial loop uses it through ``Objective``
(the spec's ``augment`` section, the sweep axis ``axes.augment``).

Both add, for every example x of the batch, an adversarial copy x + delta with
delta = eps * sign(grad_x loss) (``norm: linf``; ``l2``: eps * grad_x / |grad_x| per example), and
take the weight gradient of loss(w_t; x) + loss(w_t; x + delta):

* **DisAdv** computes delta at the current weights w_t: a forward-backward for delta, then the
  one for the weights, one after the other (about 2x a vanilla step).
* **ConAdv** computes delta at the weights of the previous step, w_{t-1} (staleness 1): delta no
  longer depends on the step's own weight gradient, so the two computations are independent and
  can run concurrently on parallel hardware. At the first step there is no previous weight; w_0 is
  used.

The perturbation is per example (the sign of each example's own input gradient; a mean loss only
scales it), so splitting a batch into micro-batches does not change it: ``Adversary.gradient``
accumulates micro-batches exactly as the trial loop does (each micro-batch's loss scaled by m/B).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch

MODES = ("disadv", "conadv")
NORMS = ("linf", "l2")


def perturbation(model: torch.nn.Module, loss_fn: Callable, batch: tuple[torch.Tensor, ...], eps: float,
                 norm: str = "linf") -> torch.Tensor:
    """delta for every example of ``batch`` (its first tensor, the inputs) at ``model``'s weights."""
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
    x = batch[0]
    if not x.is_floating_point():
        raise ValueError("adversarial augmentation needs real-valued inputs (this workload's are integer ids)")
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), _bn_statistics_kept(model):
        (grad,) = torch.autograd.grad(loss_fn(model, (x, *batch[1:])), x)
    if norm == "linf":
        return eps * grad.sign()
    flat = grad.reshape(len(grad), -1)
    return eps * (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)


@contextlib.contextmanager
def _bn_statistics_kept(model: torch.nn.Module):
    """The attack's forward normalises with its batch's statistics, as training does, but leaves
    BatchNorm's running statistics (and counters) as they were: it is not a training pass."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in layers]
    for m in layers:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(layers, saved):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


class Adversary:
    """The adversarial part of a training step, for one model. ``start_step`` once per optimizer
    step (before its micro-batches); ``losses`` gives a micro-batch's clean and adversarial losses;
    ``gradient`` accumulates a whole step's weight gradient."""

    def __init__(self, mode: str, eps: float, norm: str = "linf"):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r} is not one of {', '.join(NORMS)}")
        self.mode, self.eps, self.norm = mode, eps, norm
        self.previous: torch.nn.Module | None = None  # w_{t-1} during step t (ConAdv)
        self._snapshot: torch.nn.Module | None = None  # w_t during step t, w_{t-1} at the next

    def start_step(self, model: torch.nn.Module) -> None:
        """Remember w_t; during this step ConAdv attacks with the weights remembered last step.
        Two copies of the model are kept and reused (no allocation per step)."""
        if self.mode != "conadv":
            return
        if self._snapshot is None:  # the first step: w_0 for both
            self.previous, self._snapshot = copy.deepcopy(model), copy.deepcopy(model)
            return
        self.previous, self._snapshot = self._snapshot, self.previous
        _copy_weights(model, self._snapshot)

    def attacker(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.previous if self.mode == "conadv" else model

    def losses(self, model: torch.nn.Module, loss_fn: Callable,
               micro: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean clean loss, mean loss on the adversarial copies) of one micro-batch at ``model``."""
        delta = perturbation(self.attacker(model), loss_fn, micro, self.eps, self.norm)
        return loss_fn(model, micro), loss_fn(model, (micro[0] + delta, *micro[1:]))

    def gradient(self, model: torch.nn.Module, loss_fn: Callable, batch: tuple[torch.Tensor, ...],
                 micro_batch: int) -> float:
        """Accumulate into ``model``'s .grad the gradient of the mean over the batch of
        loss(x) + loss(x + delta), in micro-batches; returns that mean loss."""
        n, total = len(batch[0]), 0.0
        for start in range(0, n, micro_batch):
            micro = tuple(t[start:start + micro_batch] for t in batch)
            loss = sum(self.losses(model, loss_fn, micro))
            (loss * (len(micro[0]) / n)).backward()
            total += float(loss.detach()) * len(micro[0]) / n
        return total

    def state_dict(self) -> dict | None:
        """What a checkpoint needs to continue bit for bit: ConAdv's w_t (the next step's w_{t-1})."""
        return {"snapshot": self._snapshot.state_dict()} if self._snapshot is not None else None

    def load_state_dict(self, state: dict | None, model: torch.nn.Module) -> None:
        if state is None:
            return
        self._snapshot, self.previous = copy.deepcopy(model), copy.deepcopy(model)
        self._snapshot.load_state_dict(state["snapshot"])


@torch.no_grad()
def _copy_weights(source: torch.nn.Module, target: torch.nn.Module) -> None:
    for a, b in zip(source.state_dict().values(), target.state_dict().values()):
        b.copy_(a)


class Objective:
    """The training loss of a micro-batch as the trial loop takes it: the workload's own, or (with
    an ``augment`` other than none) the clean plus the adversarial loss (or their mean: ``combine``). ``__call__`` returns the
    loss to differentiate and the clean loss, which is what the trial reports and checks for
    divergence, so every arm's training loss means the same."""

    def __init__(self, loss_fn: Callable, kind: str = "none", eps: float = 0.0, norm: str = "linf",
                 combine: str = "sum"):
        self.loss_fn = loss_fn
        self.adversary = Adversary(kind, eps, norm) if kind != "none" else None
        self.weight = 0.5 if combine == "mean" else 1.0  # of each of the two losses

    def start_step(self, model: torch.nn.Module) -> None:
        if self.adversary is not None:
            self.adversary.start_step(model)

    def __call__(self, model: torch.nn.Module, micro: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.adversary is None:
            loss = self.loss_fn(model, micro)
            return loss, loss
        clean, adversarial = self.adversary.losses(model, self.loss_fn, micro)
        return (clean + adversarial) * self.weight, clean

    def state_dict(self) -> dict | None:
        return self.adversary.state_dict() if self.adversary is not None else None

    def load_state_dict(self, state: dict | None, model: torch.nn.Module) -> None:
        if self.adversary is not None:
            self.adversary.load_state_dict(state, model)
