"""The trial loop: one training run of one resolved recipe.

Large batches on small memory come from gradient accumulation: a logical batch of B examples is
split into micro-batches of m (B % m == 0); each micro-batch's mean loss is scaled by m/B before
``backward``, so the summed gradient is exactly the gradient of the mean loss over all B examples
and the update equals one big-batch update up to float rounding; BatchNorm's statistics are over
``bn_batch_size`` groups whatever the micro-batch (harness.trial.ghostbn). Both sizes are recorded.

Time: only training steps run on the clock (data gathering included), as AlgoPerf counts
time-to-result; ``loss.item()`` once per step syncs a GPU and feeds the divergence check.

Determinism: one seed gives three (model init, data order, training RNG). Same spec, seed and
thread count give identical measurements on a CPU; a checkpoint holds everything needed to
continue bit for bit (model, optimizer, stream position, RNG states, counters, measurements).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from harness.data.loader import bind as bind_loader, close as close_loaders, streamed_workers
from harness.data.stream import make_stream
from harness.results.store import Status
from harness.rules.optimizers import build_optimizer
from harness.rules.scaling import ResolvedRecipe
from harness.spec import TrialSpec
from harness.trial import checkpoint
from harness.trial.adversarial import Objective
from harness.trial.autotune import make_control, resolve_trial_recipe
from harness.trial.calibrate import micro_batch_cap
from harness.trial.ghostbn import set_ghost_batch
from harness.trial.gossip import NOTE as DECENTRALIZED_NOTE
from harness.trial.gossip import is_decentralized, make_workers
from harness.trial.noise import NoiseScale, squared_grad_norm
from harness.trial.placement import derive_seeds, micro_batch_sizes, pick_device
from harness.trial.precision import for_device

TIMING_EVERY = 8  # every 8th step runs without the noise measurement, to time the model alone


@dataclass
class TrialResult:
    status: str  # complete | diverged
    recipe: ResolvedRecipe
    measurements: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)


class Trial:
    """One training run. ``world`` = (rank, workers) makes it one worker of a data-parallel trial
    (harness.trial.distributed): it takes its share of every step's examples and all-reduces."""

    def __init__(self, spec: TrialSpec, world: tuple[int, int] = (0, 1), device: torch.device | None = None):
        self.spec, self.workload = spec, spec.workload_obj()
        wl, (self.rank, self.world_size) = self.workload, world
        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.device = device or pick_device(spec.device)
        data = wl.load()
        self.data = data.to(self.device) if self.device.type != "cpu" else data
        self.recipe = resolve_trial_recipe(spec, data.train_size)
        batch = self.recipe.batch_size
        self.local_batch = batch // self.world_size
        # measured steps split the batch for the noise scale; timing steps run the model's own micro-batches
        self.micro_batch_cap, self.micro_batch_cap_source = ((spec.micro_batch_cap, "the spec") if spec.micro_batch_cap
                                                             else micro_batch_cap(wl, self.device, torch.get_num_threads()))
        decentralized = is_decentralized(spec)  # simulated workers or a neighbour exchange (harness.trial.gossip)
        shares = spec.data_parallel.workers if spec.data_parallel.simulate else self.world_size
        self.micro_batch_size, self.timing_micro_batch = micro_batch_sizes(spec, batch, self.micro_batch_cap, shares)
        self.noise: NoiseScale | None = None
        self.noise_note: str | None = DECENTRALIZED_NOTE if decentralized and spec.noise_scale else None
        if (spec.noise_scale or spec.method == "adascale") and not decentralized:
            if self.micro_batch_size < batch:
                decay = math.exp(-batch / (spec.noise_ema_epochs * data.train_size))  # per example seen
                self.noise = NoiseScale(self.micro_batch_size, batch, decay, self.device)
            else:
                self.noise_note = (f"noise scale not measured: one micro-batch per step (micro_batch_size "
                                   f"{self.micro_batch_size} = batch_size); it needs two or more")
        self.control = make_control(self, spec)
        self.seeds = derive_seeds(spec.seed)

        torch.manual_seed(self.seeds["init"])
        self.model = for_device(wl.build_model().to(self.device), spec.precision, spec.channels_last, spec.compile,
                                self.device)  # bf16 autocast, channels-last, torch.compile (harness.trial.precision)
        self.bn_batch_size = spec.ghost_batch(wl) if set_ghost_batch(self.model, spec.ghost_batch(wl)) else None
        self.optimizer = build_optimizer(self.model, self.recipe.optimizer.name, self.recipe.peak_lr,
                                         self.recipe.optimizer.params)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.objective = Objective(wl.loss, **spec.augment.model_dump())
        self.workers = make_workers(self)
        self.sharpness: float | None = None
        torch.manual_seed(self.seeds["train"])
        self.stream = make_stream(spec.data_parallel, data.train, self.seeds["data"], self.device)
        self.data = bind_loader(self.data, self.stream, batch, math.gcd(self.micro_batch_size, self.timing_micro_batch),
                                (self.rank, self.world_size), torch.get_num_threads())  # streamed data (ImageNet):
        # its loader reads ahead, in the trial's CPUs less one worker processes unless the workload names them
        n = data.train_size
        self.eval_every = spec.eval.every_examples or math.ceil(n / spec.eval.per_epoch)
        self.after_target_every = spec.eval.after_target_every_examples or self.eval_every

        self.step = 0
        self.resumed_from_step: int | None = None  # set when continued from a checkpoint
        self.train_seconds = 0.0
        self.clean_seconds, self.clean_steps = 0.0, 0  # steps timed without the noise measurement
        self.noise_step = 0  # the step count at the noise scale's last update
        self.wall_seconds = 0.0
        self.measurements: list[dict[str, Any]] = []
        self.status = "running"
        self.initial_loss: float | None = None
        self.diverged_step: int | None = None
        self.target_hit: dict[str, Any] | None = None
        self.valid_hit: dict[str, Any] | None = None  # the target on the validation split
        self.validate = spec.validation.evaluate and data.valid is not None
        self.next_eval = self.eval_every
        self.last_lr = float("nan")
        self._loss_sum, self._loss_steps = 0.0, 0

    # -- one optimizer update -------------------------------------------------------------------
    def timing_step(self) -> bool:
        """Whether the next step runs as the model alone: the noise measurement forces a split into
        two or more micro-batches and adds norms, which would make small batches look slow. It is
        left out of every TIMING_EVERY-th step (of every step when the noise is not measured), and
        those steps give the model's step time (``model_step_seconds``). AdaScale needs its gain at
        every step: its measurement is part of the method, and its timing includes it."""
        if self.noise is None:
            return True
        return self.spec.method != "adascale" and self.step % TIMING_EVERY == TIMING_EVERY - 1

    def _train_step(self, measure: bool = True) -> float:
        r = self.recipe
        m = self.micro_batch_size if measure else self.timing_micro_batch
        idx = self.stream.take(r.batch_size)  # every worker draws the same examples ...
        if self.workers is not None:
            return self.workers.train_step(idx)
        if self.world_size > 1:  # ... and trains on its share of them
            idx = idx[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
        train = self.data.train
        self.optimizer.zero_grad(set_to_none=True)
        scale = m / r.batch_size
        total = None
        micro = NoiseScale.MicroNorms(self.params) if self.noise is not None and measure else None
        self.objective.start_step(self.model)
        for start in range(0, self.local_batch, m):
            part = idx[start:start + m]
            loss, clean = self.objective(self.model, self.workload.augment(tuple(t[part] for t in train)))
            (loss * scale).backward()
            total = clean.detach() * scale if total is None else total + clean.detach() * scale
            if micro is not None:
                micro.add(last=start + m >= self.local_batch)
        if self.world_size > 1:  # gradients, loss and micro-batch norms summed over the workers
            from harness.trial.collectives import all_reduce_step

            total = all_reduce_step(self.params, total, micro)
        if micro is not None:  # mean |micro-batch gradient|^2, and the whole step's |gradient|^2
            self.noise.update(micro.mean_sq() / scale**2, squared_grad_norm(self.params),
                              steps=self.step + 1 - self.noise_step)
            self.noise_step = self.step + 1
        if r.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(self.params, r.grad_clip_norm)
        self.last_lr = lr = self.control.lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        value = total.item()
        self.control.after_step(value)
        return value

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, split: str = "eval") -> tuple[float, float]:
        """(loss, metric) on the test split (``eval``) or the validation split (``valid``)."""
        self.model.eval()
        ev = getattr(self.data, split)
        n = min(len(ev[0]), self.spec.eval.max_examples or len(ev[0]))
        bs = self.workload.eval_batch_size
        sums = np.zeros(3)
        for start in range(self.rank * bs, n, bs * self.world_size):  # workers split the batches
            sums += self.workload.eval_sums(self.model, tuple(t[start:min(start + bs, n)] for t in ev))
        if self.world_size > 1:
            from harness.trial.collectives import all_reduce_sums

            sums = all_reduce_sums(sums)
        self.model.train()
        loss, metric = self.workload.finish_eval(*(float(v) for v in sums))
        return float(loss), float(metric)

    def _record(self, evaluate: bool = True) -> dict[str, Any]:
        with self.workers.averaged() if self.workers is not None else contextlib.nullcontext():
            eval_loss, metric = self.evaluate() if evaluate else (math.nan, math.nan)
            valid = self.evaluate("valid")[1] if evaluate and self.validate else math.nan
        r = self.recipe
        row = {
            "step": self.step,
            "examples": self.stream.position,
            "epoch": self.stream.position / r.dataset_size,
            "train_loss": self._loss_sum / max(1, self._loss_steps),
            "eval_loss": eval_loss,
            "metric": metric,
            "valid_metric": valid,
            "lr": self.last_lr,
            "train_seconds": self.train_seconds,
            "noise_scale": self.noise.value() if self.noise is not None else math.nan,
            "consensus_distance": self.workers.last_consensus if self.workers is not None else math.nan,
            **self.control.measurement(),
        }
        self._loss_sum, self._loss_steps = 0.0, 0
        self.measurements.append(row)
        target = self.spec.target
        hit = {"step": self.step, "examples": self.stream.position, "train_seconds": self.train_seconds}
        if target and self.target_hit is None and evaluate and self._reached(metric, target.value):
            self.target_hit = hit
        if target and self.validate and self.valid_hit is None and evaluate and self._reached(valid, target.value):
            self.valid_hit = hit
        if target and self.target_hit and (self.valid_hit or not self.validate):
            if target.stop:
                self.status = Status.COMPLETE  # a tuned trial runs on until both splits reached it
            elif self.eval_every < self.after_target_every:  # the rest of the budget: the sparser grid
                self.eval_every = self.after_target_every
                self.next_eval = self.stream.position + self.eval_every
        return row

    def _reached(self, metric: float, value: float) -> bool:
        return metric >= value if self.workload.higher_is_better else metric <= value

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, on_eval: Callable[["Trial", dict], None] | None = None,
            on_step: Callable[["Trial"], None] | None = None) -> TrialResult:
        self.model.train()
        factor = self.spec.divergence.loss_factor
        wall_start = time.perf_counter() - self.wall_seconds

        def due() -> bool:
            return self.stream.position >= self.next_eval or self.control.done()

        def evaluate() -> None:
            while self.next_eval <= self.stream.position:
                self.next_eval += self.eval_every
            row = self._record()
            self.wall_seconds = time.perf_counter() - wall_start
            if on_eval:
                on_eval(self, row)

        # a state taken between a step and its evaluation (in on_step) resumes with that evaluation
        evaluated = bool(self.measurements) and self.measurements[-1]["step"] == self.step
        if self.status == "running" and self.step and due() and not evaluated:
            evaluate()
        while self.status == "running" and not self.control.done():
            clean = self.timing_step()
            t0 = time.perf_counter()
            loss = self._train_step(measure=not clean)
            seconds = time.perf_counter() - t0
            self.train_seconds += seconds
            if clean and self.step > 1:  # the first step allocates and warms caches: not the model's pace
                self.clean_seconds += seconds
                self.clean_steps += 1
            if self.initial_loss is None:
                self.initial_loss = loss
            self._loss_sum += loss
            self._loss_steps += 1
            if not math.isfinite(loss) or (factor is not None and loss > factor * self.initial_loss):
                self.status, self.diverged_step = Status.DIVERGED, self.step
                self.wall_seconds = time.perf_counter() - wall_start
                row = self._record(evaluate=False)
                if on_eval:
                    on_eval(self, row)
                break
            if on_step:
                on_step(self)
            if due():
                evaluate()
        if self.status == "running":
            self.status = Status.COMPLETE
        if self.spec.sharpness and self.status == Status.COMPLETE and self.sharpness is None:
            from harness.trial.sharpness import (
                trial_sharpness,  # off the clock, on the model evaluated
            )

            with self.workers.averaged() if self.workers is not None else contextlib.nullcontext():
                self.sharpness = trial_sharpness(self, self.spec.sharpness.examples, self.spec.sharpness.iterations)
        self.wall_seconds = time.perf_counter() - wall_start
        close_loaders(self.data)  # their workers exit now, not when the trial is collected (docs: _Loader)
        return TrialResult(self.status, self.recipe, list(self.measurements), self.summary())

    def summary(self) -> dict[str, Any]:
        r, wl = self.recipe, self.workload
        metrics = [row["metric"] for row in self.measurements if not math.isnan(row["metric"])]
        best = (max if wl.higher_is_better else min)(metrics) if metrics else None
        valid = [row["valid_metric"] for row in self.measurements if not math.isnan(row.get("valid_metric", math.nan))]
        hit = self.target_hit or {}
        return {
            "status": self.status,
            "metric_name": wl.metric,
            "higher_is_better": wl.higher_is_better,
            "final_metric": metrics[-1] if metrics and self.status != Status.DIVERGED else None,
            "best_metric": best,
            # the validation split (spec.validation.evaluate: tuned trials select on it)
            "valid_final_metric": (valid[-1] if valid and self.status != Status.DIVERGED else None) if self.validate else None,
            "valid_target_reached": (self.valid_hit is not None) if self.validate else None,
            "valid_steps_to_target": (self.valid_hit or {}).get("step") if self.validate else None,
            "steps": self.step,
            "examples_seen": self.stream.position,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
            "throughput": self.stream.position / self.train_seconds if self.train_seconds else None,
            # the model's pace, measured on steps without the noise measurement (timing_step)
            "model_step_seconds": self.clean_seconds / self.clean_steps if self.clean_steps else None,
            "model_throughput": (r.batch_size * self.clean_steps / self.clean_seconds
                                 if self.clean_steps and self.clean_seconds else None),
            "timing_steps": self.clean_steps,
            "initial_loss": self.initial_loss,
            "target_reached": self.target_hit is not None,
            "steps_to_target": hit.get("step"),
            "examples_to_target": hit.get("examples"),
            "seconds_to_target": hit.get("train_seconds"),
            "diverged_step": self.diverged_step,
            "resumed_from_step": self.resumed_from_step,
            "micro_batch_size": self.micro_batch_size,
            "bn_batch_size": self.bn_batch_size,
            "precision": self.spec.precision,
            "parameters": sum(p.numel() for p in self.params),
            "last_lr": self.last_lr,
            "device": str(self.device),
            # the GPUs Ray assigned the trial's worker (its share of one, with resources.gpus < 1)
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "threads": torch.get_num_threads(),
            "loader_workers": streamed_workers(self.data),  # None: nothing streamed
            "workers": self.world_size,
            "peak_lr": r.peak_lr,
            "warmup_steps": r.warmup_steps,
            "warmup_epochs": r.warmup_epochs,
            "total_steps": r.total_steps,
            "steps_per_epoch": r.steps_per_epoch,
            "dataset_size": r.dataset_size,
            "recipe_warnings": list(r.warnings),
            "noise_scale": self.noise.value() if self.noise is not None else None,
            "noise_note": self.noise_note,
            "augment": self.spec.augment.kind,
            "dp_algorithm": self.spec.data_parallel.algorithm,
            "consensus_distance": self.workers.last_consensus if self.workers is not None else None,
            "sharpness": self.sharpness,
            **self.control.summary(),
        }

    # -- checkpoints (harness.trial.checkpoint) ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return checkpoint.trial_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        checkpoint.load_trial_state(self, state)
