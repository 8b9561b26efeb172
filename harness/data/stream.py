"""The order in which a trial sees its training examples.

An endless stream of epochs, each a fresh permutation of the training set drawn from
``(data_seed, epoch)``. Every optimizer step takes the next B indices, crossing an epoch boundary
when it must, so every step has exactly B examples whatever N/B is. The whole state is one
integer, ``position`` (examples consumed), which makes checkpoints exact.

``ShardedStream`` (``data_parallel.shards``: random, label) gives each of K workers its own fixed
shard of the training set and its own stream of epochs over it, as each node of a decentralized
deployment holds its local data (Yuan et al. 2021). A step's B indices are the K workers' B/K in
worker order, so the trial's split of a step into K contiguous shares hands each worker its own.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.errors import BatchscaleError


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


class ExampleStream:
    def __init__(self, size: int, data_seed: int, device: torch.device | str = "cpu"):
        self.size, self.data_seed, self.device = size, data_seed, torch.device(device)
        self.position = 0
        self._epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(_seed(self.data_seed, epoch))
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


class ShardedStream:
    """K fixed shards, one stream of epochs each; ``take(B)`` is the K workers' B/K, in worker order."""

    def __init__(self, shards: list[torch.Tensor], data_seed: int, device: torch.device | str = "cpu"):
        self.shards = [s.to(device) for s in shards]
        self.streams = [ExampleStream(len(s), _seed(data_seed, 1 + k, 0x5A4D), device) for k, s in enumerate(shards)]

    @property
    def position(self) -> int:
        return sum(s.position for s in self.streams)

    @position.setter
    def position(self, value: int) -> None:
        for s in self.streams:
            s.position = value // len(self.streams)

    def take(self, count: int) -> torch.Tensor:
        share = count // len(self.streams)
        return torch.cat([shard[s.take(share)] for shard, s in zip(self.shards, self.streams)])


def shards_of(kind: str, train: tuple[torch.Tensor, ...], k: int, data_seed: int) -> list[torch.Tensor]:
    """The training set's K shards (near-equal sizes): ``random``, a seeded random split; ``label``,
    the examples sorted by class (in random order within a class) and cut into K contiguous blocks,
    so that each worker holds about C/K of the C classes (the non-IID split of Hsieh et al. 2020)."""
    n = len(train[0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_seed(data_seed, 0x5A4D)))
    if kind == "label":
        labels = train[-1]
        if labels.dim() != 1 or labels.dtype.is_floating_point:
            raise BatchscaleError(f"data_parallel.shards 'label': the workload's targets are not class labels "
                                  f"(shape {tuple(labels.shape)}, {labels.dtype}); allowed: shared, random")
        order = order[torch.sort(labels.cpu()[order], stable=True).indices]
    return list(torch.tensor_split(order, k))


def make_stream(data_parallel, train: tuple[torch.Tensor, ...], data_seed: int,
                device: torch.device | str = "cpu") -> ExampleStream | ShardedStream:
    """The trial's stream (``data_parallel``: the spec's): one shuffle of the whole set (``shared``),
    or one per worker's shard."""
    kind, k = data_parallel.shards, data_parallel.workers
    if kind == "shared" or k == 1:
        return ExampleStream(len(train[0]), data_seed, device)
    return ShardedStream(shards_of(kind, train, k, data_seed), data_seed, device)
