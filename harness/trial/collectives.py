"""The collectives of a data-parallel trial's step (harness.trial.distributed runs the workers): one
all-reduce of the flattened gradients with the loss and the noise-scale sums, and the sum of the
evaluation's sums. The trial loop calls them; they need only torch.distributed's process group.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def _device_for_collectives() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_step(params: list[torch.Tensor], loss: torch.Tensor, micro) -> torch.Tensor:
    """Sum gradients, the loss and (when measured) the micro-batch norm sums over the workers.

    Gradients are already scaled by micro / batch_size, so their sum is the whole batch's mean
    gradient. Returns the summed loss; ``micro`` is updated in place.
    """
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
    extras = [loss.reshape(1).to(flat.dtype)]
    if micro is not None:
        extras += [micro.total.reshape(1).to(flat.dtype), torch.tensor([float(micro.count)], device=flat.device)]
    extras = torch.cat(extras)
    dist.all_reduce(extras)
    if micro is not None:
        micro.total, micro.count = extras[1], int(round(extras[2].item()))
    return extras[0]


def all_reduce_sums(sums: np.ndarray) -> np.ndarray:
    t = torch.tensor(sums, dtype=torch.float64, device=_device_for_collectives())
    dist.all_reduce(t)
    return t.cpu().numpy()
