"""Decentralized updates against their closed-form fixed points (issue 14, first part)."""

import pytest
import torch

from harness.trial.decentralized import consensus_distance, dsgd_fixed_point, mixing_matrix, step


def quadratic(k=4, d=3, seed=0):
    """Worker losses 1/2 (x - b_i)^T A_i (x - b_i), different per worker (heterogeneous data)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    a = q @ q.transpose(1, 2) / d + 0.5 * torch.eye(d, dtype=torch.float64)
    b = 3 * torch.randn(k, d, generator=g, dtype=torch.float64)
    return a, b, lambda x: torch.einsum("kij,kj->ki", a, x - b)


def run(algorithm, grads, w, gamma, beta, steps=6000, k=4, d=3):
    x = torch.zeros(k, d, dtype=torch.float64)
    m = torch.zeros_like(x)
    for _ in range(steps):
        x, m = step(algorithm, x, m, grads, w, gamma, beta)
    return x


@pytest.mark.parametrize("topology", ["ring", "exponential"])
def test_mixing_matrices_are_doubly_stochastic_and_use_neighbours_only(topology):
    for k in (2, 4, 8):
        w = mixing_matrix(topology, k)
        assert torch.allclose(w.sum(0), torch.ones(k, dtype=w.dtype)) and torch.allclose(w.sum(1), torch.ones(k, dtype=w.dtype))
    w = mixing_matrix("ring", 6)
    assert (w[0] > 0).nonzero().flatten().tolist() == [0, 1, 5]
    w = mixing_matrix("exponential", 8)  # hears from 1, 2, 4 hops back
    assert (w[0] > 0).nonzero().flatten().tolist() == [0, 4, 6, 7]


def test_dmsgd_settles_at_dsgd_with_the_step_amplified_by_momentum_and_decentlam_does_not():
    """On a ring of 4 simulated workers with exact gradients: DmSGD's fixed point is DSGD's at step
    gamma/(1-beta), DecentLaM's is DSGD's at step gamma, both within 1e-6 of the closed form; the
    amplified one is further from consensus, and all-reduce reaches the global optimum."""
    a, b, grads = quadratic()
    w = mixing_matrix("ring", 4)
    gamma, beta = 0.02, 0.9
    dmsgd = run("dmsgd", grads, w, gamma, beta)
    decentlam = run("decentlam", grads, w, gamma, beta)
    assert torch.allclose(dmsgd, dsgd_fixed_point(a, b, w, gamma / (1 - beta)), atol=1e-6, rtol=0)
    assert torch.allclose(decentlam, dsgd_fixed_point(a, b, w, gamma), atol=1e-6, rtol=0)
    assert not torch.allclose(dmsgd, decentlam, atol=1e-3)
    assert consensus_distance(dmsgd) > 5 * consensus_distance(decentlam) > 0
    optimum = torch.linalg.solve(a.sum(0), torch.einsum("kij,kj->i", a, b))
    allreduce = run("allreduce", grads, w, gamma, beta)
    assert torch.allclose(allreduce, optimum.expand(4, -1), atol=1e-8) and consensus_distance(allreduce) < 1e-20


def test_unknown_algorithm_and_topology_name_what_is_allowed():
    with pytest.raises(ValueError, match="allreduce, dmsgd, decentlam"):
        step("gossip", torch.zeros(2, 1), torch.zeros(2, 1), lambda x: x, torch.eye(2), 0.1, 0.9)
    with pytest.raises(ValueError, match="ring, exponential"):
        mixing_matrix("torus", 4)
