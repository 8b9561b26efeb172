"""Sharpness at the end of a trial (the spec's ``sharpness``): the largest eigenvalue of the Hessian
of the training loss, by power iteration on Hessian-vector products (Pearlmutter 1994's R-operator
through double backward; the measure of Keskar et al. 2017's sharp-minima argument as computed by
Yao et al. 2020, PyHessian, and Ghorbani et al. 2019).

The loss is the workload's mean training loss over a fixed set: the first ``examples`` training
examples (the same at every batch size, so trials compare), evaluated in chunks of the eval batch
size; the Hessian-vector product of the mean is the weighted sum of the chunks'. The iteration
starts from a seeded random unit vector and stops after ``iterations`` products or when the
Rayleigh quotient changes by under 1e-3 relative. The value is the Rayleigh quotient v^T H v at
the last unit vector v: the top eigenvalue when it dominates in magnitude (near a minimum, where the
Hessian is close to positive semi-definite, it does).
"""

from __future__ import annotations

from typing import Callable

import torch


def hessian_vector_product(loss_fn: Callable[[tuple], torch.Tensor], params: list[torch.Tensor],
                           chunks: list[tuple[tuple, float]], v: list[torch.Tensor]) -> list[torch.Tensor]:
    """H v for the weighted mean loss sum_c w_c loss(chunk_c)."""
    out = [torch.zeros_like(p) for p in params]
    for chunk, weight in chunks:
        with torch.enable_grad():
            grads = torch.autograd.grad(loss_fn(chunk) * weight, params, create_graph=True)
            dot = sum((g * u).sum() for g, u in zip(grads, v))
            hv = torch.autograd.grad(dot, params)
        for o, h in zip(out, hv):
            o += h.detach()
    return out


def top_eigenvalue(loss_fn: Callable[[tuple], torch.Tensor], params: list[torch.Tensor],
                   chunks: list[tuple[tuple, float]], iterations: int = 20, seed: int = 0,
                   tolerance: float = 1e-3) -> float:
    """The Rayleigh quotient at the power iteration's last vector (see the module's note)."""
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    value = None
    for _ in range(iterations):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = hessian_vector_product(loss_fn, params, chunks, v)
        new = float(sum((h * u).sum() for h, u in zip(hv, v)))
        v = hv
        if value is not None and abs(new - value) <= tolerance * abs(value):
            return new
        value = new
    return value


def trial_sharpness(trial, examples: int, iterations: int) -> float:
    """The top Hessian eigenvalue of ``trial``'s model on its first ``examples`` training examples."""
    train = trial.data.train
    n = min(examples, len(train[0]))
    bs = trial.workload.eval_batch_size
    chunks = [(tuple(t[s:min(s + bs, n)] for t in train), (min(s + bs, n) - s) / n) for s in range(0, n, bs)]
    model = trial.model
    was_training = model.training
    model.eval()  # no dropout; the same function at every call
    try:  # double backward through cuDNN's RNNs is not supported: use the native kernels here
        with torch.backends.cudnn.flags(enabled=False):
            return top_eigenvalue(lambda c: trial.workload.loss(model, c), trial.params, chunks, iterations,
                                  seed=trial.spec.seed)
    finally:
        model.train(was_training)
