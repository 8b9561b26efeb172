"""Streaming data: a training or evaluation column too large to hold in memory (ImageNet), read by a
torch ``DataLoader`` with worker processes (and pinned memory on a GPU) while the trial loop goes
on indexing it as if it were a tensor.

The trial loop takes ``column[part]`` for the index tensor ``part`` of every micro-batch, in the
order the trial's stream (harness.data.stream) gives them, and ``column[start:stop]`` for the
evaluation's consecutive slices. A ``StreamedColumn`` knows that order in advance: bound to the
trial's stream (``bind``), it replays a copy of the stream from the current step and feeds the
``DataLoader`` the same indices, in chunks that every micro-batch is a whole number of, so the
workers decode ahead of the loop. A request is served from the loader when it is the one planned;
after a resume the plan restarts at the stream's position; any other request (the noise probe, the
sharpness set) is decoded in this process with the evaluation transform.

The stream's contract holds: every step consumes exactly B examples of seeded, shuffled epochs.
Random augmentations are drawn per example from a generator seeded by (seed, draw), where the draw
is the example's place in the stream, so they do not depend on which worker process decoded the
example, on the number of workers or on where a run was resumed.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import sys
from collections import deque
from typing import Iterator, Protocol

import torch
from torch.utils.data import DataLoader


class Source(Protocol):
    """What a streamed column reads: ``item(index, draw)`` for training (augmented, ``draw`` >= 0)
    and ``item(index, -1)`` for evaluation (deterministic); one uint8 tensor per example."""

    def __len__(self) -> int: ...

    def item(self, index: int, draw: int) -> torch.Tensor: ...


class _Items(torch.utils.data.Dataset):
    def __init__(self, source: Source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]) -> torch.Tensor:
        return self.source.item(*key)


class StreamedColumn:
    """The first tensor of a workload's batches, read from ``source`` as the trial asks for it."""

    def __init__(self, source: Source, workers: int | None = None, device: torch.device | str = "cpu"):
        #: DataLoader worker processes; None until ``bind`` sizes them to the trial's CPUs (``loader_workers``)
        self.source, self.workers, self.device = source, workers, torch.device(device)
        self.shape = (len(source),)
        self._stream = None  # bound by ``bind``
        self._chunk, self._batch, self._share = 1, 1, (0, 1)
        self._reset()
        self.served = {"loader": 0, "direct": 0}  # examples, for tests and the curious
        self.restarts = 0  # of the training plan (once at the start, once after a resume)

    def _reset(self) -> None:
        self.close()
        self._expected: deque[torch.Tensor] = deque()  # planned index chunks looked at ahead of delivery
        self._plan: Iterator[torch.Tensor] | None = None  # the planned chunks not yet looked at
        self._batches: _Loader | None = None  # the loader's output, in the plan's order
        self._eval: _Loader | None = None
        self._eval_at, self._eval_stride = -1, 0
        self._restarted_at = -1  # the stream position the training plan was last restarted at

    def __len__(self) -> int:
        return len(self.source)

    def close(self) -> None:
        """Stop the DataLoaders' workers now (the trial loop calls it when a trial ends). The next
        request starts a new plan; nothing is lost but the read-ahead."""
        for name in ("_batches", "_eval"):
            if getattr(self, name, None) is not None:
                getattr(self, name).close()
                setattr(self, name, None)
        # the next training request restarts the plan (not a direct decode with the evaluation transform)
        self._expected, self._plan, self._restarted_at = deque(), None, -1

    def __del__(self) -> None:  # a trial dropped before it ended (an error, a test stepping it)
        self.close()

    def to(self, device: torch.device | str) -> "StreamedColumn":
        column = copy.copy(self)
        column.device = torch.device(device)
        column._batches = column._eval = None  # this column's loaders are its own
        column._reset()
        column.served, column.restarts = {"loader": 0, "direct": 0}, 0
        return column

    def bind(self, stream, batch: int, chunk: int, share: tuple[int, int] = (0, 1)) -> None:
        """Plan training requests from ``stream``: every step takes ``batch`` indices, of which this
        process reads share ``(rank, workers)``, in micro-batches that are multiples of ``chunk``."""
        self._stream, self._batch, self._chunk, self._share = stream, batch, chunk, share
        self._reset()

    # -- the trial's requests -------------------------------------------------------------------
    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            return self._slice(key)
        idx = torch.as_tensor(key).cpu()
        if self._stream is not None and not self._planned(idx) and self._stream.position != self._restarted_at:
            self._restart_training()  # once per stream position: requests off the plan do not respawn the loader
        if self._stream is None or not self._planned(idx):
            return self._direct(idx.tolist())
        parts = []
        for _ in range(len(idx) // self._chunk):
            self._expected.popleft()
            parts.append(next(self._batches))
        self.served["loader"] += len(idx)
        return self._place(torch.cat(parts) if len(parts) > 1 else parts[0])

    def _planned(self, idx: torch.Tensor) -> bool:
        n, k = len(idx), len(idx) // self._chunk
        if self._plan is None or n % self._chunk or not k:
            return False
        while len(self._expected) < k:
            self._expected.append(next(self._plan))
        return torch.equal(torch.cat(list(itertools.islice(self._expected, k))), idx)

    def _restart_training(self) -> None:
        """Plan from the start of the step the stream has just given (its position minus B)."""
        self._restarted_at = self._stream.position
        self.restarts += 1
        stream = copy.deepcopy(self._stream)
        stream.position = self._stream.position - self._batch
        rank, workers = self._share
        batch, chunk = self._batch, self._chunk
        local = batch // workers

        def chunks():  # not a reference to self: the open loader must not keep the column alive (_Loader)
            while True:
                first = stream.position
                idx = stream.take(batch).cpu()
                for start in range(rank * local, (rank + 1) * local, chunk):
                    yield idx[start:start + chunk], range(first + start, first + start + chunk)

        plan, feed = itertools.tee(chunks())
        if self._batches is not None:
            self._batches.close()
        self._expected, self._plan = deque(), (idx for idx, _ in plan)
        self._batches = self._loader([(int(i), d) for i, d in zip(idx, draws)] for idx, draws in feed)

    def _slice(self, key: slice) -> torch.Tensor:
        """Evaluation: consecutive slices of one size and stride, in order, read ahead."""
        start, stop, _ = key.indices(len(self))
        if start != self._eval_at or self._eval is None:  # a new pass (or an unplanned slice): restart
            size = stop - start
            self._eval_stride = size * self._share[1]
            if self._eval is not None:
                self._eval.close()
            n = len(self)  # not self in the keys (_Loader)
            self._eval = self._loader([(i, -1) for i in range(s, min(s + size, n))]
                                      for s in range(start, n, self._eval_stride))
        out = next(self._eval)[: stop - start]
        self._eval_at = start + self._eval_stride
        self.served["loader"] += len(out)
        return self._place(out)

    def _direct(self, indices: list[int]) -> torch.Tensor:
        self.served["direct"] += len(indices)
        return self._place(torch.stack([self.source.item(i, -1) for i in indices]))

    def _place(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True) if self.device.type != "cpu" else x

    def _loader(self, keys) -> _Loader:
        return _Loader(self.source, keys, self.workers, pin_memory=self.device.type == "cuda")


#: the loaders not yet closed (``_Loader``)
_OPEN: set[_Loader] = set()


class _Loader:
    """A ``DataLoader``'s batches over an iterator (possibly endless) of key lists, until ``close``.
    A DataLoader iterator freed by the cyclic garbage collector (a dropped trial's objects refer to
    each other) shut its workers down slowly: 10.3 s for 2 workers, about torch's 5 s join timeout
    each, against 0.2 s closed (``make bench ARGS="--only loader_close"``), in whatever ran when the
    collector came. ``close`` stops the keys and takes the read-ahead, so the loader ends as at the
    end of an epoch and its workers exit at once. An open loader is held in ``_OPEN``, so the
    collector never frees it before the column that owns it: the column's ``__del__`` closes it, in
    whatever order a dropped trial's objects go. So the keys must not refer to the column (that
    would keep it, and the workers, alive)."""

    def __init__(self, source: Source, keys, workers: int, pin_memory: bool):
        self._keys = _Keys(keys)
        self._batches = iter(DataLoader(_Items(source), batch_sampler=self._keys, num_workers=workers,
                                        pin_memory=pin_memory, prefetch_factor=2 if workers else None))
        _OPEN.add(self)

    def __next__(self) -> torch.Tensor:
        return next(self._batches)

    def close(self) -> None:
        if self._keys.stopped:
            return
        self._keys.stopped = True
        _OPEN.discard(self)
        if sys.is_finalizing():  # Python is exiting: multiprocessing ends the workers
            return
        try:
            for _ in self._batches:
                pass
        except Exception:  # a failed worker: the DataLoader's own shutdown stops the others
            pass


class _Keys:
    """A batch sampler over an iterator (possibly endless) of key lists, until ``stopped``."""

    def __init__(self, keys):
        self.keys, self.stopped = keys, False

    def __iter__(self):
        for keys in self.keys:
            if self.stopped:
                return
            yield keys


def loader_workers(cpus: int) -> int:
    """DataLoader workers for a trial of ``cpus`` CPUs: all but the one the trial's own process
    keeps (a trial of 4 CPUs, a quarter of a 16-CPU GPU, gets 3; a trial of 1 decodes in its process)."""
    return max(0, cpus - 1)


def close(data) -> None:
    """Stop the loader workers of a dataset's streamed columns (a trial that has ended)."""
    for column in data.train + data.eval:
        if isinstance(column, StreamedColumn):
            column.close()


def streamed_workers(data) -> int | None:
    """The DataLoader workers of a dataset's streamed columns (None when nothing is streamed)."""
    return next((c.workers for c in data.train + data.eval if isinstance(c, StreamedColumn)), None)


def bind(data, stream, batch: int, chunk: int, share: tuple[int, int] = (0, 1), cpus: int = 1):
    """The dataset with its own copy of every streamed column (a workload's data is loaded once per
    process, and each trial needs its own read-ahead), the training ones bound to the trial's stream;
    columns whose workload left their worker count open get ``loader_workers(cpus)``."""
    if not any(isinstance(c, StreamedColumn) for c in data.train + data.eval):
        return data
    own = [tuple(c.to(c.device) if isinstance(c, StreamedColumn) else c for c in part) for part in (data.train, data.eval)]
    for column in own[0] + own[1]:
        if isinstance(column, StreamedColumn) and column.workers is None:
            column.workers = loader_workers(cpus)
    for column in own[0]:
        if isinstance(column, StreamedColumn):
            column.bind(stream, batch, chunk, share)
    return dataclasses.replace(data, train=own[0], eval=own[1])
