"""Optimizer registry: name -> defaults and a factory.

Importing this module does not import torch (the scaling rules validate optimizer names and
parameters without it); ``build_optimizer`` does.

Every optimizer takes ``weight_decay`` and ``exclude_bias_and_norm``. The latter puts tensors of
one dimension or fewer (biases, normalization scales) in a group without weight decay and, for
LARS and LAMB, without trust-ratio adaptation, as You et al. do for ResNet-50.

LARS and LAMB are ours (``harness.rules.layerwise``): the maintained ``pytorch-optimizer`` versions
differ from the papers (LARS applies the LR after the momentum instead of inside it, which
changes the update whenever the LR varies, i.e. during warmup; LAMB drops Adam's bias correction
and clamps the weight norm at 10).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

_COMMON = {"weight_decay": 0.0, "exclude_bias_and_norm": False}


@dataclass(frozen=True)
class OptimizerDef:
    name: str
    summary: str
    build: Callable[..., Any]  # (param_groups, lr, **params) -> torch.optim.Optimizer
    defaults: dict[str, Any] = field(default_factory=dict)


def _sgd(groups, lr, momentum=0.0, dampening=0.0, nesterov=False, **_):
    import torch

    return torch.optim.SGD(groups, lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov)


def _adam_like(cls_name):
    def build(groups, lr, beta1=0.9, beta2=0.999, eps=1e-8, **_):
        import torch

        return getattr(torch.optim, cls_name)(groups, lr=lr, betas=(beta1, beta2), eps=eps)

    return build


def _adagrad(groups, lr, eps=1e-10, initial_accumulator_value=0.0, **_):
    import torch

    return torch.optim.Adagrad(groups, lr=lr, eps=eps, initial_accumulator_value=initial_accumulator_value)


def _rmsprop(groups, lr, alpha=0.99, eps=1e-8, momentum=0.0, **_):
    import torch

    return torch.optim.RMSprop(groups, lr=lr, alpha=alpha, eps=eps, momentum=momentum)


def _adadelta(groups, lr, rho=0.9, eps=1e-6, **_):
    import torch

    return torch.optim.Adadelta(groups, lr=lr, rho=rho, eps=eps)


def _lars(groups, lr, momentum=0.9, trust_coefficient=1e-3, **_):
    from harness.rules.layerwise import LARS

    return LARS(groups, lr=lr, momentum=momentum, trust_coefficient=trust_coefficient)


def _lamb(groups, lr, beta1=0.9, beta2=0.999, eps=1e-6, phi_max=None, **_):
    from harness.rules.layerwise import LAMB

    return LAMB(groups, lr=lr, beta1=beta1, beta2=beta2, eps=eps, phi_max=phi_max)


def _def(name, summary, build, **defaults):
    return OptimizerDef(name, summary, build, {**_COMMON, **defaults})


OPTIMIZERS: dict[str, OptimizerDef] = {
    d.name: d
    for d in (
        _def("sgd", "Plain SGD (torch.optim.SGD)", _sgd),
        _def("momentum", "SGD with heavy-ball momentum 0.9", _sgd, momentum=0.9, dampening=0.0),
        _def("nesterov", "SGD with Nesterov momentum 0.9", lambda g, lr, **p: _sgd(g, lr, nesterov=True, **p), momentum=0.9),
        _def("adam", "Adam, L2 weight decay (torch.optim.Adam)", _adam_like("Adam"), beta1=0.9, beta2=0.999, eps=1e-8),
        _def("adamw", "AdamW, decoupled weight decay", _adam_like("AdamW"), beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01),
        _def("adagrad", "Adagrad", _adagrad, eps=1e-10, initial_accumulator_value=0.0),
        _def("rmsprop", "RMSprop", _rmsprop, alpha=0.99, eps=1e-8, momentum=0.0),
        _def("adadelta", "Adadelta", _adadelta, rho=0.9, eps=1e-6),
        _def("lars", "LARS (You, Gitman, Ginsburg 2017), layer-wise trust ratio with momentum", _lars,
             momentum=0.9, trust_coefficient=1e-3, exclude_bias_and_norm=True),
        _def("lamb", "LAMB (You et al. 2019), Adam moments with a layer-wise trust ratio", _lamb,
             beta1=0.9, beta2=0.999, eps=1e-6, phi_max=None, weight_decay=0.01, exclude_bias_and_norm=True),
    )
}


def optimizer_params(name: str, given: dict[str, Any]) -> dict[str, Any]:
    return {**OPTIMIZERS[name].defaults, **given}


def param_groups(model, weight_decay: float, exclude_bias_and_norm: bool) -> list[dict]:
    """Parameter groups; ``adapt`` tells LARS/LAMB whether to apply the trust ratio."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not exclude_bias_and_norm:
        return [{"params": params, "weight_decay": weight_decay, "adapt": True}]
    matrices = [p for p in params if p.ndim > 1]
    vectors = [p for p in params if p.ndim <= 1]
    groups = [{"params": matrices, "weight_decay": weight_decay, "adapt": True}]
    if vectors:
        groups.append({"params": vectors, "weight_decay": 0.0, "adapt": False})
    return groups


def build_optimizer(model, name: str, lr: float, params: dict[str, Any]):
    """A torch optimizer for ``model``; ``params`` are the registry defaults overlaid by the spec."""
    spec = optimizer_params(name, params)
    groups = param_groups(model, spec.pop("weight_decay"), spec.pop("exclude_bias_and_norm"))
    return OPTIMIZERS[name].build(groups, lr, **spec)
