"""LARS and LAMB against the papers' formulas, computed independently here in numpy."""

import numpy as np
import pytest
import torch
from torch import nn

from harness.rules.optimizers import OPTIMIZERS, build_optimizer
from harness.spec import load_spec


def two_layer(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def grads_for(model, seed):
    torch.manual_seed(100 + seed)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return [p.grad.detach().numpy().copy() for p in model.parameters()]


def run_steps(name, params, lrs, steps=2):
    model = two_layer()
    opt = build_optimizer(model, name, lrs[0], params)
    history = []
    for t in range(steps):
        w = [p.detach().numpy().copy() for p in model.parameters()]
        g = grads_for(model, t)
        for group in opt.param_groups:
            group["lr"] = lrs[t]
        opt.step()
        history.append((w, g, [p.detach().numpy().copy() for p in model.parameters()]))
    return history


def test_lars_two_updates_match_you_gitman_ginsburg_algorithm_1():
    eta, beta, m, lrs = 1e-3, 5e-4, 0.9, [2.0, 3.0]  # the LR changes: it must sit inside the momentum
    hist = run_steps("lars", {"trust_coefficient": eta, "weight_decay": beta, "momentum": m}, lrs)
    v = None
    for t, (w, g, w_new) in enumerate(hist):
        v = v or [np.zeros_like(x) for x in w]
        for i, (wi, gi) in enumerate(zip(w, g)):
            if wi.ndim > 1:  # weights: trust ratio and weight decay
                local = eta * np.linalg.norm(wi) / (np.linalg.norm(gi) + beta * np.linalg.norm(wi))
                v[i] = m * v[i] + lrs[t] * local * (gi + beta * wi)
            else:  # biases: excluded (plain momentum SGD, no decay)
                v[i] = m * v[i] + lrs[t] * gi
            np.testing.assert_allclose(w_new[i], wi - v[i], rtol=1e-12, atol=1e-14)


def test_lamb_two_updates_match_you_et_al_algorithm_2():
    b1, b2, eps, lam, lrs = 0.9, 0.999, 1e-6, 0.01, [0.01, 0.02]
    hist = run_steps("lamb", {"beta1": b1, "beta2": b2, "eps": eps, "weight_decay": lam}, lrs)
    m = v = None
    for t, (w, g, w_new) in enumerate(hist, start=1):
        m = m or [np.zeros_like(x) for x in w]
        v = v or [np.zeros_like(x) for x in w]
        for i, (wi, gi) in enumerate(zip(w, g)):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi**2
            r = (m[i] / (1 - b1**t)) / (np.sqrt(v[i] / (1 - b2**t)) + eps)
            if wi.ndim > 1:
                u = r + lam * wi
                expected = wi - lrs[t - 1] * np.linalg.norm(wi) / np.linalg.norm(u) * u
            else:  # biases: Adam step, no decay, no trust ratio
                expected = wi - lrs[t - 1] * r
            np.testing.assert_allclose(w_new[i], expected, rtol=1e-12, atol=1e-14)


def test_lars_trust_ratio_falls_back_to_one_for_a_zero_layer():
    model = nn.Linear(3, 2, bias=False).double()
    nn.init.zeros_(model.weight)
    opt = build_optimizer(model, "lars", 0.5, {"momentum": 0.0})
    model.weight.grad = torch.ones_like(model.weight)
    opt.step()
    assert torch.allclose(model.weight, torch.full_like(model.weight, -0.5))


def test_exclusion_can_be_turned_off():
    model = two_layer()
    opt = build_optimizer(model, "lars", 1.0, {"exclude_bias_and_norm": False, "weight_decay": 0.1})
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["adapt"] and opt.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_registered_optimizer_builds_and_reduces_a_loss(name):
    lr = {"sgd": 0.5, "momentum": 0.1, "nesterov": 0.1, "adadelta": 1.0, "lars": 5.0, "lamb": 0.01}.get(name, 0.01)
    model = two_layer()
    opt = build_optimizer(model, name, lr, {})
    torch.manual_seed(1)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randint(0, 3, (64,))
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_unknown_optimizer_parameter_is_a_spec_error_naming_the_allowed_ones(capsys):
    from harness.cli import main

    code = main(["schedule", "experiments/paper/legw_imagenet_recipe.yaml", "--recipe-only",
                 "--set", "recipe.optimizer.trust=0.1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "recipe.optimizer" in err and "'trust'" in err and "trust_coefficient" in err


def test_optimizer_spec_defaults_overlay():
    spec = load_spec("experiments/paper/legw_imagenet_recipe.yaml")
    assert spec.recipe.optimizer.params["weight_decay"] == 0.0005
    assert spec.recipe.optimizer.params["trust_coefficient"] == 1e-3
