"""Time-to-solution projected onto N data-parallel accelerators.

Steps to target do not depend on the hardware; wall time on this CPU is not what a cluster user
needs. For a batch B on N devices (n = min(N, B) of them get at least one example):

    step time  = (B / n) / throughput                      compute, per device
               + 2 (n - 1) / n * P * bytes / bandwidth      ring all-reduce of the gradient
               + 2 (n - 1) * latency                        ... its 2(n-1) messages
               + overhead                                   per step (launches, optimizer)
    time       = steps to target * step time

``throughput`` is examples per second of one device: ``measured`` takes this sweep's own trials
(the median over trials of examples/s on the trial's resources), or a named row of the accelerator
table (``analysis/accelerators.yaml``; add your own there or in a YAML file named by
``BATCHSCALE_ACCELERATORS``), given per workload. P is the model's parameter count. Everything is
stated in the report with the numbers used. The model ignores compute/communication overlap and
the loss of per-device efficiency at tiny per-device batches: it is a projection, not a measurement.
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

TABLE = Path(__file__).with_name("accelerators.yaml")


@dataclass
class CostModel:
    throughput: float  # examples/s per device
    parameters: int
    bandwidth_gbps: float
    latency_us: float
    overhead_ms: float
    bytes_per_parameter: int = 4

    def allreduce_seconds(self, devices: int) -> float:
        if devices <= 1:
            return 0.0
        size = self.parameters * self.bytes_per_parameter
        return 2 * (devices - 1) / devices * size / (self.bandwidth_gbps * 1e9 / 8) + 2 * (devices - 1) * self.latency_us * 1e-6

    def step_seconds(self, batch: int, devices: int) -> float:
        n = min(devices, batch)
        return batch / n / self.throughput + self.allreduce_seconds(n) + self.overhead_ms * 1e-3

    def time_to_target(self, steps: float, batch: int, devices: int) -> float:
        return steps * self.step_seconds(batch, devices) if math.isfinite(steps) else math.inf


def accelerator_table() -> dict:
    table = yaml.safe_load(TABLE.read_text()) or {}
    extra = os.environ.get("BATCHSCALE_ACCELERATORS")
    if extra:
        table.update(yaml.safe_load(Path(extra).read_text()) or {})
    return table


def throughput_for(res: Results, name: str) -> tuple[float, str]:
    if name == "measured":
        thr = res.trials.throughput.dropna()
        if thr.empty:
            raise BatchscaleError("projection: no trial recorded a throughput")
        env = res.meta.get("environment", {})
        cpus = res.meta["spec_resolved"].get("resources", {}).get("cpus", 1)
        return float(thr.median()), f"measured: median of this sweep's trials ({env.get('cpu', 'this machine')}, {cpus} CPU per trial)"
    table = accelerator_table()
    if name not in table:
        raise BatchscaleError(f"projection.accelerator: {name!r} is not in the accelerator table; allowed: "
                              f"{', '.join(sorted(table))} (add rows to {TABLE} or BATCHSCALE_ACCELERATORS)")
    workload = res.meta["workload"]["name"]
    row = table[name] or {}
    if workload not in (row.get("throughput") or {}):
        raise BatchscaleError(f"projection.accelerator: {name!r} has no throughput for workload {workload!r}; "
                              f"allowed: {', '.join(row.get('throughput') or {}) or 'none'}")
    return float(row["throughput"][workload]), row.get("description", name)


def build_model(res: Results) -> tuple[CostModel, dict]:
    cfg = res.meta["spec_resolved"].get("projection") or {}
    params = res.trials["parameters"].dropna() if "parameters" in res.trials else pd.Series(dtype=float)
    if params.empty:
        raise BatchscaleError("projection: this results store has no parameter counts (written by an older batchscale)")
    throughput, source = throughput_for(res, cfg.get("accelerator", "measured"))
    model = CostModel(throughput=throughput, parameters=int(params.iloc[0]),
                      bandwidth_gbps=cfg.get("link_bandwidth_gbps", 100.0), latency_us=cfg.get("link_latency_us", 5.0),
                      overhead_ms=cfg.get("step_overhead_ms", 0.5), bytes_per_parameter=cfg.get("bytes_per_parameter", 4))
    info = {"throughput source": source, "throughput (examples/s per device)": f"{throughput:,.0f}",
            "parameters": f"{model.parameters:,}", "bytes per parameter": model.bytes_per_parameter,
            "link bandwidth (Gb/s)": model.bandwidth_gbps, "link latency (us)": model.latency_us,
            "step overhead (ms)": model.overhead_ms, "all-reduce": "ring: 2(n-1)/n x bytes / bandwidth + 2(n-1) x latency"}
    return model, info


def project(res: Results, agg: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per (optimizer, method, N): the batch size with the least projected time to target, that time,
    and the speedup over the base batch of the same method on the same N devices."""
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
            if not times:
                rows.append({"optimizer": optimizer, "method": method, "devices": n, "best_batch": None,
                             "seconds": math.inf, "base_seconds": math.inf, "speedup_vs_base": math.nan})
                continue
            best = min(times, key=times.get)
            t_base = model.time_to_target(base_row.steps_to_target.iloc[0], base, n) if len(base_row) else math.inf
            rows.append({"optimizer": optimizer, "method": method, "devices": n, "best_batch": best,
                         "seconds": times[best], "base_seconds": t_base,
                         "speedup_vs_base": t_base / times[best] if math.isfinite(t_base) else math.nan})
    return pd.DataFrame(rows), info
