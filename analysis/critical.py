"""Critical batch size and the measured gradient noise scale (McCandlish et al. 2018).

Steps S and examples E = B*S to a fixed target trade off as ``(S/S_min - 1)(E/E_min - 1) = 1``,
i.e. ``S(B) = S_min (1 + B_crit / B)`` with ``B_crit = E_min / S_min``: below B_crit doubling the
batch nearly halves the steps, above it the steps stop falling. We fit S_min and B_crit by least
squares on log S over the batch sizes that reached the target, on the envelope of the sweep (the
fewest steps any method needed at each batch size), and compare B_crit with the noise scale
B_simple measured when the trials reached the target: McCandlish et al. find B_crit ~ B_simple.
B_simple is reported per batch size (the median over that batch size's trials), never averaged
over batch sizes: it grows with B (20x from 256 to 32K in the default study), so a mean over batch
sizes is a number no batch size measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit

from analysis.aggregate import Results


@dataclass
class CriticalBatch:
    s_min: float
    e_min: float
    b_crit: float
    points: int

    def steps(self, batch):
        return self.s_min * (1 + self.b_crit / np.asarray(batch, dtype=float))


def fit_critical_batch(batches, steps) -> CriticalBatch | None:
    """Least-squares fit of log S = log S_min + log(1 + B_crit/B); needs three points or more."""
    b = np.asarray(batches, dtype=float)
    s = np.asarray(steps, dtype=float)
    ok = np.isfinite(s) & (s > 0)
    b, s = b[ok], s[ok]
    if len(b) < 3:
        return None

    def model(x, log_s_min, log_b_crit):
        return log_s_min + np.log1p(np.exp(log_b_crit) / x)

    slope, intercept = np.polyfit(1 / b, s, 1)  # S = S_min + S_min*B_crit/B: a start for the fit
    s0 = max(intercept, s.min() / 2)
    bc0 = max(slope / s0, b.min() / 10)
    (log_s_min, log_b_crit), _ = curve_fit(model, b, np.log(s), p0=(math.log(s0), math.log(bc0)), maxfev=20000)
    s_min, b_crit = math.exp(log_s_min), math.exp(log_b_crit)
    return CriticalBatch(s_min, s_min * b_crit, b_crit, len(b))


def envelope(agg: pd.DataFrame) -> pd.DataFrame:
    """Fewest median steps to target at each batch size, over methods (misses excluded)."""
    reached = agg[np.isfinite(agg.steps_to_target)]
    if reached.empty:
        return pd.DataFrame(columns=["batch_size", "steps_to_target", "method"])
    best = reached.loc[reached.groupby("batch_size").steps_to_target.idxmin()]
    return best[["batch_size", "steps_to_target", "method", "optimizer"]].sort_values("batch_size")


def noise_by_batch(res: Results) -> pd.DataFrame:
    """B_simple at the target per batch size: for each trial that reached the target, its
    ``noise_scale`` at the evaluation where it first did (B_simple grows as training goes on), and
    per batch size the median over those trials (``noise_scale``), with their count (``trials``) and
    range (``low``, ``high``)."""
    cols = ["batch_size", "noise_scale", "trials", "low", "high"]
    m = res.measurements.dropna(subset=["noise_scale"])
    hits = res.trials[res.trials.target_reached.fillna(False).astype(bool)][["trial_id", "batch_size", "steps_to_target"]]
    if m.empty or hits.empty:
        return pd.DataFrame(columns=cols)
    m = m.merge(hits, on="trial_id")
    at = m[m.step >= m.steps_to_target].sort_values("step").groupby("trial_id").head(1)
    if at.empty:
        return pd.DataFrame(columns=cols)
    out = at.groupby("batch_size").noise_scale.agg(["median", "count", "min", "max"]).reset_index()
    return out.rename(columns={"median": "noise_scale", "count": "trials", "min": "low", "max": "high"})[cols]


def critical_summary(res: Results, agg: pd.DataFrame) -> dict:
    env = envelope(agg)
    fit = fit_critical_batch(env.batch_size, env.steps_to_target) if len(env) else None
    return {"fit": fit, "envelope": env, "noise": noise_by_batch(res)}
