"""LARS and LAMB as the papers write them.

LARS (You, Gitman, Ginsburg 2017, arXiv 1708.03888, Algorithm 1), per layer l:

    local_lr = eta * ||w|| / (||g|| + beta * ||w||)       (eta: trust coefficient, beta: weight decay)
    v <- m * v + lr_t * local_lr * (g + beta * w)
    w <- w - v

The global LR sits *inside* the momentum, so a warmup changes the step as the paper intends.

LAMB (You et al. 2019, arXiv 1904.00962, Algorithm 2), per layer l:

    m <- b1*m + (1-b1)*g ;  v <- b2*v + (1-b2)*g^2 ;  m^ = m/(1-b1^t) ;  v^ = v/(1-b2^t)
    r = m^ / (sqrt(v^) + eps) ;  u = r + lambda * w
    w <- w - lr_t * phi(||w||) / ||u|| * u                (phi: identity, or min(., phi_max))

Both fall back to a trust ratio of 1 when a norm is zero (a zero-initialized layer) and skip the
ratio in groups with ``adapt=False`` (biases and norm scales, see ``harness.rules.optimizers``).
"""

from __future__ import annotations

import torch


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3, adapt: bool = True):
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        trust_coefficient=trust_coefficient, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            lr, beta, eta, m = group["lr"], group["weight_decay"], group["trust_coefficient"], group["momentum"]
            grads = [p.grad for p in params]
            if group["adapt"]:
                w_norms = torch._foreach_norm(params)
                g_norms = torch._foreach_norm(grads)
            for i, p in enumerate(params):
                d = grads[i].add(p, alpha=beta) if beta else grads[i].clone()
                if group["adapt"]:
                    wn, gn = w_norms[i], g_norms[i]
                    local = torch.where((wn > 0) & (gn > 0), eta * wn / (gn + beta * wn), torch.ones_like(wn))
                    d.mul_(local * lr)
                else:
                    d.mul_(lr)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    state["momentum_buffer"] = buf = d
                else:
                    buf.mul_(m).add_(d)
                p.sub_(buf)
        return loss


class LAMB(torch.optim.Optimizer):
    def __init__(self, params, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-6,
                 weight_decay: float = 0.0, phi_max: float | None = None, adapt: bool = True):
        defaults = dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                        phi_max=phi_max, adapt=adapt)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2, eps, lam = group["beta1"], group["beta2"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v / (1 - b2**t)).sqrt_().add_(eps)
                u = (m / (1 - b1**t)).div_(denom)
                if lam:
                    u.add_(p, alpha=lam)
                ratio = 1.0
                if group["adapt"]:
                    wn = p.norm()
                    if group["phi_max"] is not None:
                        wn = wn.clamp(max=group["phi_max"])
                    un = u.norm()
                    ratio = torch.where((wn > 0) & (un > 0), wn / un, torch.ones_like(wn))
                p.sub_(u * (group["lr"] * ratio))
        return loss
