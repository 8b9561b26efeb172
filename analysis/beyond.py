"""Report sections beyond the paper: noise scale and critical batch, AdaScale and AutoWU, and the
time-to-solution projection onto N accelerators. Each returns nothing when the sweep has no data
for it (e.g. no adascale trials), so every report shows what its sweep measured and no more.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.aggregate import Results, cell_label
from analysis.critical import critical_summary
from analysis.costmodel import project
from analysis.plots import Plot, _log2_axis, _save
from analysis.tables import Table
from harness.errors import BatchscaleError
from harness.scaling import BaseRecipe


def _trial_curves(res: Results, method: str, column: str) -> pd.DataFrame:
    m = res.measurements.dropna(subset=[column])
    t = res.trials[res.trials.method == method][["trial_id", "batch_size", "seed", "optimizer"]]
    t = t.sort_values("seed").groupby(["optimizer", "batch_size"]).head(1)
    return m.merge(t, on="trial_id")


def noise_curves(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    methods = [m for m in res.meta["spec_resolved"]["axes"]["methods"] if m != "tuned"]
    curves = {m: _trial_curves(res, m, "noise_scale") for m in methods}
    curves = {m: c for m, c in curves.items() if not c.empty}
    if not curves:
        return None
    shown = list(curves)[:4]
    batches = sorted(res.trials.batch_size.unique())
    cmap = plt.get_cmap("viridis", max(2, len(batches)))
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.3), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], shown):
        for b, c in curves[method].groupby("batch_size"):
            ax.plot(c.epoch, c.noise_scale, color=cmap(batches.index(b)), label=f"B={b}")
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("B_simple (log)")
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.suptitle("Gradient noise scale B_simple during training", fontsize=10)
    p = Plot("noise_scale", "Gradient noise scale", "B_simple = tr(Sigma)/|G|^2 from the two-batch estimator "
             "(micro-batch vs step gradients), moving averages, per batch size (first seed).")
    p.files = _save(fig, folder, p.stem)
    return p


def critical_extra(res: Results, agg: pd.DataFrame):
    """Draws the fitted S(B) = S_min(1 + B_crit/B) and B_crit / mean B_simple on the steps plot."""
    summary = critical_summary(res, agg)

    def draw(ax):
        fit = summary["fit"]
        xs = np.array(sorted(agg.batch_size.unique()), dtype=float)
        if fit is not None:
            ax.plot(xs, fit.steps(xs), color="black", lw=1.2, ls="-.",
                    label=f"fit S_min(1+B_crit/B): B_crit = {fit.b_crit:,.0f}")
            ax.axvline(fit.b_crit, color="black", lw=0.8, ls=":")
        if math.isfinite(summary["mean_noise_scale"]):
            ax.axvline(summary["mean_noise_scale"], color="tab:red", lw=0.8, ls=":",
                       label=f"mean measured B_simple = {summary['mean_noise_scale']:,.0f}")

    return draw, summary


def critical_table(res: Results, summary: dict) -> Table | None:
    env, noise, fit = summary["envelope"], summary["noise"], summary["fit"]
    if env.empty and noise.empty:
        return None
    batches = sorted(set(env.batch_size) | set(noise.batch_size))
    display = pd.DataFrame(index=pd.Index(batches, name="batch size"))
    e = env.set_index("batch_size")
    n = noise.set_index("batch_size")
    display["fewest steps to target (method)"] = [
        f"{e.loc[b, 'steps_to_target']:.0f} ({e.loc[b, 'method']})" if b in e.index else "not reached" for b in batches]
    display["examples to target"] = [f"{e.loc[b, 'steps_to_target'] * b:,.0f}" if b in e.index else "" for b in batches]
    display["fit S_min(1+B_crit/B)"] = [f"{fit.steps(b):.0f}" if fit else "" for b in batches]
    display["measured B_simple"] = [f"{n.loc[b, 'noise_scale']:,.0f}" if b in n.index else "not measured" for b in batches]
    numbers = display.copy()
    if fit:
        title = (f"Critical batch: S_min = {fit.s_min:.0f} steps, E_min = {fit.e_min:,.0f} examples, "
                 f"B_crit = E_min/S_min = {fit.b_crit:,.0f} (fit on {fit.points} batch sizes); "
                 f"mean measured B_simple = {summary['mean_noise_scale']:,.0f}")
    else:
        title = (f"Critical batch: too few batch sizes reached the target to fit S_min(1+B_crit/B) (3 needed); "
                 f"mean measured B_simple = {summary['mean_noise_scale']:,.0f}")
    return Table("critical_batch", title, display, numbers, pd.DataFrame(False, index=display.index,
                                                                          columns=display.columns))


def adascale_gain(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    c = _trial_curves(res, "adascale", "gain")
    if c.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    base = res.base_batch_size
    for b, g in c.groupby("batch_size"):
        line = ax.plot(g.epoch, g.gain, label=f"B={b}")
        ax.axhline(b / base, color=line[0].get_color(), ls=":", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("gain r (dotted: its maximum B/B0)")
    ax.set_yscale("log", base=2)
    ax.set_title("AdaScale gain over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    p = Plot("adascale_gain", "AdaScale gain", "r = (tr(Sigma)/B0 + |G|^2)/(tr(Sigma)/B + |G|^2): 1 means no "
             "benefit from the larger batch, B/B0 means perfect linear scaling.")
    p.files = _save(fig, folder, p.stem)
    return p


def autowu_table(res: Results) -> Table | None:
    t = res.trials[(res.trials.method == "autowu")]
    if t.empty or "autowu_warmup_epochs" not in t:
        return None
    rows = t.groupby("batch_size").agg(warmup_epochs=("autowu_warmup_epochs", "mean"),
                                       warmup_steps=("autowu_warmup_steps", "mean"),
                                       peak_lr=("autowu_peak_lr", "mean"), final=("final_metric", "mean"))
    o = next(iter(res.meta["workload"]["base_recipes"]))
    w0 = BaseRecipe.model_validate(res.meta["workload"]["base_recipes"][o]).warmup_epochs
    display = pd.DataFrame(index=pd.Index(rows.index, name="batch size"))
    display["detected warmup (epochs)"] = [f"{v:.3g}" if pd.notna(v) else "never ended" for v in rows.warmup_epochs]
    display["detected warmup (steps)"] = [f"{v:.0f}" if pd.notna(v) else "" for v in rows.warmup_steps]
    display["LEGW would use (epochs)"] = [f"{w0 * b / res.base_batch_size:.3g}" for b in rows.index]
    display["detected peak LR"] = [f"{v:.4g}" if pd.notna(v) else "" for v in rows.peak_lr]
    display[f"final {res.metric}"] = [f"{v:.4f}" if pd.notna(v) else "diverged" for v in rows.final]
    return Table("autowu", "AutoWU: warmup length and peak LR it detected per batch size (LEGW predicts warmup "
                 "epochs linear in B)", display, rows, pd.DataFrame(False, index=display.index, columns=display.columns))


def autowu_plot(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    t = res.trials[res.trials.method == "autowu"].dropna(subset=["autowu_warmup_epochs"])
    if t.empty:
        return None
    g = t.groupby("batch_size")[["autowu_warmup_epochs", "autowu_peak_lr"]].mean().reset_index()
    o = next(iter(res.meta["workload"]["base_recipes"]))
    base = BaseRecipe.model_validate(res.meta["workload"]["base_recipes"][o])
    xs = np.array(sorted(res.trials.batch_size.unique()), dtype=float)
    k = xs / base.base_batch_size
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.plot(g.batch_size, g.autowu_warmup_epochs, marker="o", label="AutoWU detected")
    a1.plot(xs, base.warmup_epochs * k, ls="--", color="gray", label="LEGW: w0 * k")
    a1.set_ylabel("warmup (epochs)")
    a2.plot(g.batch_size, g.autowu_peak_lr, marker="o", label="AutoWU detected")
    a2.plot(xs, base.peak_lr * np.sqrt(k), ls=":", color="gray", label="sqrt rule")
    a2.plot(xs, base.peak_lr * k, ls="--", color="gray", label="linear rule")
    a2.set_ylabel("peak LR")
    for ax in (a1, a2):
        _log2_axis(ax, [int(x) for x in xs])
        ax.set_yscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("AutoWU against LEGW's linear-epoch warmup", fontsize=10)
    p = Plot("autowu", "AutoWU warmup and peak LR", "Warmup length and peak LR that AutoWU's GP test found, "
             "against LEGW's warmup (w0 x k epochs) and the linear and sqrt LR rules.")
    p.files = _save(fig, folder, p.stem)
    return p


def projection(res: Results, agg: pd.DataFrame, folder: Path) -> tuple[Table | None, Plot | None, dict]:
    if not res.target:
        return None, None, {}
    try:
        proj, info = project(res, agg)
    except BatchscaleError as e:
        return None, None, {"projection not made": str(e)}
    if proj.empty or not np.isfinite(proj.seconds).any():
        return None, None, {**info, "projection not made": "no method reached the target"}
    optimizers = sorted(proj.optimizer.unique())
    devices = sorted(proj.devices.unique())
    display = pd.DataFrame(index=pd.Index(devices, name="devices"))
    numbers = pd.DataFrame(index=display.index)
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (o, m), g in proj.groupby(["optimizer", "method"], sort=False):
        label = cell_label(o, m, optimizers)
        g = g.set_index("devices")
        display[label] = [_fmt_time(g.loc[n]) for n in devices]
        numbers[label] = [g.loc[n, "seconds"] for n in devices]
        ok = g[np.isfinite(g.seconds)]
        if len(ok):
            ax.plot(ok.index, ok.seconds, marker="o", ms=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices N (data parallel)")
    ax.set_ylabel("projected time to target (s)")
    ax.set_title("Projected time to solution vs devices (best batch size per N)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    plot = Plot("projected_time", "Projected time to solution", "Steps to target at each batch size times the cost "
                "model's step time on N devices; each point uses the batch size that is fastest there.")
    plot.files = _save(fig, folder, plot.stem)
    best = pd.DataFrame(False, index=display.index, columns=display.columns)
    for n, row in numbers.iterrows():
        vals = row[np.isfinite(row.astype(float))]
        if len(vals):
            best.loc[n, vals.astype(float).idxmin()] = True
    table = Table("projected_time", f"Projected time to target on N devices (batch size used; speedup over "
                  f"B={res.base_batch_size} of the same method on the same N devices)", display, numbers, best)
    return table, plot, info


def _fmt_time(row) -> str:
    s = row.seconds
    if not math.isfinite(s):
        return "not reached"
    text = f"{s:.3g} s" if s < 120 else (f"{s / 60:.3g} min" if s < 7200 else f"{s / 3600:.3g} h")
    text += f" (B={int(row.best_batch)}"
    if math.isfinite(row.speedup_vs_base):
        text += f", {row.speedup_vs_base:.1f}x"
    return text + ")"
