"""Where and how a trial's batch runs: its device, its micro-batch size, its seeds.

``micro_batch_sizes`` is the one place that decides the micro-batch size: the trial loop uses it,
and the sweep's plan records what it gives, so ``sweep.json`` and ``trials.parquet`` agree.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.errors import BatchscaleError
from harness.spec import TrialSpec


def auto_micro_batch(batch_size: int, cap: int, multiple: int = 1) -> int:
    """The largest divisor of ``batch_size`` that is at most ``cap`` and a multiple of ``multiple``
    (a BatchNorm group, harness.trial.ghostbn; the group itself when the cap is below it)."""
    for m in range(min(cap, batch_size), 0, -1):
        if batch_size % m == 0 and m % multiple == 0:
            return m
    return multiple


def micro_batch_sizes(spec: TrialSpec, batch: int, cap: int, workers: int = 1) -> tuple[int, int]:
    """(the micro-batch of a step that measures the noise scale, that of a step of the model alone),
    the one place that decides it (the sweep's plan records the first). The spec's micro_batch_size,
    else the largest divisor of the worker's share up to ``cap`` (a whole number of the trial's
    BatchNorm groups, ``bn_batch_size``); a step that would be one micro-batch is split in two when the noise scale is
    measured (it needs two or more), if its BatchNorm groups allow."""
    g = spec.ghost_batch(spec.workload_obj()) or 1
    model = spec.micro_batch_size or auto_micro_batch(batch // workers, cap, g)
    measured = model
    if (spec.noise_scale or spec.method == "adascale") and model == batch and not spec.micro_batch_size and batch >= 2 * g:
        measured = auto_micro_batch(batch, batch // 2, g)
    return measured, model


def derive_seeds(seed: int) -> dict[str, int]:
    init, data, train = np.random.SeedSequence(seed).generate_state(3, np.uint32)
    return {"init": int(init), "data": int(data), "train": int(train)}


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise BatchscaleError("device: 'cuda' was asked for but torch.cuda.is_available() is False; "
                              "allowed here: 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
