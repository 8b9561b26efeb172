"""Learning-rate schedules: pure functions of the optimizer step.

``lr_at(step, recipe)`` is the LR of update number ``step + 1`` (steps count from 0 and count
optimizer updates, never micro-batches). It is warmup, then decay:

* warmup (``warmup_steps`` > 0): a linear ramp from ``warmup_start_lr`` (0 for LEGW, eta0 for
  Goyal et al.) that reaches, at its last step, the value the decay has at the end of warmup. For
  decays measured in absolute epochs (exponential, multi-step) that value may already be decayed
  when LEGW's warmup is long; ramping to it keeps the schedule continuous;
* decay: ``constant``; ``poly`` and ``cosine`` run from the peak at the end of warmup to
  ``end_factor * peak`` at the last step; ``exponential`` multiplies by ``gamma`` once per epoch
  from ``start_epoch`` on; ``multistep`` multiplies by ``gamma`` at each milestone epoch. Those two
  count epochs from the start of the run, or from the end of the warmup with ``after_warmup``.

Every decay is non-increasing, so the largest LR of a run (``realised_peak_lr``) is at its first
step or at the end of the warmup (the last step when the warmup outlasts the run).

Steps may be fractional: AdaScale advances the schedule's clock by its gain.
"""

from __future__ import annotations

import math

from harness.rules.recipe import ResolvedRecipe


def decay_lr(step: float, r: ResolvedRecipe) -> float:
    """The LR the decay prescribes at ``step``, ignoring warmup."""
    d = r.decay
    peak = r.peak_lr
    if d.kind == "constant":
        return peak
    if d.kind in ("poly", "cosine"):
        span = max(1, r.total_steps - r.warmup_steps)
        frac = min(1.0, max(0.0, (step - r.warmup_steps) / span))
        end = d.end_factor * peak
        shape = (1.0 - frac) ** d.power if d.kind == "poly" else 0.5 * (1.0 + math.cos(math.pi * frac))
        return end + (peak - end) * shape
    epoch = (step - (r.warmup_steps if d.after_warmup else 0)) / r.steps_per_epoch
    if d.kind == "exponential":
        times = math.floor(epoch + 1e-9) - d.start_epoch + 1
        return peak * d.gamma ** max(0, math.floor(times))
    if d.kind == "multistep":
        return peak * d.gamma ** sum(epoch + 1e-9 >= m for m in d.milestones_epochs)
    raise ValueError(f"unknown decay kind {d.kind!r}")


def lr_at(step: float, r: ResolvedRecipe) -> float:
    w = r.warmup_steps
    if step < w:
        target = decay_lr(w, r)
        return r.warmup_start_lr + (target - r.warmup_start_lr) * (step + 1) / w
    return decay_lr(step, r)


def realised_peak_lr(r: ResolvedRecipe) -> float:
    """The largest LR the run uses (the nominal ``peak_lr`` may never be reached)."""
    last = r.total_steps - 1
    return max(lr_at(0, r), lr_at(min(r.warmup_steps, last), r), lr_at(min(max(r.warmup_steps - 1, 0), last), r))


def lr_table(r: ResolvedRecipe, every: int = 1) -> list[tuple[int, float, float]]:
    """``(step, epoch, lr)`` for every ``every``-th step of the run (and its last step)."""
    steps = list(range(0, r.total_steps, every))
    if steps[-1] != r.total_steps - 1:
        steps.append(r.total_steps - 1)
    return [(s, s / r.steps_per_epoch, lr_at(s, r)) for s in steps]
