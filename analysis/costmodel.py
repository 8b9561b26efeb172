"""Time-to-solution projected onto N data-parallel accelerators.

Steps to target do not depend on the hardware; wall time on this CPU is not what a cluster user
needs. For a batch B on N devices (n = min(N, B) of them get at least one example):

    step time  = (B / n) / throughput                      compute, per device
               + 2 (n - 1) / n * P * bytes / bandwidth      ring all-reduce of the gradient
               + 2 (n - 1) * latency                        ... its 2(n-1) messages
               + overhead                                   per step (launches, optimizer)
    time       = steps to target * step time

``throughput`` is examples per second of one device at the examples it holds, with the **efficient
batch**: the fewest examples per device at which that pace is known to hold. The spec's
``projection`` says where both come from, and the report says which was used:

* ``accelerator: measured`` (the default): the sweep's own trials, at the model's own pace (timed
  without the noise measurement, harness.trial): the median examples/s at each batch size,
  interpolated (log-log) at each device's share B/n; the smallest batch measured is the efficient
  batch, below which the pace is not known. With
  ``throughput_from: results/<a GPU sweep>`` the same is read from another sweep of the workload,
  e.g. one run on a GPU;
* ``accelerator: <name>``: a profile of the accelerator table (``analysis/accelerators.yaml``, or a
  YAML file named by ``BATCHSCALE_ACCELERATORS``): ``throughput`` and ``efficient_batch`` per
  workload, measured on that hardware.

P is the model's parameter count. The model ignores compute/communication overlap, and it keeps
the full throughput where a device would hold fewer examples than the efficient batch: those
projections are marked (``below_efficient``; * in the table), because their time is optimistic.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis.aggregate import Results
from harness.errors import BatchscaleError
from harness.store import RAN_TO_END

TABLE = Path(__file__).with_name("accelerators.yaml")


@dataclass
class CostModel:
    throughput: float  # examples/s per device
    parameters: int
    bandwidth_gbps: float
    latency_us: float
    overhead_ms: float
    bytes_per_parameter: int = 4
    #: examples per device below which ``throughput`` is not reached (None: not known)
    efficient_batch: int | None = None
    #: measured examples/s per batch size (``measured``): the pace at each per-device batch
    curve: dict[int, float] | None = None

    def allreduce_seconds(self, devices: int) -> float:
        if devices <= 1:
            return 0.0
        size = self.parameters * self.bytes_per_parameter
        return 2 * (devices - 1) / devices * size / (self.bandwidth_gbps * 1e9 / 8) + 2 * (devices - 1) * self.latency_us * 1e-6

    def device_throughput(self, per_device: float) -> float:
        """Examples/s of one device holding ``per_device`` examples: the measured curve where there
        is one (log-log interpolation; its end values outside it), else the profile's throughput."""
        if not self.curve:
            return self.throughput
        b = np.log([k for k in sorted(self.curve)])
        t = np.log([self.curve[k] for k in sorted(self.curve)])
        return float(np.exp(np.interp(math.log(per_device), b, t)))

    def step_seconds(self, batch: int, devices: int) -> float:
        n = min(devices, batch)
        return batch / n / self.device_throughput(batch / n) + self.allreduce_seconds(n) + self.overhead_ms * 1e-3

    def time_to_target(self, steps: float, batch: int, devices: int) -> float:
        return steps * self.step_seconds(batch, devices) if math.isfinite(steps) else math.inf


def accelerator_table() -> dict:
    table = yaml.safe_load(TABLE.read_text()) or {}
    extra = os.environ.get("BATCHSCALE_ACCELERATORS")
    if extra:
        table.update(yaml.safe_load(Path(extra).read_text()) or {})
    return table


def measured_curve(trials: pd.DataFrame) -> pd.Series:
    """Median examples/s per batch size over finished trials, at the model's own pace (timed without
    the noise measurement, harness.trial) where the trials measured it."""
    t = trials[trials.status.isin(RAN_TO_END)]
    pace = t["model_throughput"] if "model_throughput" in t and t["model_throughput"].notna().any() else t.throughput
    return pace.groupby(t.batch_size).median().dropna().sort_index()


def throughput_for(res: Results, name: str, source_root: str | None = None
                   ) -> tuple[float, int | None, str, dict[int, float] | None]:
    """(examples/s per device, its efficient batch per device or None, where both come from, and the
    measured curve per batch size for ``measured``)."""
    if name == "measured":
        other = source_root is not None
        if other:  # another sweep of the same workload, e.g. a run on a GPU
            from analysis.aggregate import load_results

            src = load_results(source_root)
            if src.meta["workload"]["name"] != res.meta["workload"]["name"]:
                raise BatchscaleError(f"projection.throughput_from: {source_root} ran workload "
                                      f"{src.meta['workload']['name']!r}, not {res.meta['workload']['name']!r}")
        else:
            src = res
        curve = measured_curve(src.trials)
        if curve.empty:
            raise BatchscaleError("projection: no trial recorded a throughput")
        top = float(curve.max())
        efficient = int(curve.index.min())  # below the smallest batch measured, its pace is a guess
        env = src.meta.get("environment", {})
        devices = sorted({str(d) for d in src.trials.get("device", pd.Series(["cpu"])).dropna()})
        where = env.get("gpu") if any(d.startswith("cuda") for d in devices) and env.get("gpu") else (
            f"{env.get('cpu', 'this machine')}, {src.meta['spec_resolved'].get('resources', {}).get('cpus', 1)} CPU "
            f"per trial")
        kind = "model-only timing" if "model_throughput" in src.trials and src.trials.model_throughput.notna().any() \
            else "timing includes the noise measurement (older store)"
        return top, efficient, (f"measured: {'the sweep ' + str(source_root) if other else 'this sweep'}'s trials on "
                                f"{where} ({', '.join(devices) or 'cpu'}; {kind}): the median examples/s at each "
                                f"batch size, interpolated at each device's share of the batch; below B={efficient}, "
                                f"the smallest measured, it is not known"), {int(b): float(v) for b, v in curve.items()}

    table = accelerator_table()
    if name not in table:
        raise BatchscaleError(f"projection.accelerator: {name!r} is not in the accelerator table; allowed: "
                              f"{', '.join(sorted(table))} (add rows to {TABLE} or BATCHSCALE_ACCELERATORS)")
    workload = res.meta["workload"]["name"]
    row = table[name] or {}
    if workload not in (row.get("throughput") or {}):
        raise BatchscaleError(f"projection.accelerator: {name!r} has no throughput for workload {workload!r}; "
                              f"allowed: {', '.join(row.get('throughput') or {}) or 'none'}")
    efficient = row.get("efficient_batch")
    efficient = efficient.get(workload) if isinstance(efficient, dict) else efficient
    return (float(row["throughput"][workload]), int(efficient) if efficient else None,
            f"accelerator profile {name!r}: {row.get('description', name)}", None)


def build_model(res: Results) -> tuple[CostModel, dict]:
    cfg = res.meta["spec_resolved"].get("projection") or {}
    params = res.trials["parameters"].dropna() if "parameters" in res.trials else pd.Series(dtype=float)
    if params.empty:
        raise BatchscaleError("projection: this results store has no parameter counts (written by an older batchscale)")
    throughput, efficient, source, curve = throughput_for(res, cfg.get("accelerator", "measured"),
                                                          cfg.get("throughput_from"))
    model = CostModel(throughput=throughput, parameters=int(params.iloc[0]),
                      bandwidth_gbps=cfg.get("link_bandwidth_gbps", 100.0), latency_us=cfg.get("link_latency_us", 5.0),
                      overhead_ms=cfg.get("step_overhead_ms", 0.5), bytes_per_parameter=cfg.get("bytes_per_parameter", 4),
                      efficient_batch=efficient, curve=curve)
    info = {"throughput source": source,
            "throughput (examples/s per device)": (f"{throughput:,.0f}" if not curve else
                                                   ", ".join(f"{v:,.0f} at B={b}" for b, v in curve.items())),
            "efficient batch per device": efficient if efficient else "not given (no projection is marked)",
            "parameters": f"{model.parameters:,}", "bytes per parameter": model.bytes_per_parameter,
            "link bandwidth (Gb/s)": model.bandwidth_gbps, "link latency (us)": model.latency_us,
            "step overhead (ms)": model.overhead_ms, "all-reduce": "ring: 2(n-1)/n x bytes / bandwidth + 2(n-1) x latency",
            "what it leaves out": "compute/communication overlap, and the slower per-device pace below the efficient "
                                  "batch (marked *): a projection, not a measurement"}
    return model, info


def project(res: Results, agg: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per (optimizer, method, N): the batch size with the least projected time to target, that time,
    the speedup over the base batch of the same method on the same N devices, the examples each
    device holds, whether that is below the throughput's efficient batch, and the fastest batch that
    is not (``trusted_batch``, ``trusted_seconds``: what a claim is judged on)."""
    model, info = build_model(res)
    devices = (res.meta["spec_resolved"].get("projection") or {}).get("devices", [1, 2, 4, 8, 16, 32, 64, 128, 256])
    base = res.base_batch_size
    rows = []
    for (optimizer, method), cells in agg.groupby(["optimizer", "method"]):
        reached = cells[np.isfinite(cells.steps_to_target)]
        base_row = reached[reached.batch_size == base]
        for n in devices:
            times = {int(r.batch_size): model.time_to_target(r.steps_to_target, int(r.batch_size), n)
                     for r in reached.itertuples()}
            # the fastest batch whose per-device share keeps the pace the throughput assumes
            kept = {b: t for b, t in times.items() if not model.efficient_batch or b / min(n, b) >= model.efficient_batch}
            trusted = min(kept, key=kept.get) if kept else None
            extra = {"trusted_batch": trusted, "trusted_seconds": kept[trusted] if kept else math.inf}
            if not times:
                rows.append({"optimizer": optimizer, "method": method, "devices": n, "best_batch": None,
                             "seconds": math.inf, "base_seconds": math.inf, "speedup_vs_base": math.nan,
                             "per_device_batch": math.nan, "below_efficient": False, **extra})
                continue
            best = min(times, key=times.get)
            t_base = model.time_to_target(base_row.steps_to_target.iloc[0], base, n) if len(base_row) else math.inf
            per_device = best / min(n, best)
            rows.append({"optimizer": optimizer, "method": method, "devices": n, "best_batch": best,
                         "seconds": times[best], "base_seconds": t_base,
                         "speedup_vs_base": t_base / times[best] if math.isfinite(t_base) else math.nan,
                         "per_device_batch": per_device,
                         "below_efficient": bool(model.efficient_batch and per_device < model.efficient_batch),
                         **extra})
    return pd.DataFrame(rows), info
