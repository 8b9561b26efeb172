"""A trial's checkpoint: everything needed to continue it bit for bit (model, optimizer, stream
position, RNG states, counters, measurements, and the state of its method, augmentation and
decentralized workers). ``Trial.state_dict`` / ``Trial.load_state_dict`` are these functions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from harness.errors import BatchscaleError

if TYPE_CHECKING:
    from harness.trial.types import TrialView

CHECKPOINT_VERSION = 1


def trial_state(trial: "TrialView") -> dict[str, Any]:
    """Everything a trial needs to continue bit for bit."""
    return {
        "version": CHECKPOINT_VERSION,
        "recipe": trial.recipe.model_dump(mode="json"),
        "micro_batch_size": trial.micro_batch_size,
        "model": trial.model.state_dict(),
        "optimizer": trial.optimizer.state_dict(),
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if trial.device.type == "cuda" else None,
        "counters": {
            "step": trial.step, "position": trial.stream.position, "train_seconds": trial.train_seconds,
            "wall_seconds": trial.wall_seconds, "status": trial.status, "initial_loss": trial.initial_loss,
            "diverged_step": trial.diverged_step, "target_hit": trial.target_hit,
            "valid_hit": trial.valid_hit, "next_eval": trial.next_eval,
            "loss_sum": trial._loss_sum, "loss_steps": trial._loss_steps,
            "clean_seconds": trial.clean_seconds, "clean_steps": trial.clean_steps, "noise_step": trial.noise_step,
            "last_lr": trial.last_lr,  # the LR of the last step, which the next evaluation's row records
        },
        "measurements": list(trial.measurements),
        "noise": trial.noise.state_dict() if trial.noise is not None else None,
        "control": trial.control.state_dict(),
        "objective": trial.objective.state_dict(),
        "workers": trial.workers.state_dict() if trial.workers is not None else None,
        "sharpness": trial.sharpness,
    }

def load_trial_state(trial: "TrialView", state: dict[str, Any]) -> None:
    """Continue ``trial`` from ``trial_state``'s dict; refuses another recipe or micro-batch size."""
    if state.get("version") != CHECKPOINT_VERSION:
        raise BatchscaleError(f"checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}")
    if state["recipe"] != trial.recipe.model_dump(mode="json") or state["micro_batch_size"] != trial.micro_batch_size:
        raise BatchscaleError("checkpoint belongs to a different recipe or micro-batch size; refusing to mix")
    trial.model.load_state_dict(state["model"])
    trial.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] is not None and trial.device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    c = state["counters"]
    trial.step, trial.stream.position = c["step"], c["position"]
    trial.resumed_from_step = trial.step
    trial.train_seconds, trial.wall_seconds, trial.status = c["train_seconds"], c["wall_seconds"], c["status"]
    trial.initial_loss, trial.diverged_step, trial.target_hit = c["initial_loss"], c["diverged_step"], c["target_hit"]
    trial.valid_hit = c.get("valid_hit")
    if trial.target_hit and (trial.valid_hit or not trial.validate):  # past the target: its grid (Trial._record)
        trial.eval_every = max(trial.eval_every, trial.after_target_every)
    trial.next_eval, trial._loss_sum, trial._loss_steps = c["next_eval"], c["loss_sum"], c["loss_steps"]
    trial.clean_seconds, trial.clean_steps = c.get("clean_seconds", 0.0), c.get("clean_steps", 0)
    trial.noise_step = c.get("noise_step", trial.step)
    trial.last_lr = c.get("last_lr", float("nan"))
    trial.measurements = list(state["measurements"])
    if trial.noise is not None:
        trial.noise.load_state_dict(state["noise"])
    trial.control.load_state_dict(state["control"])
    trial.objective.load_state_dict(state.get("objective"), trial.model)
    if trial.workers is not None:
        trial.workers.load_state_dict(state["workers"])
    trial.sharpness = state.get("sharpness")
