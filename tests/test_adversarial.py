"""DisAdv and ConAdv (issue 14, second part): which weights the perturbation is computed at, and
accumulation in micro-batches equal to one pass."""

import copy

import pytest
import torch
import torch.nn.functional as F

from harness.trial.adversarial import Adversary, perturbation


def loss_fn(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(32, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    return model, (x, y)


def fgsm(model, batch, eps):
    x = batch[0].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(model, (x, batch[1])), x)
    return eps * g.sign()


def sgd_step(model, adversary, batch, micro, lr=0.5):
    model.zero_grad()
    adversary.start_step(model)
    adversary.gradient(model, loss_fn, batch, micro)
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


@pytest.mark.parametrize("mode", ["conadv", "disadv"])
def test_the_perturbation_is_taken_at_the_previous_step_s_weights_for_conadv_and_the_current_for_disadv(mode):
    model, batch = setup()
    adv = Adversary(mode, eps=0.1)
    weights = [copy.deepcopy(model)]  # w_0, w_1, ...
    for _ in range(3):
        sgd_step(model, adv, batch, micro=32)
        weights.append(copy.deepcopy(model))
    adv.start_step(model)  # step t = 3: the weights now are w_3
    used = perturbation(adv.attacker(model), loss_fn, batch, 0.1)
    expected_at = weights[2] if mode == "conadv" else weights[3]
    other = weights[3] if mode == "conadv" else weights[2]
    assert torch.equal(used, fgsm(expected_at, batch, 0.1))
    assert not torch.equal(used, fgsm(other, batch, 0.1))  # the two really differ here


@pytest.mark.parametrize("mode", ["conadv", "disadv"])
def test_micro_batches_accumulate_to_the_one_pass_gradient(mode):
    grads = {}
    for micro in (32, 8):
        model, batch = setup()
        adv = Adversary(mode, eps=0.05)
        sgd_step(model, adv, batch, micro)  # a first step, so ConAdv's stale weights differ from the current
        model.zero_grad()
        adv.start_step(model)
        adv.gradient(model, loss_fn, batch, micro)
        grads[micro] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(grads[8], grads[32], atol=1e-5, rtol=0)


def test_l2_perturbations_have_norm_eps_per_example_and_bad_names_are_refused():
    model, batch = setup()
    delta = perturbation(model, loss_fn, batch, 0.3, norm="l2")
    assert torch.allclose(delta.norm(dim=1), torch.full((32,), 0.3, dtype=torch.float64))
    with pytest.raises(ValueError, match="disadv, conadv"):
        Adversary("pgd", 0.1)
    with pytest.raises(ValueError, match="real-valued inputs"):
        perturbation(model, loss_fn, (torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, dtype=torch.long)), 0.1)
