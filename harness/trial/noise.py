"""The gradient noise scale, measured in every trial from the micro-batches it already has.

McCandlish et al. 2018 (arXiv 1812.06162): with per-example gradient covariance Sigma and true
gradient G, the simple noise scale is ``B_simple = tr(Sigma) / |G|^2``; the best LR grows linearly
in B below it and flattens above it. Two gradient norms of one step give unbiased estimates
(the two-batch estimator): with ``|G_small|^2`` the squared norm of one micro-batch's mean gradient
(B_small = m) and ``|G_big|^2`` that of the whole step's (B_big = B),

    |G|^2 ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

``|G_small|^2`` is averaged over every micro-batch of the step (each micro-batch's gradient is the
difference of the accumulated gradient before and after it), which cuts its variance by the number
of micro-batches. Both are noisy; their exponential moving averages are kept *separately* and divided only when read
(the ratio of averages, not the average of ratios, which is biased). The same two averages give
AdaScale's gain (Johnson et al. 2020): ``r = (tr(Sigma)/b + |G|^2) / (tr(Sigma)/B + |G|^2)``.

Cost per micro-batch: a foreach subtraction, norm and copy of the gradients; all on the device (no
synchronization until an evaluation). ``make bench`` measures it against the step time.
"""

from __future__ import annotations

import math

import torch


def squared_grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    grads = [p.grad for p in params if p.grad is not None]
    return torch.stack(torch._foreach_norm(grads)).square().sum()


class NoiseScale:
    class MicroNorms:
        """Squared norms of each micro-batch's gradient, from the accumulated gradient's increments."""

        def __init__(self, params: list[torch.Tensor]):
            self.params, self.prev, self.total, self.count = params, None, None, 0

        def add(self, last: bool) -> None:
            grads = [p.grad for p in self.params]
            if self.prev is None:
                sq = torch.stack(torch._foreach_norm(grads)).square().sum()
                if not last:
                    self.prev = [g.clone() for g in grads]
            else:
                sq = torch.stack(torch._foreach_norm(torch._foreach_sub(grads, self.prev))).square().sum()
                if not last:
                    torch._foreach_copy_(self.prev, grads)
            self.total = sq if self.total is None else self.total + sq
            self.count += 1

        def mean_sq(self) -> torch.Tensor:
            return self.total / self.count

    def __init__(self, b_small: int, b_big: int, decay: float, device: torch.device | str = "cpu"):
        if not b_big > b_small > 0:
            raise ValueError(f"need B_big > B_small > 0, got {b_big} and {b_small}")
        self.b_small, self.b_big, self.decay = b_small, b_big, decay
        self.trace_ema = torch.zeros((), dtype=torch.float64, device=device)  # tr(Sigma)
        self.g2_ema = torch.zeros((), dtype=torch.float64, device=device)  # |G|^2
        self.updates = 0

    def update(self, small_sq: torch.Tensor, big_sq: torch.Tensor, steps: int = 1) -> None:
        """One more pair of squared norms; ``steps``: the optimizer steps since the last update (the
        trial leaves the measurement out of some steps, harness.trial.loop.Trial.timing_step), so that
        the average decays per step (per example) whether or not every step was measured."""
        bs, bb = self.b_small, self.b_big
        small_sq, big_sq = small_sq.double(), big_sq.double()
        g2 = (bb * big_sq - bs * small_sq) / (bb - bs)
        trace = (small_sq - big_sq) / (1.0 / bs - 1.0 / bb)
        d = self.decay ** steps
        self.trace_ema.mul_(d).add_(trace, alpha=1 - d)
        self.g2_ema.mul_(d).add_(g2, alpha=1 - d)
        self.updates += 1

    def value(self) -> float:
        """B_simple = EMA(tr Sigma) / EMA(|G|^2); NaN before any update or while |G|^2 <= 0."""
        if not self.updates:
            return math.nan
        g2 = float(self.g2_ema)
        return float(self.trace_ema) / g2 if g2 > 0 else math.nan

    def gain(self, base_batch: int, batch: int) -> torch.Tensor:
        """AdaScale's gain r in [1, B/b], on the device; 1 until there is an estimate."""
        if not self.updates:
            return torch.ones((), dtype=torch.float64, device=self.g2_ema.device)
        trace = self.trace_ema.clamp(min=0)
        g2 = self.g2_ema.clamp(min=1e-30)
        r = (trace / base_batch + g2) / (trace / batch + g2)
        return r.clamp(1.0, batch / base_batch)

    def state_dict(self) -> dict:
        return {"trace_ema": self.trace_ema.clone(), "g2_ema": self.g2_ema.clone(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.trace_ema.copy_(state["trace_ema"])
        self.g2_ema.copy_(state["g2_ema"])
        self.updates = state["updates"]


@torch.no_grad()
def _flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in params])


def noise_scale_at(model: torch.nn.Module, loss_fn, data: tuple[torch.Tensor, ...], micro_batch: int, count: int,
                   seed: int = 0) -> dict[str, float]:
    """B_simple at fixed weights: the two-batch estimator over ``count`` micro-batches of
    ``micro_batch`` examples (B_small) and their mean (B_big = count x micro_batch), no update.

    In a trial the estimator's moving average spans a window of training, over which |G|^2 falls;
    the critical batch of a target is set by the noise scale *at* the target (McCandlish et al.), and
    at B << B_simple one step's |G|^2 estimate is mostly noise. Holding the weights and drawing many
    micro-batches (examples without replacement from ``data``) resolves it.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    n = len(data[0])
    count = max(2, min(count, n // micro_batch))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[: count * micro_batch].to(data[0].device)
    total, sq = None, 0.0
    for i in range(count):
        part = idx[i * micro_batch:(i + 1) * micro_batch]
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss_fn(model, tuple(t[part] for t in data)).backward()
        flat = _flat_grad(params)
        sq += float(flat.square().sum())
        total = flat if total is None else total + flat
    for p in params:
        p.grad = None
    b_small, b_big = micro_batch, micro_batch * count
    small_sq, big_sq = sq / count, float((total / count).square().sum())
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    return {"b_simple": trace / g2 if g2 > 0 else math.nan, "trace": trace, "g2": g2,
            "examples": b_big, "micro_batch": b_small}
