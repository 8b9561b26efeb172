"""Ghost batch normalisation (Hoffer, Hubara, Soudry, "Train longer, generalize better", NeurIPS
2017): in training, BatchNorm's statistics are taken over groups of ``bn_batch_size`` examples,
not over the whole batch. Large-batch studies must state it: Goyal et al. 2017 normalise over 32
images per GPU at every total batch size, so their BN batch is 32 whatever B is.

``GhostBatchNorm2d`` normalises each group of ``ghost`` consecutive examples of its input with that
group's mean and variance, and updates the running statistics group by group, in order. A
micro-batch of the trial loop is a whole number of groups (harness.trial.placement chooses it so), so
accumulating micro-batches gives exactly the groups one pass over the batch would: the result
does not depend on the memory micro-batch, the device or how many data-parallel workers share the
batch. Evaluation uses the running statistics, as ``BatchNorm2d`` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are per group of ``ghost`` examples (None: the
    whole input, i.e. plain BatchNorm over what the forward gets)."""

    ghost: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or self.ghost is None or n == self.ghost:
            return super().forward(x)
        if n % self.ghost:
            raise ValueError(f"a batch of {n} is not a whole number of ghost batches of {self.ghost} "
                             "(bn_batch_size must divide every micro-batch)")
        return torch.cat([self._group(g) for g in x.split(self.ghost)])

    def _group(self, x: torch.Tensor) -> torch.Tensor:
        """One group, exactly as BatchNorm2d's training forward treats a whole batch."""
        factor = self.momentum if self.momentum is not None else 0.0
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # a cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, factor, self.eps)


def set_ghost_batch(model: nn.Module, size: int | None) -> int:
    """Give every GhostBatchNorm2d of ``model`` the group size; returns how many there are."""
    layers = [m for m in model.modules() if isinstance(m, GhostBatchNorm2d)]
    for m in layers:
        m.ghost = size
    return len(layers)
