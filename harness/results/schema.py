"""The results store's records as types: one row of ``trials.parquet`` (``TrialRecord``) and one of
``measurements.parquet`` (``Measurement``). The Arrow schemas the store writes and reads are derived
from these dataclasses (``arrow_schema``), so a column is declared, typed and documented once.
Every column may be null except the trial's identity; keys a row carries beyond these columns go
to its ``extra`` JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import pyarrow as pa

_ARROW = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


@dataclass
class TrialRecord:
    trial_id: str
    workload: str
    optimizer: str
    method: str
    batch_size: int
    seed: int
    study: str | None = None  # the tuned study the trial belongs to
    status: str | None = None  # harness.results.store.Status
    metric_name: str | None = None
    higher_is_better: bool | None = None
    final_metric: float | None = None  # null when diverged
    best_metric: float | None = None
    peak_lr: float | None = None
    warmup_epochs: float | None = None
    warmup_steps: int | None = None
    total_steps: int | None = None
    steps_per_epoch: float | None = None
    dataset_size: int | None = None
    micro_batch_size: int | None = None  # harness.trial.placement.micro_batch_sizes
    bn_batch_size: int | None = None  # BatchNorm's ghost batch (harness.trial.ghostbn); null: no BatchNorm
    precision: str | None = None  # float32 | bf16 (harness.trial.precision)
    parameters: int | None = None
    steps: int | None = None
    examples_seen: int | None = None
    noise_scale: float | None = None  # B_simple at the end
    train_seconds: float | None = None  # training steps only (evaluation off the clock)
    wall_seconds: float | None = None
    throughput: float | None = None  # examples / train second
    target_reached: bool | None = None
    steps_to_target: int | None = None
    examples_to_target: int | None = None
    seconds_to_target: float | None = None
    diverged_step: int | None = None
    device: str | None = None
    threads: int | None = None
    workers: int | None = None  # data-parallel workers
    augment: str | None = None  # adversarial augmentation: none | disadv | conadv (harness.trial.adversarial)
    dp_algorithm: str | None = None  # data-parallel algorithm: allreduce | dmsgd | decentlam (harness.trial.gossip)
    consensus_distance: float | None = None  # decentralized workers' spread at the last evaluation
    sharpness: float | None = None  # top Hessian eigenvalue at the end (harness.trial.sharpness)
    adascale_mean_gain: float | None = None
    autowu_warmup_steps: int | None = None
    autowu_warmup_epochs: float | None = None
    autowu_peak_lr: float | None = None
    recipe_warnings: str | None = None
    error: str | None = None
    extra: str | None = None  # JSON of everything else


@dataclass
class Measurement:
    trial_id: str
    step: int
    examples: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    metric: float | None = None
    valid_metric: float | None = None  # on the validation split (tuned trials; harness.spec.trial.Validation)
    lr: float | None = None
    train_seconds: float | None = None
    noise_scale: float | None = None
    gain: float | None = None  # AdaScale's gain
    consensus_distance: float | None = None  # (1/K) sum_i |x_i - mean x|^2 of decentralized workers


def arrow_schema(record: type) -> pa.Schema:
    """The Arrow schema of a record dataclass: its fields in order, ``str | None`` -> string, etc."""
    return pa.schema([(f.name, _ARROW[str(f.type).split(" |")[0]]) for f in fields(record)])
