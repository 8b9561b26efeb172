"""Learning-rate controls: who decides the LR of each step, and when a trial is done.

* ``ScheduleControl``: a fixed rule's schedule, ``lr_at(step)`` for ``total_steps`` steps.
* ``AdaScaleControl`` (Johnson et al. 2020, arXiv 2007.05105): from the base recipe at B0, the gain
  ``r = (tr(Sigma)/B0 + |G|^2) / (tr(Sigma)/B + |G|^2)`` in [1, B/B0] (the noise-scale estimator's
  moving averages) scales the base LR and advances the base schedule's clock: ``lr = r * lr0(tau)``,
  ``tau += r``; the run ends when tau reaches the base schedule's length. With little gradient noise
  r -> B/B0 (linear scaling, k times fewer steps); with much noise r -> 1 (no scaling).
* ``AutoWUControl`` (Kim et al. 2021, arXiv 2107.05855), as their official code (kakaobrain/autowu)
  does it, with its defaults: the LR ramps exponentially from ``min_lr`` (1e-5) to ``max_lr`` (1.0)
  over ``max_warmup_fraction`` (half) of the run. At the end of every epoch of the warmup, the
  epoch's per-step training losses join the history, and a Gaussian process (constant mean, scaled
  RBF kernel of lengthscale 0.2 on x = step / steps so far, noise starting at 1e-3; mean, scale and
  noise fitted by 100 Adam steps, lr 0.01, on the marginal likelihood of at most 100 subsampled
  points, continuing from the previous epoch's fit) makes 5 predictions of the latent loss curve on
  500 points, each conditioned on its own subsample of at most 500 points. Each prediction gives
  p = max_i P(X_i < X_last) from the marginals of the differences; the epoch votes "the minimum is
  behind" when p > 0.95 in a majority of them, and the warmup ends when the last 3 epochs all voted
  so. The LR is then the mean over the predictions of the ramp's LR at the predicted mean's argmin,
  held constant (decay factor 1) until the cosine cooldown to 0 over the last 20% of the run.
  Reaching the warmup cap ends the warmup at the ramp's LR there. The detected warmup length and peak
  LR are reported: they test LEGW's claim that warmup should grow linearly with the batch.

The noise-aware rule (``noise_aware_lr``) is a scaling rule, not a control: eta0 * k * (B0 + Bn) /
(B + Bn), with Bn the noise scale measured at B0 (McCandlish et al.'s eps_opt(B) ratio).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from harness.errors import BatchscaleError
from harness.rules.scaling import AUTOMATIC_METHODS, ResolvedRecipe, resolve, warmup_epochs_for
from harness.rules.schedules import lr_at

if TYPE_CHECKING:
    from harness.spec import TrialSpec
    from harness.trial.types import TrialView


class ScheduleControl:
    def __init__(self, trial: "TrialView"):
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
    def __init__(self, trial: "TrialView", spec: "TrialSpec"):
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


class LossGP:
    """The GP regression of AutoWU's test (Kim et al.'s ``Regressor``), in torch without gpytorch.

    f ~ GP(c, s^2 exp(-(x - x')^2 / (2 l^2))), y = f + N(0, n^2); l is fixed, and c, s^2 and n^2 are
    fitted by Adam on the marginal log-likelihood per point, as softplus-transformed raw values
    (gpytorch's parametrization: s^2 = softplus(raw), n^2 = 1e-4 + softplus(raw)), so that successive
    fits continue from the last one. Losses are stored whole; every fit and prediction conditions on
    a uniform subsample (without replacement) drawn from one seeded generator.
    """

    NOISE_FLOOR = 1e-4

    def __init__(self, lengthscale: float = 0.2, seed: int = 0):
        self.lengthscale = lengthscale
        self.losses = torch.empty(0, dtype=torch.float64)
        self.raw = torch.tensor([0.0, 0.0, _inv_softplus(1e-3 - self.NOISE_FLOOR)], dtype=torch.float64,
                                requires_grad=True)  # (constant mean, raw outputscale, raw noise)
        self.adam = torch.optim.Adam([self.raw], lr=0.01)
        self.gen = torch.Generator().manual_seed(seed)

    def add(self, losses) -> None:
        self.losses = torch.cat([self.losses, torch.as_tensor(losses, dtype=torch.float64)])
        ok = torch.isfinite(self.losses)
        with torch.no_grad():
            self.raw[0] = self.losses[ok].mean()  # the mean restarts at the data's mean (as Kim et al.)

    def _subsample(self, max_points: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.losses)
        valid = torch.arange(n)[torch.isfinite(self.losses)]
        if len(valid) > max_points:
            pick = torch.ones(len(valid), dtype=torch.float64).multinomial(max_points, generator=self.gen).sort().values
            valid = valid[pick]
        return valid.to(torch.float64) / n, self.losses[valid]

    def _kernel(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return scale * torch.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / self.lengthscale**2)

    def _params(self):
        return self.raw[0], torch.nn.functional.softplus(self.raw[1]), \
            self.NOISE_FLOOR + torch.nn.functional.softplus(self.raw[2])

    def fit(self, steps: int = 100, max_points: int = 100) -> None:
        x, y = self._subsample(max_points)
        for _ in range(steps):
            self.adam.zero_grad()
            mean, scale, noise = self._params()
            k = self._kernel(x, x, scale) + noise * torch.eye(len(x), dtype=torch.float64)
            dist = torch.distributions.MultivariateNormal(mean.expand(len(x)), covariance_matrix=k)
            (-dist.log_prob(y) / len(x)).backward()
            self.adam.step()

    @torch.no_grad()
    def predict(self, grid: torch.Tensor, max_points: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and covariance of the latent curve f at ``grid`` (x in [0, 1])."""
        x, y = self._subsample(max_points)
        mean, scale, noise = self._params()
        k = self._kernel(x, x, scale) + noise * torch.eye(len(x), dtype=torch.float64)
        ks = self._kernel(x, grid, scale)
        chol = torch.linalg.cholesky(k)
        alpha = torch.cholesky_solve((y - mean).unsqueeze(1), chol).squeeze(1)
        v = torch.linalg.solve_triangular(chol, ks, upper=False)
        return mean + ks.T @ alpha, self._kernel(grid, grid, scale) - v.T @ v

    def state_dict(self) -> dict[str, Any]:
        return {"losses": self.losses.clone(), "raw": self.raw.detach().clone(), "adam": self.adam.state_dict(),
                "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = state["losses"].clone()
        with torch.no_grad():
            self.raw.copy_(state["raw"])
        self.adam.load_state_dict(state["adam"])
        self.gen.set_state(state["gen"])


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def past_minimum_probability(mean: torch.Tensor, cov: torch.Tensor) -> float:
    """max_i P(X_i < X_last) for (X_1..X_k) ~ N(mean, cov), from the marginals of X_i - X_last
    (Kim et al.'s test; 1e-4 added to the differences' variances as they do)."""
    d = mean[:-1] - mean[-1]
    var = cov.diagonal()[:-1] + cov[-1, -1] - 2 * cov[:-1, -1] + 1e-4
    p = torch.distributions.Normal(d, var.clamp(min=1e-12).sqrt()).cdf(torch.zeros_like(d))
    return float(p.max())


def minimum_behind(gp: LossGP, draws: int = 5, confidence: float = 0.95, grid_points: int = 500,
                   fit_steps: int = 100) -> tuple[bool, torch.Tensor]:
    """One test: fit, then ``draws`` predictions; (majority voted "behind", argmin x of each prediction)."""
    gp.fit(fit_steps)
    grid = torch.linspace(0.0, 1.0, grid_points, dtype=torch.float64)
    votes, argmins = 0, []
    for _ in range(draws):
        mean, cov = gp.predict(grid)
        votes += past_minimum_probability(mean, cov) > confidence
        argmins.append(grid[int(mean.argmin())])
    return votes > draws / 2, torch.stack(argmins)


class AutoWUControl(ScheduleControl):
    def __init__(self, trial: "TrialView", spec: "TrialSpec"):
        super().__init__(trial)
        self.cfg = c = spec.autowu
        r = trial.recipe
        total = r.total_steps
        self.max_warmup_steps = max(1, int(c.max_warmup_fraction * total))
        self.cooldown_start = (1 - c.cooldown_fraction) * total
        self.gamma = (c.max_lr / c.min_lr) ** (1.0 / self.max_warmup_steps)  # per step
        self.check_every = max(1, round(c.check_every_epochs * r.steps_per_epoch))
        self.gp = LossGP(c.lengthscale, seed=0)
        self.phase = "warmup"
        self.epoch_losses: list[float] = []
        self.votes: list[bool] = []
        self.current_lr = c.min_lr
        self.cooldown_from: tuple[int, float] | None = None
        self.warmup_steps: int | None = None
        self.peak_lr: float | None = None
        self.switched_by = None

    def lr(self) -> float:
        return self.current_lr

    def after_step(self, loss: float) -> None:
        step = self.trial.step  # updates done
        total = self.trial.recipe.total_steps
        if step >= self.cooldown_start and self.phase != "cooldown":
            if self.phase == "warmup":
                self._end_warmup(step, "cooldown")
            self.phase, self.cooldown_from = "cooldown", (step, self.current_lr)
        if self.phase == "warmup":
            if step >= self.max_warmup_steps:
                self._end_warmup(step, "cap")
            else:
                self.epoch_losses.append(loss)
                if len(self.epoch_losses) >= self.check_every:
                    self.gp.add(self.epoch_losses)
                    self.epoch_losses = []
                    if self._test(step):
                        return
                self.current_lr *= self.gamma
        elif self.phase == "cooldown":  # cosine from the LR at its start to 0 after the last step
            start, lr0 = self.cooldown_from  # as torch's CosineAnnealingLR(T_max = total - start), stepped now
            span = max(1, total - start)
            self.current_lr = lr0 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - start + 1) / span)))

    def _test(self, step: int) -> bool:
        behind, argmins = minimum_behind(self.gp, self.cfg.draws, self.cfg.confidence)
        self.votes = (self.votes + [bool(behind)])[-self.cfg.patience:]
        if len(self.votes) == self.cfg.patience and all(self.votes):
            ramp = self.cfg.min_lr * (self.current_lr / self.cfg.min_lr) ** argmins  # the ramp's LR there
            self.current_lr = float(ramp.mean())
            self._end_warmup(step, "test")
            return True
        return False

    def _end_warmup(self, step: int, why: str) -> None:
        self.phase, self.warmup_steps, self.peak_lr, self.switched_by = "constant", step, self.current_lr, why

    def measurement(self) -> dict[str, Any]:
        return {"gain": math.nan}

    def summary(self) -> dict[str, Any]:
        spe = self.trial.recipe.steps_per_epoch
        return {"autowu_warmup_steps": self.warmup_steps,
                "autowu_warmup_epochs": self.warmup_steps / spe if self.warmup_steps is not None else None,
                "autowu_peak_lr": self.peak_lr, "autowu_switched_by": self.switched_by}

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "epoch_losses": list(self.epoch_losses), "votes": list(self.votes),
                "current_lr": self.current_lr, "cooldown_from": self.cooldown_from, "warmup_steps": self.warmup_steps,
                "peak_lr": self.peak_lr, "switched_by": self.switched_by, "gp": self.gp.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase, self.epoch_losses, self.votes = state["phase"], list(state["epoch_losses"]), list(state["votes"])
        self.current_lr, self.cooldown_from = state["current_lr"], state["cooldown_from"]
        self.warmup_steps, self.peak_lr, self.switched_by = state["warmup_steps"], state["peak_lr"], state["switched_by"]
        self.gp.load_state_dict(state["gp"])


def autowu_deviations(cfg) -> list[str]:
    """Settings that differ from Kim et al.'s, for the trial's recipe warnings."""
    from harness.spec import AutoWUSpec

    kim = AutoWUSpec()
    return [f"autowu.{k} = {getattr(cfg, k)!r} differs from Kim et al.'s {getattr(kim, k)!r}"
            for k in AutoWUSpec.model_fields if getattr(cfg, k) != getattr(kim, k)]


def make_control(trial: "TrialView", spec: "TrialSpec") -> ScheduleControl:
    if spec.method == "adascale":
        return AdaScaleControl(trial, spec)
    if spec.method == "autowu":
        return AutoWUControl(trial, spec)
    return ScheduleControl(trial)


def noise_aware_lr(base_lr: float, base_batch: int, batch: int, b_noise: float) -> float:
    """eta0 * k * (B0 + Bn) / (B + Bn): linear while B << Bn, flat once B >> Bn."""
    return base_lr * (batch / base_batch) * (base_batch + b_noise) / (batch + b_noise)


def resolve_trial_recipe(spec: "TrialSpec", dataset_size: int) -> ResolvedRecipe:
    """The recipe a trial runs: its rule's, or an automatic method's starting point (noise-aware
    probes B_noise first; AdaScale keeps the base LR and warmup; tuned sets both; AutoWU's control
    replaces the schedule, the recipe keeps the bookkeeping)."""
    base = spec.base_recipe()
    batch = spec.batch_size or base.base_batch_size
    epochs = spec.budget.epochs_for(dataset_size)
    if spec.method not in AUTOMATIC_METHODS:
        return resolve(base, batch, spec.method, dataset_size, epochs=epochs, peak_lr=spec.peak_lr,
                       warmup_epochs=spec.warmup_epochs)
    peak, warmup = spec.peak_lr, spec.warmup_epochs
    if spec.method == "noise-aware" and peak is None:
        b_noise = spec.noise_aware.b_noise
        if not b_noise:  # the sweep's driver and `batchscale train` probe it first (harness.sweep.protocol)
            raise BatchscaleError("noise-aware: noise_aware.b_noise is not set; harness.sweep.protocol.with_b_noise(spec) "
                                  "probes it at B0 before the trial is built")
        peak = noise_aware_lr(base.peak_lr, base.base_batch_size, batch, b_noise)
        warmup = warmup_epochs_for(spec.noise_aware.warmup_rule, base, batch / base.base_batch_size, epochs)
    if spec.method == "adascale":  # the base recipe's LR and warmup; the gain scales them per step
        peak = peak or base.peak_lr
        warmup = base.warmup_epochs if warmup is None else warmup
    # tuned sets both; autowu's control replaces the schedule (the recipe keeps the bookkeeping)
    recipe = resolve(base, batch, "none+none", dataset_size, epochs=epochs, peak_lr=peak, warmup_epochs=warmup,
                     lr_method_label=spec.method)
    if spec.method == "autowu":  # a method named after a paper runs with its parameters, or says it does not
        from harness.trial.autotune import autowu_deviations

        recipe = recipe.model_copy(update={"warnings": (*recipe.warnings, *autowu_deviations(spec.autowu))})
    return recipe
