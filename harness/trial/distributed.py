"""Data-parallel trials: one trial as W workers of Ray Train's ``TorchTrainer``.

Ray Train starts the workers (one CPU or GPU share each, from the spec's ``resources``) and the
torch.distributed process group (gloo on CPU, nccl on GPU). Every worker runs the same trial loop
(``harness.trial.loop.Trial`` with ``world=(rank, W)``): it draws the same examples as a single process
would, trains on its share (``batch_size / W``, in micro-batches), and once per step the gradients,
the loss and the noise-scale sums are all-reduced before the identical update on every worker. So
the update equals the single-process one up to float rounding (``tests/test_distributed.py``), the
noise scale is measured over all W shares, and every decision (divergence, target, AutoWU) is the
same on every worker. Evaluation splits the held-out batches over the workers and sums.

With ``data_parallel.algorithm`` dmsgd or decentlam the workers do not all-reduce: each exchanges
its vector with its neighbours only (harness.trial.gossip.NeighbourWorkers), and every rank checkpoints
its own parameters and momentum.

The reduction (harness.trial.collectives) is one all-reduce of the flattened gradients per step, after
local accumulation:
what ``DistributedDataParallel`` does under ``no_sync()`` plus a final synchronising backward,
without the wrapper, because the noise-scale estimator needs each worker's own micro-batch
gradients before the reduction.

Inside a sweep, the Tune trial launches the ``TorchTrainer`` and Ray Train's ``TuneReportCallback``
passes the workers' reports (rank 0's) on to Tune; rank 0 checkpoints through Ray Train, which
hands a relaunched run of the same name its latest checkpoint. ``batchscale train`` runs the same
``TorchTrainer`` on an embedded Ray.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch

from harness.plugins import forwarded_env

# --- Ray Train ------------------------------------------------------------------------------------


def worker_loop(config: dict[str, Any]) -> None:
    """One worker of a data-parallel trial (runs in a Ray Train worker)."""
    import ray.train

    from harness.spec import TrialSpec
    from harness.trial.loop import Trial
    from harness.trial.objective import report_metrics, worst_objective

    os.environ.update(config.get("env") or {})  # the sweep's BATCHSCALE_ variables, on any Ray
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    spec = TrialSpec.model_validate(config["trial"])
    device = None
    if torch.cuda.is_available() and spec.device != "cpu":
        import ray.train.torch

        device = ray.train.torch.get_device()
        torch.cuda.set_device(device)
    trial = Trial(spec, world=(rank, world), device=device)
    # all-reduce workers are identical: rank 0 saves for all; decentralized ones each save their own
    # state, and Ray Train merges the ranks' files into one checkpoint folder
    own_state = trial.workers is not None
    filename = f"trial-rank{rank}.pt" if own_state else "trial.pt"
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trial.load_state_dict(torch.load(Path(folder) / filename, weights_only=False))
    worst = worst_objective(trial.workload.higher_is_better)
    steps_budget = config.get("objective_steps_budget")  # a steps_to_result study's objective

    def report(metrics: dict[str, Any], with_checkpoint: bool) -> None:
        if (rank == 0 or own_state) and with_checkpoint:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(trial.state_dict(), Path(folder) / filename)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:  # every worker reports (Ray Train collects one report per worker); rank 0's is used
            ray.train.report(metrics)

    result = trial.run(on_eval=lambda t, row: report(
        report_metrics(t.measurements, t.summary(), "running", worst, steps_budget), with_checkpoint=True))
    # with a checkpoint too: a Train result's metrics are those of its latest checkpoint
    report(report_metrics(result.measurements, result.summary, result.status, worst, steps_budget),
           with_checkpoint=True)


def trainer(trial_fields: dict[str, Any], workers: int, cpus: float, gpus: float, name: str, storage: str,
            callbacks: list | None = None, steps_budget: int | None = None):
    """The ``TorchTrainer`` of one data-parallel trial (its run folder: ``storage/name``);
    ``steps_budget``: the trial belongs to a steps_to_result study (its objective is steps)."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    return TorchTrainer(
        worker_loop,
        train_loop_config={"trial": trial_fields, "objective_steps_budget": steps_budget,
                           "env": forwarded_env()},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=bool(gpus), resources_per_worker=per_worker),
        run_config=RunConfig(name=name, storage_path=storage, callbacks=callbacks or [],
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
    )


def fit(trainer):
    """``trainer.fit()``, then this process's own SIGINT handler back: Ray Train's fit installs one
    that aborts its run and leaves it installed (``DataParallelTrainer._register_sigint_handler``,
    Ray 2.60), so a later Ctrl-C would call a finished run's controller (starting a Ray to do so)
    instead of raising KeyboardInterrupt."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    try:
        return trainer.fit()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def run_in_tune(trial_fields: dict[str, Any], trial_id: str, workers: int, cpus: int, gpus: float,
                steps_budget: int | None = None) -> None:
    """Called by the sweep's Tune trial: run the workers, their reports go to Tune. The run is
    named by the sweep's trial id, so a rerun of the sweep continues it from its latest checkpoint."""
    from ray.tune.integration.ray_train import TuneReportCallback

    storage = os.environ["BATCHSCALE_TRAIN_STORAGE"]  # set by the sweep for its Ray workers
    name = f"dp-{trial_id}"
    result = fit(trainer(trial_fields, workers, cpus, gpus, name, storage, [TuneReportCallback()], steps_budget))
    _drop_run(result)


def run_standalone(trial_fields: dict[str, Any], workers: int, cpus: int, gpus: float, storage: str) -> dict:
    """``batchscale train`` of a data-parallel trial: an embedded Ray, then the final report."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    try:
        result = fit(trainer(trial_fields, workers, cpus, gpus, "train-dp", storage))
        if result.error:
            raise result.error
        metrics = dict(result.metrics)
        _drop_run(result)
        return {"measurements": json.loads(metrics["measurements"]), "summary": json.loads(metrics["summary"])}
    finally:
        if started:
            ray.shutdown()


def _drop_run(result) -> None:
    """The run's checkpoints are not needed once its final report is out."""
    try:
        result.filesystem.delete_dir(result.path)
    except (OSError, AttributeError):
        pass  # informative cleanup only
