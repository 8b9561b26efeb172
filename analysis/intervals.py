"""The seeds' statistics behind every claim verdict (analysis.reproduce): A's advantage over B as a
difference of means with a 90% two-sided Student-t interval (paired over common seeds, else Welch's),
or decided by divergence; whether it clears a threshold; and how it is said in words."""

from __future__ import annotations

import math
from collections import namedtuple

import pandas as pd
from scipy import stats

from analysis.aggregate import Results

EPS = 1e-9  # tolerances are inclusive: 0.89 - 0.87 is "2 points" although it is 0.0200000000000000018
LEVEL = 0.90  # two-sided level of every interval
Check = namedtuple("Check", "b d ok head")  # batch, Diff, verdict there, the cells compared in words


# A's advantage over B (positive = A better): mean, half-width of its t interval (NaN: none), "paired, n=3",
# the winner ("A"/"B") when divergence decided it, and why (the divergence, or why there is no interval)
Diff = namedtuple("Diff", "mean half how winner why", defaults=(math.nan, math.nan, "", "", ""))


def seed_values(reps: pd.DataFrame, method: str, optimizer: str, batch: int, on: str = "metric") -> pd.Series:
    """A cell's final metric by seed (NaN: diverged, failed or unfinished), or with ``on="steps"`` its
    steps to the target (NaN also where the target was missed); ``reps``: representative_trials."""
    t = reps[(reps.method == method) & (reps.optimizer == optimizer) & (reps.batch_size == batch)]
    column = t.steps_to_target if on == "steps" else t.final_metric
    v = column.astype(float).where(t.outcome == "complete")
    return v.groupby(t.seed.to_numpy()).agg(lambda s: s.mean() if s.notna().all() else math.nan)


def diff(a: pd.Series, b: pd.Series, hib: bool, names: tuple[str, str], relative: bool = False,
          missing: str = "diverged or failed") -> Diff:
    """A's advantage over B: paired or Welch, or decided (or left open) by divergence (``missing``: what
    a seed without a number did)."""
    bad_a, bad_b = int(a.isna().sum()), int(b.isna().sum())
    if bad_a and bad_b:
        return Diff(why=f"both {missing} ({names[0]} in {bad_a}/{len(a)} seeds, {names[1]} in "
                        f"{bad_b}/{len(b)}): not measurable")
    if bad_a or bad_b:
        (lose, n, bad), win = ((names[0], len(a), bad_a), names[1]) if bad_a else ((names[1], len(b), bad_b), names[0])
        return Diff(winner="B" if bad_a else "A", why=f"{lose} {missing} in {bad}/{n} seeds, {win} in none: "
                                                      f"{win} is better")
    sign = (1.0 if hib else -1.0) / (abs(b.mean()) if relative else 1.0)
    x, y = a * sign, b * sign
    if set(x.index) == set(y.index) and len(x) > 1:
        d = x - y.reindex(x.index)
        mean, se, df, how = d.mean(), d.std(ddof=1) / math.sqrt(len(d)), len(d) - 1, f"paired, n={len(d)}"
    elif len(x) > 1 and len(y) > 1:
        va, vb = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        den = va**2 / (len(x) - 1) + vb**2 / (len(y) - 1)
        df = (va + vb) ** 2 / den if den > 0 else len(x) + len(y) - 2
        mean, se, how = x.mean() - y.mean(), math.sqrt(va + vb), f"Welch, n={len(x)} vs {len(y)}"
    else:
        return Diff(mean=x.mean() - y.mean(), why="one seed: no estimate of the seeds' noise, not measurable")
    return Diff(float(mean), float(stats.t.ppf(0.5 + LEVEL / 2, df) * se), how)


def above(d: Diff, thr: float, inclusive: bool) -> bool | None:
    """Is A's advantage above ``thr`` (or at it, ``inclusive``)? True/False: all/none of the interval is."""
    if d.winner or math.isnan(d.half):
        return (d.winner == "A") if d.winner else None
    lo, hi = d.mean - d.half, d.mean + d.half
    if inclusive:
        return True if lo >= thr - EPS else False if hi < thr - EPS else None
    return True if lo > thr + EPS else False if hi <= thr + EPS else None


def every(oks: list) -> bool | None:  # every one must hold
    return False if False in oks else None if None in oks else True


def units(res: Results, rel: bool) -> tuple:  # scale, unit, format: points for accuracy-like metrics
    return (100, " %", ".2f") if rel else (100, " pt", ".2f") if res.higher_is_better else (1, "", ".4g")


def said(res: Results, d: Diff, ok, rel: bool = False) -> str:
    """The comparison in words: who diverged, or the difference with its half-width."""
    k, unit, f = units(res, rel)
    if d.winner or math.isnan(d.mean):
        return d.why
    if math.isnan(d.half):
        return f"{d.why} (difference {d.mean * k:+{f}}{unit})"
    text = f"difference {d.mean * k:+{f}} ± {d.half * k:{f}}{unit}"
    return text if ok is not None else f"within seed noise: {text}"


def interval(res: Results, checks: list, ok, rel: bool = False) -> str:
    """The interval behind the verdict: the lowest of those that agree with it (and have one)."""
    pool = [c for c in ([c for c in checks if c.ok is ok] or checks) if not c.d.winner and c.d.half == c.d.half]
    if not pool:
        return ""
    c = min(pool, key=lambda c: c.d.mean - c.d.half)
    k, unit, f = units(res, rel)
    return f"{c.d.mean * k:+{f}} ± {c.d.half * k:{f}}{unit} ({LEVEL:.0%} t, {c.d.how})"


