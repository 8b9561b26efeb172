"""Judging a paper's claims against a finished sweep.

A paper spec (``experiments/paper/*.yaml``) carries ``claims``: each a kind, parameters, the
claim's words and, where known, the published number. Each is judged on the aggregate and comes
back as ``holds``, ``does not hold`` or ``not measurable`` (e.g. a method missing from the sweep),
always with the measured numbers, so that a claim that fails at our scale is reported as failing.

Kinds (``params``):

* ``within_base``: ``method`` stays within ``tolerance`` of its own base-batch result at every batch
  up to ``max_scale`` x B0 (``relative: true`` for a relative tolerance, e.g. perplexity).
* ``loses_or_diverges``: ``method`` loses more than ``tolerance`` against its base-batch result, or
  diverges, at the largest batch (``at: any`` for any batch of at least ``min_scale`` x B0).
* ``better_than``: ``method`` beats ``other`` by more than ``margin`` at the largest batch (``at:
  all`` for every batch of at least ``min_scale`` x B0); a diverged run is worse than any number.
* ``speedup``: the largest batch reaching the target does so ``min`` times faster than B0
  (``kind: steps`` or ``time``) with ``method``.
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
    """The cell's mean metric, or NaN when it diverged (or has no finished seed)."""
    return row.final_mean if row.complete > 0 else math.nan


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
          "speedup": _speedup}.get(kind)
    published = claim.get("published") or ""
    if fn is None:
        return Verdict(claim["id"], claim["text"], f"unknown claim kind {kind!r}", published, UNMEASURABLE)
    try:
        measured, ok = fn(res, agg, p)
    except LookupError as e:
        return Verdict(claim["id"], claim["text"], str(e), published, UNMEASURABLE)
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
    worst, worst_b, ok = -math.inf, None, True
    for b, row in scope.iterrows():
        v = _value(row)
        loss = math.inf if math.isnan(v) else _loss(res, base, v, rel)
        ok &= loss <= tol + EPS
        if loss > worst:
            worst, worst_b = loss, b
    v_worst = _value(scope.loc[worst_b])
    k = worst_b / res.base_batch_size
    scale = 100 if (res.higher_is_better and not rel) or rel else 1
    measured = (f"base B={res.base_batch_size}: {_fmt(res, base)}; worst up to {scope.index.max()} "
                f"({scope.index.max() / res.base_batch_size:g}x): B={worst_b} ({k:g}x) {_fmt(res, v_worst)}"
                + ("" if math.isinf(worst) else f" ({-worst * scale:+.2f} {'%' if rel else 'pt'})"))
    return measured, ok


def _loses_or_diverges(res, agg, p):
    method, tol, rel = p["method"], float(p.get("tolerance", 0.01)), bool(p.get("relative", False))
    cells = _cells(agg, method, p.get("optimizer"))
    _need(cells, method)
    base = _value(_base_row(cells, res, method))
    big = cells[(cells.index / res.base_batch_size) >= float(p.get("min_scale", 1))]
    if p.get("at", "largest") == "largest":
        big = big.iloc[[-1]]
    parts, hits = [], []
    for b, row in big.iterrows():
        v = _value(row)
        lost = math.isnan(v) or _loss(res, base, v, rel) > tol + EPS
        hits.append(lost)
        parts.append(f"B={b} ({b / res.base_batch_size:g}x): {_fmt(res, v)}")
    return f"base {_fmt(res, base)}; " + "; ".join(parts), any(hits)


def _better_than(res, agg, p):
    a, b_method, margin = p["method"], p["other"], float(p.get("margin", 0.0))
    ca, cb = _cells(agg, a, p.get("optimizer")), _cells(agg, b_method, p.get("optimizer"))
    _need(ca, a)
    _need(cb, b_method)
    common = sorted(set(ca.index) & set(cb.index))
    common = [b for b in common if b / res.base_batch_size >= float(p.get("min_scale", 1))]
    if not common:
        raise LookupError(f"{a} and {b_method} share no batch size of at least {p.get('min_scale', 1)}x B0")
    if p.get("at", "largest") == "largest":
        common = common[-1:]
    verdicts, parts = [], []
    for b in common:
        va, vb = _value(ca.loc[b]), _value(cb.loc[b])
        if math.isnan(va):
            better = False
        elif math.isnan(vb):
            better = True
        else:
            better = -_loss(res, vb, va, False) > margin + EPS
        verdicts.append(better)
        parts.append(f"B={b}: {a} {_fmt(res, va)} vs {b_method} {_fmt(res, vb)}")
    return "; ".join(parts), all(verdicts)


def _speedup(res, agg, p):
    method, need, kind = p["method"], float(p["min"]), p.get("kind", "steps")
    if not res.target:
        raise LookupError("the sweep has no target")
    cells = _cells(agg, method, p.get("optimizer"))
    _need(cells, method)
    col = "speedup_steps" if kind == "steps" else "speedup_time"
    reached = cells[cells[col].notna()]
    if reached.empty:
        return f"{method} reached the target at no batch size", False
    b = reached.index.max()
    value = reached.loc[b, col]
    return f"B={b} ({b / res.base_batch_size:g}x) reaches the target {value:.2f}x faster ({kind}) than B0", value >= need - EPS


def judge_all(res: Results, agg: pd.DataFrame) -> list[Verdict]:
    return [judge(res, agg, c) for c in res.meta["spec_resolved"].get("claims", [])]


def verdict_table(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": v.text, "measured": v.measured, "published": v.published or "—",
                          "verdict": v.verdict} for v in verdicts], index=[v.id for v in verdicts])
