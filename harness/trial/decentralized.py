"""Decentralized data-parallel updates, simulated: K workers in one process, each averaging only
with its neighbours (Yuan et al., "DecentLaM", ICCV 2021; ../shared/notes/large-batch-science.md
section 7): the mathematics, tested against closed-form fixed points. Trials use it through
harness.trial.gossip (``data_parallel.algorithm``), simulated or over Ray Train workers.

Workers hold their parameters as rows of one tensor ``x`` (K x d) and their momenta as ``m``;
``W`` is a doubly stochastic mixing matrix (``mixing_matrix``); ``grads(x)`` gives every worker's
gradient at its own parameters (K x d). One step of each algorithm:

* all-reduce (parallel momentum SGD): g = mean_i g_i; m <- beta m + g; x <- x - gamma m (all equal);
* DmSGD:      m_i <- beta m_i + g_i(x_i);  x_i <- sum_j w_ij (x_j - gamma m_j);
* DecentLaM:  z_i = x_i - gamma g_i(x_i) (the vector exchanged); gt_i = (x_i - sum_j w_ij z_j) / gamma;
              m_i <- beta m_i + gt_i;  x_i <- x_i - gamma m_i.

Both decentralized ones exchange one vector per neighbour per step: ``outgoing`` gives what a
worker sends (and its momentum after), ``incoming`` its update from the mixed vectors it received,
sum_j w_ij v_j. Rows of a K x d matrix or one worker's own vector: the same functions serve the
simulation (mixed = W @ v) and real workers (harness.trial.gossip, point-to-point). With exact gradients DmSGD's
fixed point is decentralized SGD's at step gamma / (1 - beta) (the momentum-amplified bias) and
DecentLaM's is decentralized SGD's at step gamma (``dsgd_fixed_point`` gives it for a quadratic).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ALGORITHMS = ("allreduce", "dmsgd", "decentlam")
TOPOLOGIES = ("ring", "exponential")


def mixing_matrix(topology: str, k: int, dtype=torch.float64) -> torch.Tensor:
    """Doubly stochastic K x K weights: ``ring`` (self and the two neighbours, 1/3 each; 1/2 each
    for K = 2), ``exponential`` (node i hears from i - 2^j mod K, j = 0 .. floor(log2(K - 1)), and
    itself, uniformly: the static exponential graph of the DecentLaM paper)."""
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology {topology!r} is not one of {', '.join(TOPOLOGIES)}")
    w = torch.zeros(k, k, dtype=dtype)
    if k == 1:
        return w + 1
    if topology == "ring":
        for i in range(k):
            for j in {i, (i - 1) % k, (i + 1) % k}:
                w[i, j] = 1.0 / len({i, (i - 1) % k, (i + 1) % k})
        return w
    hops = [2 ** j for j in range(int(math.floor(math.log2(k - 1))) + 1)]
    for i in range(k):
        sources = {i, *((i - h) % k for h in hops)}
        for j in sources:
            w[i, j] = 1.0 / (len(hops) + 1)
    return w


def consensus_distance(x: torch.Tensor) -> float:
    """(1/K) sum_i |x_i - mean x|^2: how far the workers are from agreeing."""
    return float(((x - x.mean(0, keepdim=True)) ** 2).sum(1).mean())


def outgoing(algorithm: str, x: torch.Tensor, m: torch.Tensor, g: torch.Tensor, gamma: float,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What a worker sends its neighbours, and its momentum after: DmSGD x - gamma m (m updated
    first), DecentLaM z = x - gamma g (m unchanged yet)."""
    if algorithm == "dmsgd":
        m = beta * m + g
        return x - gamma * m, m
    if algorithm == "decentlam":
        return x - gamma * g, m
    raise ValueError(f"algorithm {algorithm!r} has no neighbour exchange; allowed: dmsgd, decentlam")


def incoming(algorithm: str, x: torch.Tensor, m: torch.Tensor, mixed: torch.Tensor, gamma: float,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A worker's new (x, m) from ``mixed`` = sum_j w_ij v_j of what it and its neighbours sent."""
    if algorithm == "dmsgd":
        return mixed, m
    if algorithm == "decentlam":
        m = beta * m + (x - mixed) / gamma
        return x - gamma * m, m
    raise ValueError(f"algorithm {algorithm!r} has no neighbour exchange; allowed: dmsgd, decentlam")


def step(algorithm: str, x: torch.Tensor, m: torch.Tensor, grads: Callable[[torch.Tensor], torch.Tensor] | torch.Tensor,
         w: torch.Tensor, gamma: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of every worker: (new x, new m). ``grads``: the K x d gradients, or a function of x
    giving them."""
    g = grads(x) if callable(grads) else grads
    if algorithm == "allreduce":
        m = beta * m + g.mean(0, keepdim=True).expand_as(g)
        return x - gamma * m, m
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    v, m = outgoing(algorithm, x, m, g, gamma, beta)
    return incoming(algorithm, x, m, w.to(v.dtype) @ v, gamma, beta)


def dsgd_fixed_point(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, gamma: float) -> torch.Tensor:
    """Where decentralized SGD (x <- W (x - gamma grad)) settles on worker losses
    f_i(x) = 1/2 (x - b_i)^T A_i (x - b_i) (``a``: K x d x d, ``b``: K x d): the solution of
    (I - W + gamma W A) x = gamma W A b over the stacked workers (A block-diagonal)."""
    k, d = b.shape
    big_a = torch.block_diag(*a)
    big_w = torch.kron(w, torch.eye(d, dtype=w.dtype))
    lhs = torch.eye(k * d, dtype=w.dtype) - big_w + gamma * big_w @ big_a
    rhs = gamma * big_w @ big_a @ b.reshape(-1)
    return torch.linalg.solve(lhs, rhs).reshape(k, d)
