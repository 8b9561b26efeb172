"""The order in which a trial sees its training examples.

An endless stream of epochs, each a fresh permutation of the training set drawn from
``(data_seed, epoch)``. Every optimizer step takes the next B indices, crossing an epoch boundary
when it must, so every step has exactly B examples whatever N/B is. The whole state is one
integer, ``position`` (examples consumed), which makes checkpoints exact.
"""

from __future__ import annotations

import numpy as np
import torch


class ExampleStream:
    def __init__(self, size: int, data_seed: int, device: torch.device | str = "cpu"):
        self.size, self.data_seed, self.device = size, data_seed, torch.device(device)
        self.position = 0
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            seed = int(np.random.SeedSequence([self.data_seed, epoch]).generate_state(1, np.uint64)[0] >> 1)
            gen = torch.Generator().manual_seed(seed)
            self._perm = torch.randperm(self.size, generator=gen).to(self.device)
            self._epoch = epoch
        return self._perm

    def take(self, count: int) -> torch.Tensor:
        parts = []
        while count > 0:
            epoch, offset = divmod(self.position, self.size)
            n = min(count, self.size - offset)
            parts.append(self.permutation(epoch)[offset:offset + n])
            self.position += n
            count -= n
        return parts[0] if len(parts) == 1 else torch.cat(parts)
