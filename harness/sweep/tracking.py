"""Experiment tracking: every trial's config and measurements, as they arrive, to the tools
researchers compare runs in (TensorBoard, MLflow, Weights & Biases), through their own APIs.

``TrackingCallback`` is a Tune callback of the driver: each evaluation a trial reports is sent once
(a resumed trial continues its run; its earlier evaluations are not sent again), with the trial's
step as the x axis and its examples seen and epoch beside it; its parameters are the resolved recipe
it ran with (every arm's LR and warmup, micro-batch, budget); when the trial ends its summary
(status, final metric, steps to the target) is sent and its run closed: FINISHED when complete,
FAILED when diverged or in error, KILLED when unfinished. The results store stays the source of truth; tracking is a view of it
for those tools. Which tools: the spec's ``tracking`` section or ``--tracking``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray import tune

from harness.errors import BatchscaleError
from harness.results.store import Status

#: measurement columns sent as scalars (the workload's metric is sent under its own name)
SCALARS = ("train_loss", "eval_loss", "lr", "noise_scale", "gain")
#: the other x axes, sent as values beside each evaluation (MLflow and W&B plot against them;
#: TensorBoard gets ``by_examples/`` copies of the curves)
AXES = ("examples", "epoch")
#: summary fields sent when a trial ends
FINAL = ("final_metric", "best_metric", "steps", "steps_to_target", "examples_to_target", "seconds_to_target",
         "train_seconds", "throughput", "diverged_step", "sharpness", "consensus_distance")


def params_of(config: dict[str, Any], resolved: dict[str, Any] | None = None) -> dict[str, Any]:
    """A trial's parameters for a tracking tool, flat: its identity, its spec's recipe, and the
    recipe it resolved to and ran with (``resolved``, reported by the trainable: peak and realised
    LR, warmup epochs and steps, micro-batch, the protocol's step budget), for every arm."""
    t = config["trial"]
    out = {k: t.get(k) for k in ("workload", "optimizer", "method", "batch_size", "seed", "micro_batch_size")}
    out.update({f"recipe.{k}": v for k, v in (t.get("recipe") or {}).items() if not isinstance(v, dict)})
    out.update({k: config[k] for k in ("peak_lr", "warmup_epochs", "study") if config.get(k) is not None})
    out.update({k: v for k, v in (resolved or {}).items() if v is not None})
    out["augment"] = (t.get("augment") or {}).get("kind")
    out["data_parallel.algorithm"] = (t.get("data_parallel") or {}).get("algorithm")
    out["trial_id"] = config["trial_id"]
    return {k: v for k, v in out.items() if v is not None}


class TensorBoard:
    def __init__(self, root: Path):
        from tensorboardX import SummaryWriter

        self.root, self.writer_class, self.writers, self.params = root, SummaryWriter, {}, {}

    def start(self, trial_id: str, params: dict[str, Any]) -> None:
        w = self.writers[trial_id] = self.writer_class(str(self.root / trial_id))
        w.add_text("config", json.dumps(params, indent=1, default=str))
        self.params[trial_id] = params

    def log(self, trial_id: str, step: int, values: dict[str, float]) -> None:
        w = self.writers[trial_id]
        for k, v in values.items():
            w.add_scalar(k, v, global_step=step)
        if "examples" in values:  # the same curves against examples seen: batch sizes on one axis
            for k, v in values.items():
                if k not in AXES:
                    w.add_scalar(f"by_examples/{k}", v, global_step=int(values["examples"]))

    def finish(self, trial_id: str, status: str, final: dict[str, float]) -> None:
        from tensorboardX.summary import hparams

        w = self.writers.pop(trial_id)
        for k, v in final.items():
            w.add_scalar(f"final/{k}", v)
        w.add_text("status", status)
        # the HParams dashboard: this run's parameters against its final numbers
        hp = {k: v for k, v in {**self.params.pop(trial_id, {}), "status": str(status)}.items()
              if isinstance(v, (int, float, str, bool))}
        for summary in hparams(hp, {f"final/{k}": v for k, v in final.items()}):
            w._get_file_writer().add_summary(summary)
        w.close()


class MLflow:
    def __init__(self, uri: str, experiment: str):
        import logging

        from mlflow import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        self.client, self.runs = MlflowClient(tracking_uri=uri), {}
        found = self.client.get_experiment_by_name(experiment)
        self.experiment = found.experiment_id if found else self.client.create_experiment(experiment)

    def start(self, trial_id: str, params: dict[str, Any]) -> None:
        old = self.client.search_runs([self.experiment], filter_string=f"tags.trial_id = '{trial_id}'")
        if old:  # a trial continued after an interrupted sweep: the same run goes on
            self.runs[trial_id] = old[0].info.run_id
            self.client.update_run(old[0].info.run_id, status="RUNNING")
            return
        run = self.client.create_run(self.experiment, run_name=trial_id, tags={"trial_id": trial_id})
        self.runs[trial_id] = run.info.run_id
        for k, v in params.items():
            self.client.log_param(run.info.run_id, k, v)

    def log(self, trial_id: str, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.runs[trial_id], metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def finish(self, trial_id: str, status: str, final: dict[str, float]) -> None:
        run = self.runs.pop(trial_id)
        for k, v in final.items():
            self.client.log_metric(run, f"final_{k}", v)
        self.client.set_tag(run, "status", status)
        # a diverged trial is a result of the study, and a failed run: FAILED, like an error
        self.client.set_terminated(run, "FINISHED" if status == Status.COMPLETE else
                                   ("KILLED" if status == Status.INCOMPLETE else "FAILED"))


class Wandb:
    def __init__(self, root: Path, project: str, mode: str | None):
        try:
            import wandb
        except ImportError:
            raise BatchscaleError("tracking.wandb: the wandb package is not installed; pip install wandb") from None
        self.wandb, self.root, self.project, self.mode, self.runs = wandb, root, project, mode, {}

    def start(self, trial_id: str, params: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.runs[trial_id] = self.wandb.init(project=self.project, name=trial_id, id=trial_id, resume="allow",
                                              config=params, dir=str(self.root), mode=self.mode,
                                              reinit="create_new")

    def log(self, trial_id: str, step: int, values: dict[str, float]) -> None:
        self.runs[trial_id].log(values, step=step)

    def finish(self, trial_id: str, status: str, final: dict[str, float]) -> None:
        run = self.runs.pop(trial_id)
        run.summary.update({**final, "status": str(status)})
        run.finish(exit_code=0 if status == Status.COMPLETE else 1)  # diverged and errors: failed runs


def sinks(tracking, root: Path, name: str) -> list:
    """The tracking tools a spec's ``tracking`` section turns on, ready to receive."""
    out = []
    if tracking.tensorboard:
        out.append(TensorBoard(root / "tensorboard"))
    if tracking.mlflow:
        try:
            out.append(MLflow(tracking.mlflow_tracking_uri or f"sqlite:///{(root / 'mlflow.db').resolve()}",
                              tracking.mlflow_experiment or name))
        except ImportError:
            raise BatchscaleError("tracking.mlflow: the mlflow package is not installed; "
                                  "pip install 'batchscale[tracking]'") from None
    if tracking.wandb:
        out.append(Wandb(root / "wandb", tracking.wandb_project or name, tracking.wandb_mode))
    return out


class TrackingCallback(tune.Callback):
    """Sends each trial's new evaluations to every sink, and its summary when it ends."""

    def __init__(self, sinks: list, metric: str):
        self.sinks, self.metric = sinks, metric
        self.sent: dict[str, int] = {}  # trial_id -> evaluations already sent

    def __reduce__(self):  # pickled into tuner.pkl only, never read back
        return TrackingCallback, ([], self.metric)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        tid = trial.config["trial_id"]
        if tid not in self.sent:
            for s in self.sinks:
                s.start(tid, params_of(trial.config, json.loads(result.get("recipe") or "{}")))
            self.sent[tid] = 0
        rows = json.loads(result.get("measurements") or "[]")
        for row in rows[self.sent[tid]:]:
            values = {self.metric: row.get("metric"), **{k: row.get(k) for k in SCALARS + AXES}}
            values = {k: float(v) for k, v in values.items() if v is not None and v == v}
            for s in self.sinks:
                s.log(tid, int(row["step"]), values)
        self.sent[tid] = max(self.sent[tid], len(rows))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._finish(trial, (trial.last_result or {}).get("trial_status", Status.INCOMPLETE))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._finish(trial, Status.ERROR)

    def _finish(self, trial, status) -> None:
        tid = trial.config["trial_id"]
        if tid not in self.sent:  # it ended before its first evaluation (an error): still a run
            for s in self.sinks:
                s.start(tid, params_of(trial.config))
        summary = json.loads((trial.last_result or {}).get("summary") or "{}")
        final = {k: float(summary[k]) for k in FINAL if isinstance(summary.get(k), (int, float))
                 and not isinstance(summary.get(k), bool) and summary[k] == summary[k]}
        status = Status.INCOMPLETE if status == "running" else status
        for s in self.sinks:
            s.finish(tid, status, final)
        self.sent.pop(tid, None)

    def close(self) -> None:
        """At the end of a run: trials that did not end close their runs as unfinished."""
        for tid in list(self.sent):
            for s in self.sinks:
                s.finish(tid, Status.INCOMPLETE, {})
        self.sent.clear()
