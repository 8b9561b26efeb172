"""What the trial loop's parts see of a trial: ``TrialView``, the attributes of ``loop.Trial`` that
the auto-tuners (``autotune``), the decentralized workers (``gossip``) and the checkpoint
(``checkpoint``) read and set. ``loop.Trial`` satisfies it structurally; the parts import this
module, never the loop, so the import graph has no circle, type-only ones included."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # third-party and lower-layer types only: none of them imports the trial
    import torch

    from harness.rules.recipe import ResolvedRecipe
    from harness.spec import TrialSpec
    from harness.workloads import Workload


class TrialView(Protocol):
    # what it trains: fixed when the trial is built
    spec: "TrialSpec"
    workload: "Workload"
    recipe: "ResolvedRecipe"
    device: "torch.device"
    rank: int
    world_size: int
    micro_batch_size: int
    model: "torch.nn.Module"
    optimizer: "torch.optim.Optimizer"
    params: list["torch.Tensor"]
    objective: Any  # harness.trial.objective.Objective
    noise: Any  # harness.trial.noise.NoiseScale, or None
    control: Any  # harness.trial.autotune.ScheduleControl
    workers: Any  # harness.trial.gossip workers, or None
    stream: Any  # harness.data.stream: the position in the endless stream of epochs
    validate: bool
    # where it is: counters a checkpoint saves and restores
    step: int
    status: str
    train_seconds: float
    wall_seconds: float
    clean_seconds: float
    clean_steps: int
    noise_step: int
    last_lr: float
    initial_loss: float | None
    diverged_step: int | None
    target_hit: dict[str, Any] | None
    valid_hit: dict[str, Any] | None
    eval_every: int
    after_target_every: int
    next_eval: int
    resumed_from_step: int | None
    measurements: list[dict[str, Any]]
    sharpness: float | None
    _loss_sum: float
    _loss_steps: int
