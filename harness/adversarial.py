"""Adversarial augmentation for large batches: DisAdv and ConAdv (Liu et al., "Concurrent
Adversarial Learning for Large-Batch Training", ICLR 2022, arXiv 2106.00221;
../shared/notes/large-batch-science.md section 7). The second part of issue 14: the gradient of
one step, tested; trials and sweeps do not use it yet.

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
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(model, (x, *batch[1:])), x)
    if norm == "linf":
        return eps * grad.sign()
    flat = grad.reshape(len(grad), -1)
    return eps * (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)


class Adversary:
    """The adversarial part of a training step, for one model. ``start_step`` once per optimizer
    step (before its micro-batches); ``gradient`` accumulates the step's weight gradient."""

    def __init__(self, mode: str, eps: float, norm: str = "linf"):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        self.mode, self.eps, self.norm = mode, eps, norm
        self.previous: torch.nn.Module | None = None  # w_{t-1} during step t (ConAdv)
        self._snapshot: torch.nn.Module | None = None

    def start_step(self, model: torch.nn.Module) -> None:
        """Remember w_t; during this step ConAdv attacks with the weights remembered last step."""
        if self.mode == "conadv":
            self.previous = self._snapshot if self._snapshot is not None else copy.deepcopy(model)
            self._snapshot = copy.deepcopy(model)

    def attacker(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.previous if self.mode == "conadv" else model

    def gradient(self, model: torch.nn.Module, loss_fn: Callable, batch: tuple[torch.Tensor, ...],
                 micro_batch: int) -> float:
        """Accumulate into ``model``'s .grad the gradient of the mean over the batch of
        loss(x) + loss(x + delta), in micro-batches; returns that mean loss."""
        n, total = len(batch[0]), 0.0
        for start in range(0, n, micro_batch):
            micro = tuple(t[start:start + micro_batch] for t in batch)
            delta = perturbation(self.attacker(model), loss_fn, micro, self.eps, self.norm)
            loss = loss_fn(model, micro) + loss_fn(model, (micro[0] + delta, *micro[1:]))
            (loss * (len(micro[0]) / n)).backward()
            total += float(loss.detach()) * len(micro[0]) / n
        return total
