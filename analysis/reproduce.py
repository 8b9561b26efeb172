"""Judging a paper's claims against a finished sweep.

A paper spec (``experiments/paper/*.yaml``) carries ``claims``: each a kind, parameters, the
claim's words and, where known, the published number. Each is judged on the aggregate and comes
back as ``holds``, ``does not hold`` or ``not measurable``, always with the measured numbers, so
that a claim that fails at our scale is reported as failing, and one that our protocol cannot test
is never reported as failing:

* a batch size whose budget cannot reach the target for any rule (the protocol's pilot says so,
  harness.protocol) is not evidence: a claim that needs it is ``not measurable`` unless it already
  fails at a batch size that could be judged;
* a cell is a clean success only when every seed completed: one diverged seed of three fails it;
* with several seeds, a difference no larger than the seeds' spread (the larger standard deviation
  of the two cells) is not a win;
* a speedup in wall time is only judged where a larger batch can run faster per example (GPUs,
  data-parallel workers); on one CPU core per trial examples/s is flat in B, so it is ``not
  measurable`` there, and claims are judged on steps (``kind: steps``) or on the cost model's
  projection (``kind: projected``).

Kinds (``params``):

* ``within_base``: ``method`` stays within ``tolerance`` of its own base-batch result at every batch
  up to ``max_scale`` x B0 (``relative: true`` for a relative tolerance, e.g. perplexity).
* ``loses_or_diverges``: ``method`` loses more than ``tolerance`` against its base-batch result, or
  diverges, at the largest batch (``at: any`` for any batch of at least ``min_scale`` x B0).
* ``better_than``: ``method`` beats ``other`` by more than ``margin`` at the largest batch (``at:
  all`` for every batch from ``min_scale`` to ``max_scale`` x B0); a diverged run is worse than any
  number, and a difference within the seeds' spread is no win.
* ``smaller_drop``: ``method`` loses less against its own base-batch result than ``other`` loses
  against its own, at the largest batch, by more than ``margin`` and the seeds' spread (ConAdv
  "narrows the accuracy drop").
* ``matches``: ``method`` stays within ``tolerance`` of ``other`` at every batch size the budget
  lets reach the target (DecentLaM "stays with all-reduce").
* ``speedup``: the largest batch reaching the target does so ``min`` times faster than B0
  (``kind: steps``, ``time``, or ``projected``: the projected time on ``devices`` accelerators, the
  batch size fastest there among those that put at least the throughput's efficient batch on each
  device, against B0 on one; ``not measurable`` when no batch that reached the target fills the
  devices that well, since the pace assumed is unknown there) with ``method``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from analysis.aggregate import Results

HOLDS, FAILS, UNMEASURABLE = "holds", "does not hold", "not measurable"
EPS = 1e-9  # tolerances are inclusive: 0.89 - 0.87 is "2 points" although it is 0.0200000000000000018


@dataclass
class Verdict:
    id: str
    text: str
    measured: str
    published: str
    verdict: str


def _cells(agg: pd.DataFrame, method: str, optimizer: str | None) -> pd.DataFrame:
    sub = agg[agg.method == method]
    if optimizer:
        sub = sub[sub.optimizer == optimizer]
    elif sub.optimizer.nunique() > 1:
        sub = sub[sub.optimizer == sub.optimizer.iloc[0]]
    return sub.sort_values("batch_size").set_index("batch_size")


def _value(row) -> float:
    """The cell's mean metric, or NaN when a seed diverged or failed (or none finished): a cell is a
    clean success only when all its seeds completed."""
    return row.final_mean if row.complete > 0 and row.complete == row.seeds else math.nan


def _seeds_note(row) -> str:
    bad = int(row.seeds - row.complete)
    return f" ({bad}/{int(row.seeds)} seeds diverged or failed)" if bad and row.complete else ""


def _feasible(row) -> bool:
    """False only when the protocol's check says the budget cannot reach the target there."""
    v = row.get("feasible")
    return v is None or v != v or bool(v)  # None / NaN: not checked


def _loss(res: Results, base: float, value: float, relative: bool) -> float:
    """How much worse ``value`` is than ``base`` (positive = worse), in the claim's units."""
    diff = (base - value) if res.higher_is_better else (value - base)
    return diff / abs(base) if relative else diff


def _fmt(res: Results, v: float) -> str:
    return "diverged" if math.isnan(v) else (f"{v:.4f}" if res.higher_is_better else f"{v:.2f}")


def judge(res: Results, agg: pd.DataFrame, claim: dict) -> Verdict:
    p = claim.get("params", {})
    kind = claim["kind"]
    fn = {"within_base": _within_base, "loses_or_diverges": _loses_or_diverges, "better_than": _better_than,
          "smaller_drop": _smaller_drop, "matches": _matches, "speedup": _speedup}.get(kind)
    published = claim.get("published") or ""
    if fn is None:
        return Verdict(claim["id"], claim["text"], f"unknown claim kind {kind!r}", published, UNMEASURABLE)
    try:
        measured, ok = fn(res, agg, p)
    except LookupError as e:
        return Verdict(claim["id"], claim["text"], str(e), published, UNMEASURABLE)
    if not res.protocol.get("checked") and res.target:
        measured += "; budgets not checked against the target (no pilot: protocol.pilot false, or an older sweep)"
    verdict = UNMEASURABLE if ok is None else HOLDS if ok else FAILS
    return Verdict(claim["id"], claim["text"], measured, published, verdict)


def _base_row(cells: pd.DataFrame, res: Results, method: str):
    if res.base_batch_size not in cells.index:
        raise LookupError(f"{method} has no result at the base batch {res.base_batch_size}")
    return cells.loc[res.base_batch_size]


def _need(cells: pd.DataFrame, method: str):
    if cells.empty:
        raise LookupError(f"method {method!r} is not in this sweep")


def _unit(res: Results, relative: bool) -> str:
    return "relative" if relative else ("pt" if res.higher_is_better else "")


def _within_base(res, agg, p):
    method, tol, rel = p["method"], float(p.get("tolerance", 0.01)), bool(p.get("relative", False))
    cells = _cells(agg, method, p.get("optimizer"))
    _need(cells, method)
    base = _value(_base_row(cells, res, method))
    scope = cells[(cells.index / res.base_batch_size) <= float(p.get("max_scale", math.inf))]
    unmeasurable = [b for b, row in scope.iterrows() if not _feasible(row)]
    judged = scope.drop(index=unmeasurable)
    if judged.empty:
        raise LookupError(f"no batch size up to {scope.index.max()} can reach the target within its budget")
    worst, worst_b, ok = -math.inf, None, True
    for b, row in judged.iterrows():
        v = _value(row)
        loss = math.inf if math.isnan(v) else _loss(res, base, v, rel)
        ok = ok and bool(loss <= tol + EPS)
        if loss > worst:
            worst, worst_b = loss, b
    v_worst = _value(judged.loc[worst_b])
    k = worst_b / res.base_batch_size
    scale = 100 if (res.higher_is_better and not rel) or rel else 1
    measured = (f"base B={res.base_batch_size}: {_fmt(res, base)}; worst up to {judged.index.max()} "
                f"({judged.index.max() / res.base_batch_size:g}x): B={worst_b} ({k:g}x) {_fmt(res, v_worst)}"
                + ("" if math.isinf(worst) else f" ({-worst * scale:+.2f} {'%' if rel else 'pt'})")
                + _seeds_note(judged.loc[worst_b]))
    if unmeasurable:
        measured += (f"; not measurable at B={', '.join(map(str, unmeasurable))} (the budget cannot reach the "
                     f"target there for any rule)")
        if ok:  # it holds where it can be judged, but the claim's range is not covered
            return measured, None
    return measured, ok


def _loses_or_diverges(res, agg, p):
    method, tol, rel = p["method"], float(p.get("tolerance", 0.01)), bool(p.get("relative", False))
    cells = _cells(agg, method, p.get("optimizer"))
    _need(cells, method)
    base = _value(_base_row(cells, res, method))
    big = cells[(cells.index / res.base_batch_size) >= float(p.get("min_scale", 1))]
    if p.get("at", "largest") == "largest":
        big = big.iloc[[-1]]
    parts, hits, unmeasurable = [], [], []
    for b, row in big.iterrows():
        v = _value(row)
        parts.append(f"B={b} ({b / res.base_batch_size:g}x): {_fmt(res, v)}{_seeds_note(row)}")
        if not _feasible(row):  # losing where no rule could reach the target says nothing
            unmeasurable.append(b)
            parts[-1] += " [budget cannot reach the target: not measurable]"
            continue
        hits.append(bool(math.isnan(v) or _loss(res, base, v, rel) > tol + EPS))
    measured = f"base {_fmt(res, base)}; " + "; ".join(parts)
    if any(hits):
        return measured, True
    return measured, None if unmeasurable else False


def _better_than(res, agg, p):
    a, b_method, margin = p["method"], p["other"], float(p.get("margin", 0.0))
    ca, cb = _cells(agg, a, p.get("optimizer")), _cells(agg, b_method, p.get("optimizer"))
    _need(ca, a)
    _need(cb, b_method)
    common = sorted(set(ca.index) & set(cb.index))
    common = [b for b in common if float(p.get("min_scale", 1)) <= b / res.base_batch_size
              <= float(p.get("max_scale", math.inf))]
    if not common:
        raise LookupError(f"{a} and {b_method} share no batch size of at least {p.get('min_scale', 1)}x B0")
    if p.get("at", "largest") == "largest":
        common = common[-1:]
    verdicts, parts = [], []
    for b in common:
        ra, rb = ca.loc[b], cb.loc[b]
        va, vb = _value(ra), _value(rb)
        part = f"B={b}: {a} {_fmt(res, va)}{_seeds_note(ra)} vs {b_method} {_fmt(res, vb)}{_seeds_note(rb)}"
        if not (_feasible(ra) and _feasible(rb)):
            verdicts.append(None)
            parts.append(part + " [budget cannot reach the target: not measurable]")
            continue
        spread = max((x for x in (ra.final_std, rb.final_std) if x == x), default=0.0)
        if math.isnan(va):
            better = False
        elif math.isnan(vb):
            better = True
        else:
            gain = -_loss(res, vb, va, False)
            better = bool(gain > margin + EPS and gain > spread + EPS)
            if margin + EPS < gain <= spread + EPS:
                part += f" (difference {abs(gain):.4g} within the seeds' spread {spread:.4g}: not a win)"
        verdicts.append(better)
        parts.append(part)
    measured = "; ".join(parts)
    if any(v is False for v in verdicts):
        return measured, False
    return measured, None if any(v is None for v in verdicts) else True


def _pair(res, agg, p):
    a, other = p["method"], p["other"]
    ca, cb = _cells(agg, a, p.get("optimizer")), _cells(agg, other, p.get("optimizer"))
    _need(ca, a)
    _need(cb, other)
    return a, other, ca, cb, sorted(set(ca.index) & set(cb.index))


def _smaller_drop(res, agg, p):
    a, other, ca, cb, common = _pair(res, agg, p)
    b = common[-1] if common else None
    if b is None or b == res.base_batch_size:
        raise LookupError(f"{a} and {other} share no batch size above B0")
    drops, parts = [], []
    for name, cells in ((a, ca), (other, cb)):
        base, big = _value(_base_row(cells, res, name)), _value(cells.loc[b])
        drops.append(math.inf if math.isnan(big) else _loss(res, base, big, False))
        parts.append(f"{name} {_fmt(res, base)} -> {_fmt(res, big)}{_seeds_note(cells.loc[b])}")
    scale = 100 if res.higher_is_better else 1
    measured = (f"B0={res.base_batch_size} -> B={b}: " + "; ".join(parts)
                + "; drops " + " vs ".join("diverged" if math.isinf(d) else f"{d * scale:.2f}" for d in drops))
    if not (_feasible(ca.loc[b]) and _feasible(cb.loc[b])):
        return measured + " [budget cannot reach the target: not measurable]", None
    spread = max((x for x in (ca.loc[b].final_std, cb.loc[b].final_std) if x == x), default=0.0)
    narrower = drops[1] - drops[0]
    ok = bool(narrower > float(p.get("margin", 0.0)) + EPS and (math.isinf(narrower) or narrower > spread + EPS))
    if not ok and narrower > 0:
        measured += f" (narrower by {narrower * scale:.2f}, within the margin or the seeds' spread {spread:.4g})"
    return measured, ok


def _matches(res, agg, p):
    a, other, ca, cb, common = _pair(res, agg, p)
    tol = float(p.get("tolerance", 0.01))
    judged = [b for b in common if _feasible(ca.loc[b]) and _feasible(cb.loc[b])]
    if not judged:
        raise LookupError(f"no batch size where the budget lets {a} and {other} reach the target")
    worst, worst_b = -math.inf, None
    for b in judged:
        va, vb = _value(ca.loc[b]), _value(cb.loc[b])
        gap = math.inf if math.isnan(va) or math.isnan(vb) else abs(va - vb)
        if gap > worst:
            worst, worst_b = gap, b
    scale = 100 if res.higher_is_better else 1
    measured = (f"largest gap at B={worst_b}: {a} {_fmt(res, _value(ca.loc[worst_b]))} vs {other} "
                f"{_fmt(res, _value(cb.loc[worst_b]))}" + ("" if math.isinf(worst) else f" ({worst * scale:.2f})")
                + f" over B={judged[0]}..{judged[-1]}")
    skipped = [b for b in common if b not in judged]
    if skipped:
        measured += f"; not measurable at B={', '.join(map(str, skipped))}"
    ok = bool(worst <= tol + EPS)
    return measured, (None if ok and skipped else ok)


def _speedup(res, agg, p):
    method, need, kind = p["method"], float(p["min"]), p.get("kind", "steps")
    if not res.target:
        raise LookupError("the sweep has no target")
    if kind not in ("steps", "time", "projected"):
        raise LookupError(f"speedup kind {kind!r}; allowed: steps, time, projected")
    cells = _cells(agg, method, p.get("optimizer"))
    _need(cells, method)
    if kind == "time" and _one_cpu_core_per_trial(res):
        raise LookupError("wall time on one CPU core per trial: examples/s is flat in the batch size, so a time "
                          "speedup cannot appear by construction; judge it on steps or on the projected time")
    if kind == "projected":
        return _projected_speedup(res, agg, method, need, p)
    col = "speedup_steps" if kind == "steps" else "speedup_time"
    reached = cells[cells[col].notna()]
    if reached.empty:
        if not all(_feasible(r) for _, r in cells.iterrows() if r.name != res.base_batch_size):
            raise LookupError(f"{method} reached the target at no larger batch size, and the budget cannot reach it "
                              f"at B={', '.join(str(b) for b, r in cells.iterrows() if not _feasible(r))}")
        return f"{method} reached the target at no batch size", False
    b = reached.index.max()
    value = reached.loc[b, col]
    measured = f"B={b} ({b / res.base_batch_size:g}x) reaches the target {value:.2f}x faster ({kind}) than B0"
    beyond = [int(x) for x, r in cells.iterrows() if x > b and not _feasible(r)]
    if value < need - EPS and beyond:  # the larger batches that might show it could not reach the target
        return measured + (f"; not measurable beyond: the budget cannot reach the target at B="
                           f"{', '.join(map(str, beyond))}"), None
    return measured, bool(value >= need - EPS)


def _one_cpu_core_per_trial(res) -> bool:
    t = res.trials

    def column(name, default):  # older stores lack some columns
        return t[name] if name in t else pd.Series(default, index=t.index)

    on_cpu = not column("device", "cpu").astype(str).str.startswith("cuda").any()
    return bool(on_cpu and (column("workers", 1).fillna(1) <= 1).all() and (column("threads", 1).fillna(1) <= 1).all())


def _projected_speedup(res, agg, method, need, p):
    from analysis.costmodel import project

    devices = int(p.get("devices", 64))
    proj, _ = project(res, agg)
    rows = proj[(proj.method == method) & (proj.devices == devices)]
    if rows.empty:
        raise LookupError(f"no projection for {method} on {devices} devices (projection.devices)")
    row = rows.iloc[0]
    one = proj[(proj.method == method) & (proj.devices == 1)]
    if not math.isfinite(row.seconds) or one.empty or not math.isfinite(one.iloc[0].base_seconds):
        return f"{method} reached the target at no batch size (or not at B0)", False
    base = one.iloc[0].base_seconds
    if not math.isfinite(row.trusted_seconds):
        # every batch that reached the target would starve the devices: the pace assumed is unknown there
        value = base / row.seconds
        return (f"projected: B={int(row.best_batch)} on {devices} devices would be {value:.2f}x faster than "
                f"B0={res.base_batch_size} on one device, but with {row.per_device_batch:g} examples per device, "
                f"below the efficient batch of the throughput (cost model in the report), at which its pace is "
                f"not known; no batch that reached the target fills {devices} devices"), None
    value = base / row.trusted_seconds
    note = ("" if row.trusted_batch == row.best_batch else
            f" (the faster B={int(row.best_batch)} would starve the devices and is not counted)")
    return (f"projected: B={int(row.trusted_batch)} on {devices} devices reaches the target {value:.2f}x faster than "
            f"B0={res.base_batch_size} on one device (cost model in the report){note}"), value >= need - EPS


def judge_all(res: Results, agg: pd.DataFrame) -> list[Verdict]:
    return [judge(res, agg, c) for c in res.meta["spec_resolved"].get("claims", [])]


def verdict_table(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": v.text, "measured": v.measured, "published": v.published or "—",
                          "verdict": v.verdict} for v in verdicts], index=[v.id for v in verdicts])
