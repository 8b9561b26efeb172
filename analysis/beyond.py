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

from matplotlib.lines import Line2D

from analysis.aggregate import Results, rule_of, series_order
from analysis.critical import critical_summary
from analysis.costmodel import project
from analysis.figure import Plot, finish, log2_axis
from analysis.style import FIT, MEASURED, REFERENCE, batch_styles, series_styles
from analysis.tables import Table
from harness.errors import BatchscaleError
from harness.scaling import BaseRecipe


def _trial_curves(res: Results, method: str, column: str) -> pd.DataFrame:
    m = res.measurements.dropna(subset=[column])
    t = res.trials[res.trials.method == method][["trial_id", "batch_size", "seed", "optimizer"]]
    t = t.sort_values("seed").groupby(["optimizer", "batch_size"]).head(1)
    return m.merge(t, on="trial_id")


def noise_curves(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    """Every method that measured it, one panel each (four to a row)."""
    methods = [(label, m) for label, o, m in series_order(res) if rule_of(m) != "tuned"]
    curves = {}
    for label, m in methods:
        c = _trial_curves(res, m, "noise_scale")
        if len(set(res.trials.optimizer)) > 1:
            c = c[c.optimizer == label.split("/")[0]]
        if not c.empty:
            curves[label] = c
    if not curves:
        return None
    batches = sorted(res.trials.batch_size.unique())
    styles = batch_styles(batches)
    cols = min(4, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.5), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (label, c) in zip(axes.flat, curves.items()):
        for b, g in c.groupby("batch_size"):
            color, ls = styles[int(b)]
            ax.plot(g.epoch, g.noise_scale, color=color, ls=ls, label=f"B={b}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("B_simple (log)")
    handles, _ = axes[0][0].get_legend_handles_labels()
    fig.legend(handles=handles, loc="outside upper center", ncol=min(8, len(handles)), fontsize=7)
    left_out = [label for label, _ in methods if label not in curves]
    p = Plot("noise_scale", "Gradient noise scale", "B_simple = tr(Sigma)/|G|^2 from the two-batch estimator "
             "(micro-batch vs step gradients), a moving average over examples, per batch size (first seed), for every "
             "method that measured it" + (f"; not measured: {', '.join(left_out)}" if left_out else "")
             + "; tuned is left out (its trials are a search, not one run).")
    return finish(fig, folder, p)


def critical_extra(res: Results, agg: pd.DataFrame):
    """Draws the fitted S(B) = S_min(1 + B_crit/B), solid over the batch sizes it was fitted on and
    dotted beyond (extrapolation), and B_crit and the mean measured B_simple as vertical lines;
    returns the legend handles."""
    summary = critical_summary(res, agg)

    def draw(ax):
        handles = []
        fit = summary["fit"]
        batches = sorted(agg.batch_size.unique())
        if fit is not None:
            fitted = summary["envelope"].batch_size
            inside = np.geomspace(fitted.min(), fitted.max(), 60)
            handles += ax.plot(inside, fit.steps(inside), color=FIT, lw=1.2, ls="-",
                               label=f"fit S_min(1+B_crit/B) on B={fitted.min()}-{fitted.max()}")
            beyond_pts = [b for b in batches if b > fitted.max() or b < fitted.min()]
            if beyond_pts:
                for a, b in ((batches[0], fitted.min()), (fitted.max(), batches[-1])):
                    if b > a:
                        xs = np.geomspace(a, b, 30)
                        line = ax.plot(xs, fit.steps(xs), color=FIT, lw=1, ls=":")
                handles.append(Line2D([], [], color=FIT, lw=1, ls=":", label="fit, extrapolated (not fitted there)"))
            if batches[0] <= fit.b_crit <= batches[-1]:
                handles.append(ax.axvline(fit.b_crit, color=FIT, lw=0.8, ls=(0, (1, 3)),
                                          label=f"B_crit (fit) = {fit.b_crit:,.0f}"))
            else:
                handles.append(Line2D([], [], color="none", label=f"B_crit (fit) = {fit.b_crit:,.0f}, off the axis"))
        b_simple = summary["mean_noise_scale"]
        if math.isfinite(b_simple):
            if batches[0] <= b_simple <= batches[-1]:
                handles.append(ax.axvline(b_simple, color=MEASURED, lw=1, ls=(0, (5, 2, 1, 2)),
                                          label=f"mean measured B_simple = {b_simple:,.0f}"))
            else:
                handles.append(Line2D([], [], color="none",
                                      label=f"mean measured B_simple = {b_simple:,.0f}, off the axis"))
        return handles

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
    noise = summary["mean_noise_scale"]
    noise = f"{noise:,.0f}" if math.isfinite(noise) else "not measured"
    if fit:
        title = (f"Critical batch: S_min = {fit.s_min:.0f} steps, E_min = {fit.e_min:,.0f} examples, "
                 f"B_crit = E_min/S_min = {fit.b_crit:,.0f} (fit on {fit.points} batch sizes); "
                 f"mean measured B_simple = {noise}")
    else:
        title = (f"Critical batch: too few batch sizes reached the target to fit S_min(1+B_crit/B) (3 needed); "
                 f"mean measured B_simple = {noise}")
    return Table("critical_batch", title, display, numbers, pd.DataFrame(False, index=display.index,
                                                                          columns=display.columns))


def adascale_gain(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    c = _trial_curves(res, "adascale", "gain")
    if c.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    base = res.base_batch_size
    styles = batch_styles(c.batch_size.unique())
    for b, g in c.groupby("batch_size"):
        color, ls = styles[int(b)]
        ax.plot(g.epoch, g.gain, color=color, ls=ls, label=f"B={b}")
        ax.axhline(b / base, color=color, ls=":", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("gain r (dotted: its maximum B/B0)")
    ax.set_yscale("log", base=2)
    ax.set_title("AdaScale gain over training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    p = Plot("adascale_gain", "AdaScale gain", "r = (tr(Sigma)/B0 + |G|^2)/(tr(Sigma)/B + |G|^2): 1 means no "
             "benefit from the larger batch, B/B0 means perfect linear scaling; the first seed of each batch size, "
             "at every evaluation.")
    return finish(fig, folder, p)


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
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    label = next((lbl for lbl, _, m in series_order(res) if m == "autowu"), "autowu")
    st = series_styles(res).get(label)
    kw = st.kw() if st else {"marker": "o"}
    a1.plot(g.batch_size, g.autowu_warmup_epochs, label=f"{label}: detected", **kw)
    a1.plot(xs, base.warmup_epochs * k, ls="--", color=REFERENCE, label="LEGW: w0 * k")
    a1.set_ylabel("warmup (epochs)")
    a2.plot(g.batch_size, g.autowu_peak_lr, label=f"{label}: detected", **kw)
    a2.plot(xs, base.peak_lr * np.sqrt(k), ls=":", color=REFERENCE, label="sqrt rule")
    a2.plot(xs, base.peak_lr * k, ls="--", color=REFERENCE, label="linear rule")
    a2.set_ylabel("peak LR")
    for ax in (a1, a2):
        log2_axis(ax, [int(x) for x in xs])
        ax.set_yscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("AutoWU against LEGW's linear-epoch warmup", fontsize=10)
    p = Plot("autowu", "AutoWU warmup and peak LR", "Warmup length and peak LR that AutoWU's GP test found "
             "(mean over the seeds whose warmup ended; runs where it never ended are left out, see the AutoWU table), "
             "against LEGW's warmup (w0 x k epochs) and the linear and sqrt LR rules.")
    return finish(fig, folder, p)


def projection(res: Results, agg: pd.DataFrame, folder: Path) -> tuple[Table | None, Plot | None, dict]:
    if not res.target:
        return None, None, {}
    try:
        proj, info = project(res, agg)
    except BatchscaleError as e:
        return None, None, {"projection not made": str(e)}
    if proj.empty or not np.isfinite(proj.seconds).any():
        return None, None, {**info, "projection not made": "no method reached the target"}
    devices = sorted(proj.devices.unique())
    display = pd.DataFrame(index=pd.Index(devices, name="devices"))
    numbers = pd.DataFrame(index=display.index)
    status = pd.DataFrame(index=display.index)
    styles = series_styles(res)
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    starved_any = False
    for label, o, m in series_order(res):
        g = proj[(proj.optimizer == o) & (proj.method == m)].set_index("devices")
        if g.empty:
            continue
        display[label] = [_fmt_time(g.loc[n]) for n in devices]
        numbers[label] = [g.loc[n, "seconds"] for n in devices]
        numbers[f"{label} batch"] = [g.loc[n, "best_batch"] for n in devices]
        numbers[f"{label} per-device batch"] = [g.loc[n, "per_device_batch"] for n in devices]
        status[label] = ["not reached" if not math.isfinite(g.loc[n, "seconds"]) else
                         "below efficient batch" if g.loc[n, "below_efficient"] else "projected" for n in devices]
        ok = g[np.isfinite(g.seconds)]
        if len(ok):
            ax.plot(ok.index, ok.seconds, ms=4, label=label, **styles[label].kw())
            starved = ok[ok.below_efficient.astype(bool)]
            if len(starved):
                starved_any = True
                ax.scatter(starved.index, starved.seconds, s=110, facecolors="none", edgecolors="black", lw=0.8,
                           zorder=5)
    handles, _ = ax.get_legend_handles_labels()
    if starved_any:
        handles.append(Line2D([], [], ls="none", marker="o", mfc="none", mec="black", ms=10,
                              label=f"fewer than {info['efficient batch per device']} examples per device"))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("devices N (data parallel)")
    ax.set_ylabel("projected time to target (s)")
    ax.set_title("Projected time to solution vs devices (best batch size per N)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize=7, ncol=2)
    plot = Plot("projected_time", "Projected time to solution",
                f"Measured steps to the target at each batch size times the cost model's step time on N devices "
                f"(per-device throughput: {info['throughput source']}); each point uses the batch size that is fastest "
                f"there. A projection, not a measurement: ringed points would put fewer examples on a device than "
                f"its efficient batch, where the throughput assumed is not reached.")
    plot = finish(fig, folder, plot)
    best = pd.DataFrame(False, index=display.index, columns=display.columns)
    for n in numbers.index:
        vals = numbers.loc[n, list(display.columns)].astype(float)
        vals = vals[np.isfinite(vals)]
        if len(vals):
            best.loc[n, vals.idxmin()] = True
    note = (f"Per-device throughput: {info['throughput source']}. * marks a projection whose batch would put fewer "
            f"examples on each device than the efficient batch ({info['efficient batch per device']}): the assumed "
            f"throughput is not reached there, so its time is optimistic. The cost model is below the table.")
    table = Table("projected_time", f"Projected time to target on N devices (batch size used; speedup over "
                  f"B={res.base_batch_size} of the same method on the same N devices)", display, numbers, best,
                  note, status)
    return table, plot, info


def _fmt_time(row) -> str:
    s = row.seconds
    if not math.isfinite(s):
        return "not reached"
    text = f"{s:.3g} s" if s < 120 else (f"{s / 60:.3g} min" if s < 7200 else f"{s / 3600:.3g} h")
    text += f" (B={int(row.best_batch)}"
    if math.isfinite(row.speedup_vs_base):
        text += f", {row.speedup_vs_base:.1f}x"
    return text + ")" + (" *" if row.below_efficient else "")
