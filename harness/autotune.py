"""Learning-rate controls: who decides the LR of each step, and when a trial is done.

* ``ScheduleControl``: a fixed rule's schedule, ``lr_at(step)`` for ``total_steps`` steps.
* ``AdaScaleControl`` (Johnson et al. 2020, arXiv 2007.05105): from the base recipe at B0, the gain
  ``r = (tr(Sigma)/B0 + |G|^2) / (tr(Sigma)/B + |G|^2)`` in [1, B/B0] (the noise-scale estimator's
  moving averages) scales the base LR and advances the base schedule's clock: ``lr = r * lr0(tau)``,
  ``tau += r``; the run ends when tau reaches the base schedule's length. With little gradient noise
  r -> B/B0 (linear scaling, k times fewer steps); with much noise r -> 1 (no scaling).
* ``AutoWUControl`` (Kim et al. 2021, arXiv 2107.05855): the LR ramps exponentially from
  ``start_lr`` (default: the base peak LR / 1000) by ``ramp_factor_per_epoch``; at regular checks a Gaussian process (RBF kernel, lengthscale 0.2 on normalized
  time) fitted to the training-loss history asks whether the loss minimum is already behind; once
  it is in a majority of 5 posterior draws for ``patience`` checks in a row, the LR is reset to the
  ramp's LR at the posterior mean's minimum and decays by a cosine to 0 over the remaining steps.
  The detected warmup length and peak LR are reported: they test LEGW's claim that warmup should
  grow linearly with the batch.

The noise-aware rule (``noise_aware_lr``) is a scaling rule, not a control: eta0 * k * (B0 + Bn) /
(B + Bn), with Bn the noise scale measured at B0 (McCandlish et al.'s eps_opt(B) ratio).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.errors import BatchscaleError
from harness.scaling import resolve
from harness.schedules import lr_at

if TYPE_CHECKING:
    from harness.spec import TrialSpec
    from harness.trial import Trial


class ScheduleControl:
    def __init__(self, trial: "Trial"):
        self.trial = trial

    def lr(self) -> float:
        return lr_at(self.trial.step, self.trial.recipe)

    def after_step(self, loss: float) -> None:
        pass

    def done(self) -> bool:
        return self.trial.step >= self.trial.recipe.total_steps

    def measurement(self) -> dict[str, Any]:
        return {"gain": math.nan}

    def summary(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class AdaScaleControl(ScheduleControl):
    def __init__(self, trial: "Trial", spec: "TrialSpec"):
        super().__init__(trial)
        if trial.noise is None:
            raise BatchscaleError("method 'adascale' needs two or more micro-batches per step to measure the "
                                  "gradient variance; allowed: micro_batch_size < batch_size")
        base = spec.base_recipe()
        r = trial.recipe
        self.base_schedule = resolve(base, base.base_batch_size, "none", r.dataset_size, epochs=r.epochs)
        self.tau, self.last_gain, self.gain_sum = 0.0, 1.0, 0.0

    def lr(self) -> float:
        self.last_gain = float(self.trial.noise.gain(self.base_schedule.batch_size, self.trial.recipe.batch_size))
        return self.last_gain * lr_at(self.tau, self.base_schedule)

    def after_step(self, loss: float) -> None:
        self.tau += self.last_gain
        self.gain_sum += self.last_gain

    def done(self) -> bool:
        return self.tau >= self.base_schedule.total_steps

    def measurement(self) -> dict[str, Any]:
        return {"gain": self.last_gain}

    def summary(self) -> dict[str, Any]:
        steps = self.trial.step
        return {"adascale_mean_gain": self.gain_sum / steps if steps else None,
                "adascale_base_steps": self.base_schedule.total_steps}

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "last_gain": self.last_gain, "gain_sum": self.gain_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau, self.last_gain, self.gain_sum = state["tau"], state["last_gain"], state["gain_sum"]


def gp_minimum_behind(losses: np.ndarray, lengthscale: float = 0.2, noise: float = 0.1, draws: int = 5,
                      confidence: float = 0.95, seed: int = 0) -> tuple[bool, int]:
    """Is the minimum of the loss curve behind its end? An exact GP on normalized time and loss.

    Returns (behind in a majority of ``draws`` posterior draws, index of the posterior mean's minimum).
    A draw has its minimum behind when its end exceeds its minimum by more than the one-sided
    ``confidence`` quantile of the posterior standard deviation at the end.
    """
    y = np.asarray(losses, dtype=float)
    n = len(y)
    if n < 5:
        return False, int(np.argmin(y)) if n else 0
    x = np.linspace(0.0, 1.0, n)
    mu, sd = y.mean(), y.std() or 1.0
    z = (y - mu) / sd
    k = np.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / lengthscale**2)
    chol = np.linalg.cholesky(k + noise * np.eye(n))
    alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, z))
    mean = k @ alpha
    v = np.linalg.solve(chol, k)
    cov = k - v.T @ v
    sd_end = math.sqrt(max(cov[-1, -1], 1e-12))
    samples = np.random.default_rng(seed).multivariate_normal(mean, cov + 1e-9 * np.eye(n), size=draws,
                                                              method="cholesky")
    margin = _normal_quantile(confidence) * sd_end
    behind = sum(1 for s in samples if s[-1] - s.min() > margin and s.argmin() < n - 1)
    return behind > draws // 2, int(np.argmin(mean))


def _normal_quantile(p: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(p))


class AutoWUControl(ScheduleControl):
    def __init__(self, trial: "Trial", spec: "TrialSpec"):
        super().__init__(trial)
        self.cfg = spec.autowu
        r = trial.recipe
        self.start_lr = self.cfg.start_lr or r.base_peak_lr / 1000
        self.check_every = max(1, round(self.cfg.check_every_epochs * r.steps_per_epoch))
        self.growth = self.cfg.ramp_factor_per_epoch ** (1.0 / r.steps_per_epoch)  # per step
        self.phase = "warmup"
        self.losses: list[float] = []
        self.streak = 0
        self.warmup_steps: int | None = None
        self.peak_lr: float | None = None
        self.decay_start = 0

    def _ramp(self, step: int) -> float:
        return self.start_lr * self.growth**step

    def lr(self) -> float:
        s = self.trial.step
        if self.phase == "warmup":
            return min(self._ramp(s), self.cfg.max_lr)
        span = max(1, self.trial.recipe.total_steps - self.decay_start)
        frac = min(1.0, (s - self.decay_start) / span)
        return self.peak_lr * 0.5 * (1 + math.cos(math.pi * frac))

    def after_step(self, loss: float) -> None:
        if self.phase != "warmup":
            return
        self.losses.append(loss if math.isfinite(loss) else max(self.losses, default=1e6) * 10)
        if self.trial.step % self.check_every:
            return
        history = np.asarray(self.losses)
        stride = max(1, len(history) // 200)  # the GP is exact: keep it small
        behind, at = gp_minimum_behind(history[::stride], self.cfg.lengthscale, draws=self.cfg.draws,
                                       seed=self.trial.step)
        self.streak = self.streak + 1 if behind else 0
        if self.streak >= self.cfg.patience:
            self.phase, self.decay_start = "decay", self.trial.step
            self.warmup_steps = self.trial.step
            self.peak_lr = min(self._ramp(at * stride), self.cfg.max_lr)

    def measurement(self) -> dict[str, Any]:
        return {"gain": math.nan}

    def summary(self) -> dict[str, Any]:
        spe = self.trial.recipe.steps_per_epoch
        return {"autowu_warmup_steps": self.warmup_steps,
                "autowu_warmup_epochs": self.warmup_steps / spe if self.warmup_steps is not None else None,
                "autowu_peak_lr": self.peak_lr}

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "losses": list(self.losses), "streak": self.streak,
                "warmup_steps": self.warmup_steps, "peak_lr": self.peak_lr, "decay_start": self.decay_start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase, self.losses, self.streak = state["phase"], list(state["losses"]), state["streak"]
        self.warmup_steps, self.peak_lr, self.decay_start = state["warmup_steps"], state["peak_lr"], state["decay_start"]


def make_control(trial: "Trial", spec: "TrialSpec") -> ScheduleControl:
    if spec.method == "adascale":
        return AdaScaleControl(trial, spec)
    if spec.method == "autowu":
        return AutoWUControl(trial, spec)
    return ScheduleControl(trial)


def noise_aware_lr(base_lr: float, base_batch: int, batch: int, b_noise: float) -> float:
    """eta0 * k * (B0 + Bn) / (B + Bn): linear while B << Bn, flat once B >> Bn."""
    return base_lr * (batch / base_batch) * (base_batch + b_noise) / (batch + b_noise)


def probe_noise_scale(spec: "TrialSpec") -> float:
    """B_noise measured at B0 in a short run of the base recipe (``noise_aware.probe_epochs``)."""
    from harness.trial import Trial

    base = spec.base_recipe()
    probe = spec.model_copy(update={"method": "none", "batch_size": base.base_batch_size, "peak_lr": None,
                                    "warmup_epochs": None, "target": None, "noise_scale": True,
                                    "budget": spec.budget.model_copy(update={
                                        "epochs": spec.noise_aware.probe_epochs, "examples": None})})
    value = Trial(probe).run().summary["noise_scale"]
    if value is None or not math.isfinite(value) or value <= 0:
        raise BatchscaleError(f"noise-aware: the probe at B0={base.base_batch_size} measured no usable noise scale "
                              f"({value}); give noise_aware.b_noise in the spec")
    return value
