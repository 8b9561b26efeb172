"""Time-to-solution projected onto N data-parallel accelerators.

Steps to target do not depend on the hardware; wall time on this CPU is not what a cluster user
needs. For a batch B on N devices (n = min(N, B) of them get at least one example):

    step time  = (B / n) / throughput                      compute, per device
               + 2 (n - 1) / n * P * bytes / bandwidth      ring all-reduce of the gradient
               + 2 (n - 1) * latency                        ... its 2(n-1) messages
               + overhead                                   per step (launches, optimizer)
    time       = steps to target * step time

``throughput`` is examples per second of one device at the examples it holds, with the **efficient
batch**: the fewest examples per device at which that pace is known to hold. The pace belongs to a
**series** (an optimizer and an arm: ``legw``, ``legw:disadv``, ``tuned:conadv``, ...), never to a
batch size pooled over series: an adversarial arm computes two gradients per step, a decentralized
one gossips, another optimizer does other work, and a pooled pace would credit the slow arms with
the fast ones' speed (the ConAdv study: DisAdv is 2.5x slower per step and ranked fastest when its
pace was pooled with the plain arms'). The spec's ``projection`` says where the pace comes from,
and the report says which was used for each series:

* ``accelerator: measured`` (the default): the sweep's own trials, at the model's own pace (timed
  without the noise measurement, harness.trial.loop): per series, the median examples/s at each batch
  size, interpolated (log-log) at each device's share B/n; the series' smallest batch measured is
  its efficient batch, below which the pace is not known. A series that timed no step borrows the
  pace of a series of the same optimizer and arm whose step is the same computation (``tuned`` and
  the rules: only the LR differs; never AdaScale or AutoWU, whose steps do more), and the report
  says so; with none, it is not projected. With ``throughput_from: results/<a GPU sweep>`` the same
  is read from another sweep of the workload, e.g. one run on a GPU;
* ``accelerator: <name>``: a profile of the accelerator table (``analysis/accelerators.yaml``, or a
  YAML file named by ``BATCHSCALE_ACCELERATORS``): ``throughput`` and ``efficient_batch`` per
  workload, measured on that hardware for the plain model. An arm (augmentation, decentralized
  algorithm) gets that pace times its own pace relative to its plain counterpart's, as measured in
  this sweep (median over batch sizes); an arm this sweep did not time is not projected.

P is the model's parameter count. The model ignores compute/communication overlap, and it keeps
the full throughput where a device would hold fewer examples than the efficient batch: those
projections are marked (``below_efficient``; * in the table), because their time is optimistic.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from analysis.aggregate import Results, rule_of, series_order
from harness.errors import BatchscaleError
from harness.results.store import RAN_TO_END

TABLE = Path(__file__).with_name("accelerators.yaml")

#: methods whose step does more than a rule's (AdaScale measures the noise at every step, AutoWU
#: fits its GP): they never lend their pace to another series, nor borrow one
OWN_STEP = ("adascale", "autowu")

Series = tuple[str, str]  # (optimizer, method) as in the aggregate; method is the arm's label


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
    #: measured examples/s per batch size of one series (``measured``): the pace at each per-device batch
    curve: dict[int, float] | None = None
    #: per series (optimizer, method): its own pace (a ``CostModel`` of this one's link and overhead)
    series: dict[Series, CostModel] = field(default_factory=dict)
    #: per series: where its pace comes from, in words
    pace_source: dict[Series, str] = field(default_factory=dict)

    def for_series(self, optimizer: str, method: str) -> CostModel | None:
        """The model of one series (its own pace), or None when no pace is known for it. A model
        built without per-series paces (an accelerator profile and no arms) is its own."""
        if not self.series:
            return self
        return self.series.get((optimizer, method))

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


def measured_curves(trials: pd.DataFrame) -> dict[Series, pd.Series]:
    """Per series (optimizer, method): the median examples/s per batch size over its finished
    trials, at the model's own pace (timed without the noise measurement, harness.trial.loop) where the
    trials measured it. Never pooled over series: each arm's step costs what it costs."""
    t = trials[trials.status.isin(RAN_TO_END)]
    if t.empty:
        return {}
    pace = t["model_throughput"] if "model_throughput" in t and t["model_throughput"].notna().any() else t.throughput
    t = t.assign(_pace=pace)
    out = {}
    for (o, m), g in t.groupby(["optimizer", "method"], sort=False):
        curve = g._pace.groupby(g.batch_size).median().dropna().sort_index()
        curve = curve[curve > 0]
        if not curve.empty:
            out[(o, m)] = curve
    return out


def measured_curve(trials: pd.DataFrame, optimizer: str, method: str) -> pd.Series:
    """One series' median examples/s per batch size (empty when it timed nothing)."""
    return measured_curves(trials).get((optimizer, method), pd.Series(dtype=float))


def _arm(method: str) -> str:
    """The arm part of a series name: ``tuned:conadv`` -> ``conadv``, ``legw`` -> ''."""
    return method.partition(":")[2]


def _stand_in(curves: dict[Series, pd.Series], optimizer: str, method: str) -> Series | None:
    """A series of the same optimizer and arm whose step is the same computation (the LR differs
    only), to lend its pace to one that timed nothing: the rule counterpart first (``tuned:conadv``
    -> ``legw:conadv``, in the order measured), never AdaScale or AutoWU."""
    if rule_of(method) in OWN_STEP:
        return None
    for o, m in curves:
        if o == optimizer and _arm(m) == _arm(method) and rule_of(m) not in OWN_STEP and m != method:
            return o, m
    return None


def _name(series: Series, several_optimizers: bool) -> str:
    o, m = series
    return f"{o}/{m}" if several_optimizers else m


def _paces(src: Results, wanted: list[Series]) -> tuple[dict[Series, pd.Series], dict[Series, str]]:
    """Each wanted series' curve from ``src`` (its own, or a stand-in's) and how it was got."""
    curves = measured_curves(src.trials)
    several = len({o for o, _ in wanted}) > 1
    out, how = {}, {}
    for s in wanted:
        if s in curves:
            out[s], how[s] = curves[s], "its own trials"
            continue
        other = _stand_in(curves, *s)
        if other is not None:
            out[s] = curves[other]
            how[s] = (f"no step of its own was timed: the pace of {_name(other, several)} (the same computation per "
                      f"step, only the LR differs)")
    return out, how


def _ratio(curves: dict[Series, pd.Series], series: Series) -> tuple[float, Series] | None:
    """An arm's pace relative to its plain counterpart's (same optimizer and rule, no augmentation,
    all-reduce; else any plain rule of the optimizer), median over the batch sizes both timed."""
    o, m = series
    plain = [(o, rule_of(m))] + [(po, pm) for po, pm in curves if po == o and not _arm(pm)
                                 and rule_of(pm) not in OWN_STEP]
    for p in plain:
        if p in curves and series in curves:
            common = curves[series].index.intersection(curves[p].index)
            if len(common):
                return float(np.median(curves[series][common] / curves[p][common])), p
    return None


def _wanted(res: Results) -> list[Series]:
    return [(o, m) for _, o, m in series_order(res)]


Paces = tuple[dict[Series, CostModel], dict[Series, str], str]  # models, how each pace was got, the source


def _measured(res: Results, source_root: str | None, cfg: dict) -> Paces:
    other = source_root is not None
    if other:  # another sweep of the same workload, e.g. a run on a GPU
        from analysis.aggregate import load_results

        src = load_results(source_root)
        if src.meta["workload"]["name"] != res.meta["workload"]["name"]:
            raise BatchscaleError(f"projection.throughput_from: {source_root} ran workload "
                                  f"{src.meta['workload']['name']!r}, not {res.meta['workload']['name']!r}")
    else:
        src = res
    curves, how = _paces(src, _wanted(res))
    if not curves:
        raise BatchscaleError("projection: no trial recorded a throughput")
    env = src.meta.get("environment", {})
    devices = sorted({str(d) for d in src.trials.get("device", pd.Series(["cpu"])).dropna()})
    where = env.get("gpu") if any(d.startswith("cuda") for d in devices) and env.get("gpu") else (
        f"{env.get('cpu', 'this machine')}, {src.meta['spec_resolved'].get('resources', {}).get('cpus', 1)} CPU "
        f"per trial")
    kind = "model-only timing" if "model_throughput" in src.trials and src.trials.model_throughput.notna().any() \
        else "timing includes the noise measurement (older store)"
    models = {s: CostModel(throughput=float(c.max()), efficient_batch=int(c.index.min()),
                           curve={int(b): float(v) for b, v in c.items()}, **cfg) for s, c in curves.items()}
    shown = os.path.relpath(Path(source_root).resolve(), (res.root / "report").resolve()) if other else ""
    whose = f"the trials of the sweep {shown} (a path relative to this report)" if other else "this sweep's trials"
    source = (f"measured: {whose} on {where} "
              f"({', '.join(devices) or 'cpu'}; {kind}): per series (each arm its own), the median examples/s at each "
              f"batch size, interpolated at each device's share of the batch; below a series' smallest batch measured "
              f"(its efficient batch) its pace is not known")
    return models, how, source


def _profile(res: Results, name: str, cfg: dict) -> Paces:
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
    efficient = int(efficient) if efficient else None
    throughput = float(row["throughput"][workload])
    here = measured_curves(res.trials)
    several = len({o for o, _ in _wanted(res)}) > 1
    models, how = {}, {}
    for s in _wanted(res):
        if not _arm(s[1]):  # the plain model: the profile's pace
            models[s] = CostModel(throughput=throughput, efficient_batch=efficient, **cfg)
            how[s] = "the profile's"
            continue
        r = _ratio(here, s)
        if r is None:
            continue  # an arm this sweep did not time against a plain series: its pace is not known
        models[s] = CostModel(throughput=throughput * r[0], efficient_batch=efficient, **cfg)
        how[s] = (f"the profile's x {r[0]:.2f}, its pace relative to {_name(r[1], several)}'s measured in this sweep "
                  f"(median over batch sizes)")
    return models, how, f"accelerator profile {name!r}: {row.get('description', name)}"


def build_model(res: Results) -> tuple[CostModel, dict]:
    """The cost model with one pace per series (``model.for_series(optimizer, method)``), and what it
    used, in words, for the report."""
    cfg = res.meta["spec_resolved"].get("projection") or {}
    params = res.trials["parameters"].dropna() if "parameters" in res.trials else pd.Series(dtype=float)
    if params.empty:
        raise BatchscaleError("projection: this results store has no parameter counts (written by an older batchscale)")
    link = dict(parameters=int(params.iloc[0]), bandwidth_gbps=cfg.get("link_bandwidth_gbps", 100.0),
                latency_us=cfg.get("link_latency_us", 5.0), overhead_ms=cfg.get("step_overhead_ms", 0.5),
                bytes_per_parameter=cfg.get("bytes_per_parameter", 4))
    name = cfg.get("accelerator", "measured")
    if name == "measured":
        models, how, source = _measured(res, cfg.get("throughput_from"), link)
    else:
        models, how, source = _profile(res, name, link)
    wanted = _wanted(res)
    several = len({o for o, _ in wanted}) > 1
    # the model itself carries the first series' pace (in the spec's order), for a caller that wants one
    # model of a single-series sweep; a projection always asks ``for_series``
    first = next((models[s] for s in wanted if s in models), None)
    model = CostModel(throughput=first.throughput if first else math.nan,
                      efficient_batch=first.efficient_batch if first else None,
                      curve=first.curve if first else None, series=models, pace_source=how, **link)

    def pace(s: Series) -> str:
        m = models.get(s)
        if m is None:
            return "not known: not projected"
        text = (f"{m.throughput:,.0f}" if not m.curve else ", ".join(f"{v:,.0f} at B={b}" for b, v in m.curve.items()))
        return text + ("" if how[s] == "its own trials" else f" ({how[s]})")

    efficient = sorted({m.efficient_batch for m in models.values() if m.efficient_batch})
    info = {"throughput source": source,
            "throughput (examples/s per device), per series": "; ".join(f"{_name(s, several)}: {pace(s)}"
                                                                        for s in wanted),
            "efficient batch per device": (", ".join(map(str, efficient)) if efficient else
                                           "not given (no projection is marked)"),
            "parameters": f"{model.parameters:,}", "bytes per parameter": model.bytes_per_parameter,
            "link bandwidth (Gb/s)": model.bandwidth_gbps, "link latency (us)": model.latency_us,
            "step overhead (ms)": model.overhead_ms, "all-reduce": "ring: 2(n-1)/n x bytes / bandwidth + 2(n-1) x latency",
            "what it leaves out": "compute/communication overlap, and the slower per-device pace below the efficient "
                                  "batch (marked *): a projection, not a measurement"}
    return model, info


def project(res: Results, agg: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per (optimizer, method, N), each series at its own pace: the batch size with the least
    projected time to target, that time, the speedup over the base batch of the same series on the
    same N devices, the examples each device holds, whether that is below the series' efficient
    batch, the fastest batch that is not (``trusted_batch``, ``trusted_seconds``: what a claim is
    judged on), and where its pace came from (``pace``)."""
    model, info = build_model(res)
    devices = (res.meta["spec_resolved"].get("projection") or {}).get("devices", [1, 2, 4, 8, 16, 32, 64, 128, 256])
    base = res.base_batch_size
    rows = []
    for (optimizer, method), cells in agg.groupby(["optimizer", "method"]):
        own = model.for_series(optimizer, method)
        reached = cells[np.isfinite(cells.steps_to_target)] if own is not None else cells.iloc[0:0]
        base_row = reached[reached.batch_size == base]
        pace = model.pace_source.get((optimizer, method), "") if own is not None else "not known: not projected"
        for n in devices:
            times = {int(r.batch_size): own.time_to_target(r.steps_to_target, int(r.batch_size), n)
                     for r in reached.itertuples()}
            # the fastest batch whose per-device share keeps the pace the throughput assumes
            kept = {b: t for b, t in times.items() if not own.efficient_batch or b / min(n, b) >= own.efficient_batch}
            trusted = min(kept, key=kept.get) if kept else None
            extra = {"trusted_batch": trusted, "trusted_seconds": kept[trusted] if kept else math.inf, "pace": pace}
            if not times:
                rows.append({"optimizer": optimizer, "method": method, "devices": n, "best_batch": None,
                             "seconds": math.inf, "base_seconds": math.inf, "speedup_vs_base": math.nan,
                             "per_device_batch": math.nan, "below_efficient": False, **extra})
                continue
            best = min(times, key=times.get)
            t_base = own.time_to_target(base_row.steps_to_target.iloc[0], base, n) if len(base_row) else math.inf
            per_device = best / min(n, best)
            rows.append({"optimizer": optimizer, "method": method, "devices": n, "best_batch": best,
                         "seconds": times[best], "base_seconds": t_base,
                         "speedup_vs_base": t_base / times[best] if math.isfinite(t_base) else math.nan,
                         "per_device_batch": per_device,
                         "below_efficient": bool(own.efficient_batch and per_device < own.efficient_batch),
                         **extra})
    return pd.DataFrame(rows), info
