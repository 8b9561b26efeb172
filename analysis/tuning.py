"""The tuned arm as a reviewer checks it: per batch size, the LRs its bracketing search tried, the
one it selected, and whether that optimum is bracketed (both lattice neighbours tried and worse) and
at what spacing (harness.spec.tuning). Read from ``sweep.json``'s ``studies``, which the sweep writes
from the trials (``Sweep._record_bracket``); older per-seed TPE studies are left to
``analysis.report.studies_frame``."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from analysis.aggregate import Results


def bracket_studies(res: Results) -> dict[str, dict]:
    return {k: v for k, v in (res.meta.get("studies") or {}).items() if v.get("search") == "bracket"}


def _objective(value: float, by_steps: bool, metric: str) -> str:
    if not math.isfinite(value):
        return "diverged"
    return f"{value:.0f} steps" if by_steps else f"{metric} {abs(value):.4g}"


def bracket_frame(res: Results) -> pd.DataFrame:
    """One row per bracketing study: batch size, LRs tried, the tuned LR and its bracket."""
    rows = []
    for name, v in sorted(bracket_studies(res).items(), key=lambda kv: (kv[1]["optimizer"], kv[1]["batch_size"], kv[0])):
        by_steps = "steps" in v.get("selects_on", "")
        cands = v.get("candidates") or []
        b = v.get("bracket") or {}
        best = v.get("best_peak_lr")
        value = next((c["median"] for c in cands if best and math.isclose(c["peak_lr"], best, rel_tol=1e-6)), math.nan)
        if not b:
            verdict = "no LR finished"
        elif b.get("bracketed"):
            spacing = max(b["spacing_below"], b["spacing_above"])
            verdict = f"yes, at x{spacing:.3g}" + ("" if b.get("strict") else " (a neighbour ties: a plateau)")
        else:
            verdict = f"NO: best at the {b.get('edge')} edge of the LRs tried"
        budget = v.get("budget_steps")
        if by_steps and budget:  # a miss counts as twice the budget: say so instead of the number
            miss = 2.0 * budget
        else:
            miss = None
        tried = ", ".join(("(" if miss and c["median"] >= miss else "") + f"{c['peak_lr']:.3g}"
                          + (")" if miss and c["median"] >= miss else "") for c in cands)
        rows.append({"study": name, "optimizer": v["optimizer"], "batch size": v["batch_size"],
                     "seeds": len(v.get("seeds") or []), "LRs tried": len(cands), "trials": v.get("trials"),
                     "tuned peak LR": f"{best:.4g}" if best else "none",
                     "its median (validation)": _objective(value, by_steps, res.metric) if best else "-",
                     "bracketed": verdict, "LRs (ascending)": tried})
    return pd.DataFrame(rows).set_index("study") if rows else pd.DataFrame()


def bracket_sentence(res: Results) -> str:
    """One sentence for the report: how many batch sizes have a bracketed optimum."""
    frame = bracket_frame(res)
    if frame.empty:
        return ""
    ok = frame.bracketed.str.startswith("yes").sum()
    judged = {"exact": "the metric itself (it is exact, computed from the weights: nothing is held out)",
              "own": "the workload's own validation sample (drawn apart from the test sample: nothing is held out)",
              }.get(_validation_kind(res), "the validation split held out of training")
    first = any(v.get("select_seeds") == "first" for v in bracket_studies(res).values())
    how = ("each LR ran on the first seed and was judged on it, and the chosen LR then ran every seed"
           if first else "each LR ran on every seed and was judged on the seeds' median")
    return (f"The tuned arm's bracketing search (harness.spec.tuning) bracketed its optimum at {ok} of {len(frame)} "
            f"batch sizes; {how} on {judged}.")


def _validation_kind(res: Results) -> str:
    """What the tuned arm selects on: ``exact`` (the metric is computed from the weights), ``own``
    (the workload draws its own validation sample) or ``split`` (held out of the training data)."""
    from harness.workloads import WORKLOADS, workload_names

    name = res.meta.get("workload", {}).get("name")
    cls = WORKLOADS.get(name) if name in workload_names() else None
    return "exact" if getattr(cls, "exact_metric", False) else "own" if getattr(cls, "own_validation", False) else "split"


def lr_scaling(res: Results, agg: pd.DataFrame, b_crit: float | None) -> list[dict]:
    """"Sqrt or Linear?" answered by the tuned LR itself (../shared notes, section 8): per optimizer
    and arm, the fit log(eta_opt) = a + alpha log(B) over the batch sizes below the critical batch
    (at least 3; all batch sizes when fewer lie below it, and the result says so), alpha with its
    90% t-interval (n - 2 degrees of freedom); alpha = 1 is Linear scaling, 0.5 is Sqrt. And the
    batch size from which eta_opt stops growing: the smallest B beyond which no tuned LR is more
    than one lattice step above eta_opt(B)."""
    step = float((res.meta["spec_resolved"].get("tuning") or {}).get("lattice_step", 2**0.5))
    out = []
    tuned = agg[agg.method.str.split(":").str[0] == "tuned"]
    for (optimizer, method), g in tuned.groupby(["optimizer", "method"]):
        g = g.sort_values("batch_size")
        g = g[g.peak_lr.notna() & (g.peak_lr > 0)]
        if len(g) < 3:
            continue
        below = g[g.batch_size <= b_crit] if b_crit else g
        scope = "below B_crit" if b_crit and len(below) >= 3 else "over every batch size"
        fit_on = below if len(below) >= 3 else g
        x, y = np.log(fit_on.batch_size.to_numpy(float)), np.log(fit_on.peak_lr.to_numpy(float))
        r = stats.linregress(x, y)
        n = len(fit_on)
        half = float(stats.t.ppf(0.95, n - 2) * r.stderr) if n > 2 else math.nan
        lrs = g.peak_lr.to_numpy(float)
        batches = g.batch_size.to_numpy(int)
        plateau = next((int(b) for i, b in enumerate(batches)
                        if all(lrs[j] <= lrs[i] * step * (1 + 1e-6) for j in range(i + 1, len(lrs)))
                        and i < len(lrs) - 1), None)
        out.append({"optimizer": optimizer, "method": method, "alpha": float(r.slope), "half_width": half,
                    "points": n, "scope": scope, "b_max": int(fit_on.batch_size.max()), "plateau_from": plateau,
                    "lrs": {int(b): float(v) for b, v in zip(batches, lrs)}})
    return out


def lr_scaling_sentence(fits: list[dict]) -> str:
    parts = []
    for f in fits:
        linear, sqrt = (abs(f["alpha"] - x) <= f["half_width"] for x in (1.0, 0.5))
        answer = ("the interval holds both Sqrt (0.5) and Linear (1): these batch sizes cannot tell them apart"
                  if linear and sqrt else "consistent with Linear (alpha = 1), not Sqrt" if linear else
                  "consistent with Sqrt (alpha = 0.5), not Linear" if sqrt else "neither Sqrt nor Linear")
        stop = (f"; eta_opt stops growing from B = {f['plateau_from']:,}" if f["plateau_from"] else
                "; eta_opt still grows at the largest batch")
        parts.append(f"{f['method']}: eta_opt ~ B^alpha with alpha = {f['alpha']:.2f} +- {f['half_width']:.2f} "
                     f"(90% t, {f['points']} batch sizes {f['scope']}, up to {f['b_max']:,}), {answer}{stop}")
    return "; ".join(parts)
