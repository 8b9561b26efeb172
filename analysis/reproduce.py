"""Judging a paper's claims against a finished sweep.

A paper spec (``experiments/paper/*.yaml``) carries ``claims`` (kind, params, words, published number).
Each comes back ``holds``, ``does not hold`` or ``not measurable`` with the measured numbers and the
interval behind it: what the protocol or the seeds' noise cannot settle never holds or fails.

Seeds. Every comparison but ``speedup`` uses all seeds: A's advantage over B (positive = A better;
points for accuracy-like metrics) is the difference of the means with a 90% two-sided Student-t
interval, t.ppf(0.95, df): paired (per-seed differences, n - 1 df: 2.92 for 3 seeds) when both
cells ran the same seeds, since a seed fixes initialisation and data order for both arms, else
Welch's; one seed gives none. Per-seed values: analysis.aggregate.representative_trials (``tuned``:
the trials the aggregate selected). A claim is decided only when the whole interval lies on one side
of its threshold, else ``not measurable`` ("within seed noise"). "A better than B by m"
(``better_than``; ``smaller_drop`` on the drops base(seed) - largest(seed)) holds when the lower end
is above m, does not hold when the upper end is at or below m (m = 0: the interval excludes 0 on A's
/ B's side). "A within x of B" (``within_base``, ``matches``) is one-sided, a better A meets it:
holds when the interval lies at or above -x, does not hold when it lies below -x. Its negation,
``loses_or_diverges``, also holds when the method has no number in any seed.

Divergence. A seed that diverged or failed (or is unfinished) has no number. An arm lacking numbers
in some or all seeds loses to one with a number in every seed (decided, and the measured text says
so); two arms that both lack numbers are not measurable.

Budgets. A batch size whose budget cannot reach the target for any rule (the aggregate's
``feasible``, harness.sweep.protocol) is not evidence: a claim that needs it is ``not measurable`` unless it
fails where it can be judged. base - tolerance (``within_base``, ``loses_or_diverges``) can be
stricter than the target: such a claim is judged at a batch size only where the pilot said the
budget feasible (``protocol.budgets``) or an arm of the optimizer (all seeds complete) reached that
threshold in its mean. Wall-time speedups are not judged on one CPU core per trial (flat examples/s).

Kinds (``params``): ``within_base`` (``method`` within ``tolerance`` of its B0 result up to ``max_scale``
x B0; ``relative: true``), ``loses_or_diverges`` (loses more than ``tolerance``, or diverges, at the
largest batch; ``at: any``: any from ``min_scale`` x B0), ``better_than`` (beats ``other`` by more than
``margin`` at the largest batch; ``at: all``: all from ``min_scale`` to ``max_scale`` x B0),
``smaller_drop`` (loses less from B0 to the largest batch than ``other``, by more than ``margin``),
``matches`` (within ``tolerance`` of ``other``, or better, wherever the budget can reach the target),
``speedup`` (``min`` times faster than B0, on medians of ``kind``: ``steps``, ``time``, ``projected``).
``better_than`` and ``matches`` compare the final metric, or with ``measure: steps`` the steps to the
target (a steps-to-result sweep's measure): A's advantage is then B's steps minus A's relative to B's
mean (+10% = A needs 10% fewer), ``margin`` and ``tolerance`` are fractions, and a seed that missed the
target has no number, like one that diverged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import pandas as pd

from analysis.aggregate import Results, representative_trials
from analysis.intervals import EPS, Check, seed_values
from analysis.intervals import above as _above
from analysis.intervals import diff as _diff
from analysis.intervals import every as _every
from analysis.intervals import interval as _interval
from analysis.intervals import said as _said

HOLDS, FAILS, UNMEASURABLE = "holds", "does not hold", "not measurable"


@dataclass
class Verdict:
    id: str
    text: str
    measured: str
    published: str
    verdict: str
    interval: str = ""  # the deciding comparison, e.g. "+0.68 ± 0.91 pt (90% t, paired, n=3)"; "" for none


def _cells(agg: pd.DataFrame, method: str, optimizer: str | None) -> pd.DataFrame:
    sub = agg[agg.method == method]
    if optimizer:
        sub = sub[sub.optimizer == optimizer]
    elif sub.optimizer.nunique() > 1:
        sub = sub[sub.optimizer == sub.optimizer.iloc[0]]
    if sub.empty:
        raise LookupError(f"method {method!r} is not in this sweep")
    return sub.sort_values("batch_size").set_index("batch_size")


def _feasible(row) -> bool:  # False only when the protocol's check says the budget cannot reach the target
    v = row.get("feasible")
    return v is None or v != v or bool(v)  # None / NaN: not checked


def _fmt(res: Results, s: pd.Series, on: str = "metric") -> str:
    v, bad = s.mean(), int(s.isna().sum())
    if on == "steps":
        note = f" ({bad}/{len(s)} seeds missed the target, diverged or failed)" if 0 < bad < len(s) else ""
        return "no seed reached the target" if math.isnan(v) else f"{v:.0f} steps" + note
    note = f" ({bad}/{len(s)} seeds diverged or failed)" if 0 < bad < len(s) else ""
    return "diverged" if math.isnan(v) else (f"{v:.4f}" if res.higher_is_better else f"{v:.2f}") + note


def _skips(res: Results, agg: pd.DataFrame, cells: list, batches: list, thr: float | None = None) -> dict:
    """The batch sizes the claim cannot be judged at, with the reason (module docstring: Budgets)."""
    pilot = {(r["optimizer"], r["batch_size"]): r.get("feasible") for r in res.protocol.get("budgets", [])}
    opt, out = cells[0].optimizer.iloc[0], {}
    for b in batches:
        if not all(_feasible(c.loc[b]) for c in cells):
            out[b] = "the budget cannot reach the target there for any rule"
        elif thr is not None and pilot.get((opt, b)) is False:
            means = agg[(agg.optimizer == opt) & (agg.batch_size == b) & (agg.complete == agg.seeds)].final_mean
            if not ((means >= thr - EPS) if res.higher_is_better else (means <= thr + EPS)).any():
                out[b] = (f"the pilot said the budget cannot reach the target there, and no arm reached the "
                          f"claim's threshold {thr:.4g}, stricter than the target")
    return out


def _skipped(skips: dict) -> str:
    return "".join(f"; not measurable at B={', '.join(str(b) for b in skips if skips[b] == why)} ({why})"
                   for why in dict.fromkeys(skips.values()))


def judge(res: Results, agg: pd.DataFrame, claim: dict, reps: pd.DataFrame | None = None) -> Verdict:
    p, kind = claim.get("params", {}), claim["kind"]
    fn = {"within_base": _against_base, "loses_or_diverges": partial(_against_base, loses=True), "speedup": _speedup,
          "better_than": _better_than, "smaller_drop": _smaller_drop, "matches": _matches}.get(kind)
    published = claim.get("published") or ""
    if fn is None:
        return Verdict(claim["id"], claim["text"], f"unknown claim kind {kind!r}", published, UNMEASURABLE)
    try:
        measured, ok, *interval = fn(res, agg, p) if fn is _speedup else fn(
            res, agg, p, representative_trials(res) if reps is None else reps)
    except LookupError as e:
        return Verdict(claim["id"], claim["text"], str(e), published, UNMEASURABLE)
    if not res.protocol.get("checked") and res.target:
        measured += "; budgets not checked against the target (no pilot: protocol.pilot false, or an older sweep)"
    verdict = UNMEASURABLE if ok is None else HOLDS if ok else FAILS
    return Verdict(claim["id"], claim["text"], measured, published, verdict, (interval or [""])[0])


def _against_base(res, agg, p, reps, loses: bool = False):
    """``within_base`` (every batch up to max_scale x B0 must hold) or ``loses_or_diverges`` (at the
    largest, or at any from min_scale x B0): ``method`` against its own base-batch result, seed by seed."""
    method, tol, rel = p["method"], float(p.get("tolerance", 0.01)), bool(p.get("relative", False))
    cells, b0 = _cells(agg, method, p.get("optimizer")), res.base_batch_size
    low, top = (float(p.get("min_scale", 1)), math.inf) if loses else (1, float(p.get("max_scale", math.inf)))
    picked = [b for b in cells.index if b0 < b and low * b0 <= b <= top * b0]
    picked = picked[-1:] if loses and p.get("at", "largest") == "largest" else picked
    if b0 not in cells.index or not picked:
        raise LookupError(f"{method} has no result at the base batch {b0} or none above it in the claim's range")
    base = seed_values(reps, method, opt := cells.optimizer.iloc[0], b0)
    if base.isna().any():  # no base to measure a loss against
        raise LookupError(f"{method} diverged or failed at the base batch {b0} in {base.isna().sum()}/{len(base)}")
    thr = base.mean() - (1 if res.higher_is_better else -1) * tol * (abs(base.mean()) if rel else 1)
    skips, checks = _skips(res, agg, [cells], picked, thr), []
    for b in (b for b in picked if b not in skips):
        s = seed_values(reps, method, opt, b)
        d = _diff(s, base, res.higher_is_better, (f"B={b}", f"B0={b0}"), rel)
        ok = _above(d, -tol, inclusive=True)
        checks.append(Check(b, d, (True if s.isna().all() else None if ok is None else not ok) if loses else ok,
                            f"B={b} ({b / b0:g}x) {_fmt(res, s)}"))
    oks = [c.ok for c in checks] + [None] * len(skips)
    ok = (True if True in oks else None if None in oks else False) if loses else _every(oks)
    measured = "; ".join([f"base B={b0}: {_fmt(res, base)}"] + [f"{c.head}: {_said(res, c.d, c.ok, rel)}"
                                                               for c in checks]) + _skipped(skips)
    return measured, ok, _interval(res, checks, ok, rel)


def _on(res, p) -> str:
    """What a pairwise claim compares (``measure``): ``metric`` (the final metric) or ``steps`` (steps to the target,
    fewer is better, as a difference relative to the other arm's mean: ``margin`` and ``tolerance``
    are fractions then)."""
    on = p.get("measure", "metric")
    if on not in ("metric", "steps"):
        raise LookupError(f"measure {on!r}; allowed: metric, steps")
    if on == "steps" and not res.target:
        raise LookupError("measure: steps needs a target: the sweep has none")
    return on


def _pair(res, agg, p, reps):
    a, other, on = p["method"], p["other"], _on(res, p)
    ca, cb = _cells(agg, a, p.get("optimizer")), _cells(agg, other, p.get("optimizer"))
    oa, ob = ca.optimizer.iloc[0], cb.optimizer.iloc[0]
    return (a, other, ca, cb, sorted(set(ca.index) & set(cb.index)),
            lambda b: (seed_values(reps, a, oa, b, on), seed_values(reps, other, ob, b, on)), on)


def _between(res, agg, pair, batches, thr, inclusive):
    """A against B at each of ``batches``, every one of which must hold."""
    a, other, ca, cb, _, seeds, on = pair
    steps = on == "steps"
    skips, checks = _skips(res, agg, [ca, cb], batches), []
    for b in batches:
        sa, sb = seeds(b)
        d = (_diff(sa, sb, False, (a, other), relative=True, missing="missed the target, diverged or failed")
             if steps else _diff(sa, sb, res.higher_is_better, (a, other)))
        checks.append(Check(b, d, None if b in skips else _above(d, thr, inclusive),
                            f"B={b}: {a} {_fmt(res, sa, on)} vs {other} {_fmt(res, sb, on)}"))
    ok = _every([c.ok for c in checks])
    measured = "; ".join(c.head + ("" if c.b in skips else f": {_said(res, c.d, c.ok, steps)}") for c in checks)
    return measured + _skipped(skips), ok, _interval(res, [c for c in checks if c.b not in skips], ok, steps)


def _better_than(res, agg, p, reps):
    pair = _pair(res, agg, p, reps)
    lo, hi = (float(p.get(k, d)) * res.base_batch_size for k, d in (("min_scale", 1), ("max_scale", math.inf)))
    common = [b for b in pair[4] if lo <= b <= hi]
    if not common:
        raise LookupError(f"{pair[0]} and {pair[1]} share no batch size of at least {p.get('min_scale', 1)}x B0")
    return _between(res, agg, pair, common[-1:] if p.get("at", "largest") == "largest" else common,
                    float(p.get("margin", 0.0)), False)


def _matches(res, agg, p, reps):  # no stricter threshold: ``other`` itself shows the budget reaches it
    pair = _pair(res, agg, p, reps)
    if len(_skips(res, agg, list(pair[2:4]), pair[4])) == len(pair[4]):  # none in common, or none judged
        raise LookupError(f"no batch size where the budget lets {pair[0]} and {pair[1]} reach the target")
    return _between(res, agg, pair, pair[4], -float(p.get("tolerance", 0.01)), True)


def _smaller_drop(res, agg, p, reps):
    a, other, ca, cb, common, seeds, on = _pair(res, agg, p, reps)
    if on != "metric":
        raise LookupError("smaller_drop compares the final metric: measure: steps is not allowed")
    b, b0 = (common[-1] if common else None), res.base_batch_size
    if b is None or b == b0 or b0 not in common:
        raise LookupError(f"{a} and {other} share no batch size above B0={b0} (and B0)")
    (a0, o0), (a1, o1) = seeds(b0), seeds(b)
    changes = [(s1 - s0).loc[s0.index.intersection(s1.index)] for s0, s1 in ((a0, a1), (o0, o1))]  # per seed
    drops = ["diverged" if c.isna().any() else f"{-c.mean() * (100 if res.higher_is_better else -1):.2f}"
             for c in changes]
    measured = (f"B0={b0} -> B={b}: {a} {_fmt(res, a0)} -> {_fmt(res, a1)}; {other} {_fmt(res, o0)} -> "
                f"{_fmt(res, o1)}; drops {drops[0]} vs {drops[1]}")
    if b in _skips(res, agg, [ca, cb], [b]):
        return measured + " [budget cannot reach the target: not measurable]", None, ""
    d = _diff(*changes, res.higher_is_better, (a, other))
    ok = _above(d, float(p.get("margin", 0.0)), inclusive=False)
    return measured + f"; {other}'s drop - {a}'s: {_said(res, d, ok)}", ok, _interval(res, [Check(b, d, ok, "")], ok)


def _speedup(res, agg, p):
    method, need, kind = p["method"], float(p["min"]), p.get("kind", "steps")
    if not res.target:
        raise LookupError("the sweep has no target")
    if kind not in ("steps", "time", "projected"):
        raise LookupError(f"speedup kind {kind!r}; allowed: steps, time, projected")
    cells = _cells(agg, method, p.get("optimizer"))
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
    t, ones = res.trials, pd.Series(1, index=res.trials.index)  # (older stores lack some columns)
    on_cpu = not t.get("device", pd.Series("cpu", index=t.index)).astype(str).str.startswith("cuda").any()
    return bool(on_cpu and (t.get("workers", ones).fillna(1) <= 1).all()
                and (t.get("threads", ones).fillna(1) <= 1).all())


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
    reps = representative_trials(res)
    return [judge(res, agg, c, reps) for c in res.meta["spec_resolved"].get("claims", [])]


def verdict_table(verdicts: list[Verdict]) -> pd.DataFrame:
    return pd.DataFrame([{"claim": v.text, "measured": v.measured, "interval": v.interval or "—",
                          "published": v.published or "—", "verdict": v.verdict} for v in verdicts],
                        index=[v.id for v in verdicts])
