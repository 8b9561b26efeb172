"""Report sections beyond the paper: noise scale and critical batch, AdaScale and AutoWU, and the
time-to-solution projection onto N accelerators. Each returns nothing when the sweep has no data
for it (e.g. no adascale trials), so every report shows what its sweep measured and no more.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis.aggregate import Results, rule_of, series_order
from analysis.critical import critical_summary
from analysis.figure import Plot, finish, log2_axis, proxy
from analysis.style import DIVERGED_MARK, FIT, MEASURED, REFERENCE, batch_styles, series_styles
from analysis.tables import Table
from harness.rules.scaling import BaseRecipe


def _trial_curves(res: Results, method: str, column: str) -> pd.DataFrame:
    """``column`` over training of the first seed of each (optimizer, batch size) of ``method``, with
    the trial's outcome (``outcome``) beside every row."""
    m = res.measurements.dropna(subset=[column])
    t = res.trials[res.trials.method == method][["trial_id", "batch_size", "seed", "optimizer", "outcome"]]
    t = t.sort_values("seed").groupby(["optimizer", "batch_size"]).head(1)
    return m.merge(t, on="trial_id")


def _first_seeds(res: Results, method: str, optimizer: str | None) -> pd.DataFrame:
    t = res.trials[res.trials.method == method]
    if optimizer is not None:
        t = t[t.optimizer == optimizer]
    return t.sort_values("seed").groupby(["optimizer", "batch_size"]).head(1)


def noise_curves(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    """Every method that measured it, one panel each (four to a row); a run that diverged is marked
    x at its last measurement, and one that diverged before its first is named in the caption."""
    several = len(set(res.trials.optimizer)) > 1
    methods = [(label, o, m) for label, o, m in series_order(res) if rule_of(m) != "tuned"]
    curves, unseen = {}, []
    for label, o, m in methods:
        c = _trial_curves(res, m, "noise_scale")
        if several:
            c = c[c.optimizer == o]
        if not c.empty:
            curves[label] = c
            drawn = set(c.trial_id)
            firsts = _first_seeds(res, m, o if several else None)
            unseen += [f"{label} B={int(t.batch_size)}" for t in firsts.itertuples()
                       if t.outcome == "diverged" and t.trial_id not in drawn]
    if not curves:
        return None
    batches = sorted(res.trials.batch_size.unique())
    styles = batch_styles(batches)
    cols = min(4, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.5), sharey=True, squeeze=False,
                             layout="constrained")
    diverged = []
    for ax, (label, c) in zip(axes.flat, curves.items()):
        for b, g in c.groupby("batch_size"):
            color, ls = styles[int(b)]
            g = g.sort_values("step")
            ax.plot(g.epoch, g.noise_scale, color=color, ls=ls, label=f"B={b}")
            if (g.outcome == "diverged").any():  # where its measurement stops: it diverged after this
                ax.scatter([g.epoch.iloc[-1]], [g.noise_scale.iloc[-1]], marker=DIVERGED_MARK, s=45, color=color,
                           zorder=5)
                diverged.append(f"{label} B={b}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(curves):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("B_simple (log)")
    by_label = {}  # every batch size drawn in any panel (a panel may lack one)
    for ax in list(axes.flat)[:len(curves)]:
        for h in ax.get_legend_handles_labels()[0]:
            by_label.setdefault(h.get_label(), h)
    handles = [by_label[k] for k in sorted(by_label, key=lambda k: int(k[2:]))]
    if diverged:
        handles.append(proxy(DIVERGED_MARK, "diverged after its last point"))
    fig.legend(handles=handles, loc="outside upper center", ncol=min(8, len(handles)), fontsize=7)
    left_out = [label for label, _, _ in methods if label not in curves]
    off = (res.meta.get("spec_resolved") or {}).get("noise_scale") is False
    why = (" (the spec turns the measurement off, noise_scale: false; AdaScale measures it as part of its method)"
           if off and left_out else "")
    p = Plot("noise_scale", "Gradient noise scale", "B_simple = tr(Sigma)/|G|^2 from the two-batch estimator "
             "(micro-batch vs step gradients), a moving average over examples, per batch size (first seed), for every "
             "method that measured it" + (f"; not measured: {', '.join(left_out)}{why}" if left_out else "")
             + "; tuned is left out (its trials are a search, not one run). "
             + (f"x: the run diverged after its last point drawn ({', '.join(diverged)}). " if diverged else
                "No run drawn diverged. ")
             + (f"Diverged before its first measurement, so not drawn: {', '.join(unseen)}." if unseen else ""))
    return finish(fig, folder, p)


def critical_extra(res: Results, agg: pd.DataFrame):
    """Draws the fitted S(B) = S_min(1 + B_crit/B), solid over the batch sizes it was fitted on and
    dotted beyond (extrapolation), B_crit as a vertical line, and the span of B_simple at the target
    over batch sizes (each batch size's median; the table gives each) as a grey band; returns the
    legend handles."""
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
        noise = summary["noise"]
        if len(noise):  # B_simple at the target, per batch size: the span of the medians, never their mean
            lo, hi = noise.loc[noise.noise_scale.idxmin()], noise.loc[noise.noise_scale.idxmax()]
            text = (f"B_simple at the target: {lo.noise_scale:,.0f} (B={int(lo.batch_size)})" +
                    ("" if len(noise) == 1 else f" to {hi.noise_scale:,.0f} (B={int(hi.batch_size)})"))
            left, right = ax.get_xlim()
            if hi.noise_scale < left or lo.noise_scale > right:
                handles.append(Line2D([], [], color="none", label=f"{text}, off the axis"))
            elif len(noise) == 1 or hi.noise_scale <= lo.noise_scale * 1.02:
                handles.append(ax.axvline(lo.noise_scale, color=MEASURED, lw=1, ls=(0, (5, 2, 1, 2)), label=text))
            else:
                handles.append(ax.axvspan(lo.noise_scale, hi.noise_scale, color=MEASURED, alpha=0.15, lw=0,
                                          label=text))
                ax.set_xlim(left, right)
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
    display["B_simple at the target (median over trials)"] = [
        f"{n.loc[b, 'noise_scale']:,.0f} ({int(n.loc[b, 'trials'])} trial{'s' if n.loc[b, 'trials'] > 1 else ''}"
        + (f", {n.loc[b, 'low']:,.0f}-{n.loc[b, 'high']:,.0f}" if n.loc[b, "low"] < n.loc[b, "high"] else "") + ")"
        if b in n.index else "not measured" for b in batches]
    numbers = display.copy()
    numbers["B_simple at the target (median over trials)"] = [n.loc[b, "noise_scale"] if b in n.index else math.nan
                                                              for b in batches]
    if fit:
        title = (f"Critical batch: S_min = {fit.s_min:.0f} steps, E_min = {fit.e_min:,.0f} examples, "
                 f"B_crit = E_min/S_min = {fit.b_crit:,.0f} (fit on {fit.points} batch sizes)")
    else:
        title = "Critical batch: too few batch sizes reached the target to fit S_min(1+B_crit/B) (3 needed)"
    note = ("B_simple at the target: each trial's gradient noise scale at the evaluation where it first reached the "
            "target, the median over the trials of the batch size that reached it (in brackets: how many, and their "
            "range). It grows with the batch size, so it is given per batch size, not averaged over them; "
            "McCandlish et al. find B_crit ~ B_simple.") if len(noise) else ""
    return Table("critical_batch", title, display, numbers, pd.DataFrame(False, index=display.index,
                                                                          columns=display.columns), note)


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


def _ended_by(t: pd.DataFrame) -> pd.Series:
    """Why each AutoWU trial's warmup ended: ``test`` (its GP test found the minimum), ``cooldown``
    or ``cap`` (it reached ``max_warmup_fraction`` of the run: a cap, not a detection)."""
    return t.extra.fillna("{}").map(lambda e: json.loads(e or "{}").get("autowu_switched_by") or "never")


def _ended_words(why: pd.Series) -> str:
    counts = why.value_counts()
    return ", ".join(f"{WHY.get(k, k)} {n}/{len(why)}" for k, n in counts.items())


WHY = {"test": "GP test", "cooldown": "cooldown", "cap": "cap (max_warmup_fraction)", "never": "never ended"}


def autowu_table(res: Results) -> Table | None:
    t = res.trials[(res.trials.method == "autowu")]
    if t.empty or "autowu_warmup_epochs" not in t:
        return None
    t = t.assign(ended_by=_ended_by(t))
    rows = t.groupby("batch_size").agg(warmup_epochs=("autowu_warmup_epochs", "mean"),
                                       warmup_steps=("autowu_warmup_steps", "mean"),
                                       peak_lr=("autowu_peak_lr", "mean"), final=("final_metric", "mean"))
    ended = t.groupby("batch_size").ended_by.apply(_ended_words)
    o = next(iter(res.meta["workload"]["base_recipes"]))
    w0 = BaseRecipe.model_validate(res.meta["workload"]["base_recipes"][o]).warmup_epochs
    display = pd.DataFrame(index=pd.Index(rows.index, name="batch size"))
    display["warmup (epochs)"] = [f"{v:.3g}" if pd.notna(v) else "never ended" for v in rows.warmup_epochs]
    display["warmup (steps)"] = [f"{v:.0f}" if pd.notna(v) else "" for v in rows.warmup_steps]
    display["warmup ended by (seeds)"] = [ended.get(b, "") for b in rows.index]
    display["LEGW would use (epochs)"] = [f"{w0 * b / res.base_batch_size:.3g}" for b in rows.index]
    display["peak LR (where the warmup ended)"] = [f"{v:.4g}" if pd.notna(v) else "" for v in rows.peak_lr]
    display[f"final {res.metric}"] = [f"{v:.4f}" if pd.notna(v) else "diverged" for v in rows.final]
    capped = bool(len(t)) and (t.ended_by == "cap").all()
    note = ("In every trial the ramp reached its cap (max_warmup_fraction of the run) before the GP test fired: these "
            "are the cap's length and the ramp's LR there, not detected values." if capped else "")
    return Table("autowu", "AutoWU: where its warmup ended per batch size, and why (LEGW predicts warmup epochs linear "
                 "in B)", display, rows, pd.DataFrame(False, index=display.index, columns=display.columns), note=note)


def autowu_plot(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    t = res.trials[res.trials.method == "autowu"].dropna(subset=["autowu_warmup_epochs"])
    if t.empty:
        return None
    t = t.assign(detected=_ended_by(t) != "cap")
    g = t.groupby("batch_size")[["autowu_warmup_epochs", "autowu_peak_lr"]].mean().reset_index()
    found = t.groupby("batch_size").detected.any().reindex(g.batch_size).to_numpy()  # some seed's test or cooldown
    o = next(iter(res.meta["workload"]["base_recipes"]))
    base = BaseRecipe.model_validate(res.meta["workload"]["base_recipes"][o])
    xs = np.array(sorted(res.trials.batch_size.unique()), dtype=float)
    k = xs / base.base_batch_size
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    label = next((lbl for lbl, _, m in series_order(res) if m == "autowu"), "autowu")
    st = series_styles(res).get(label)
    kw = st.kw() if st else {"marker": "o"}
    points = {**kw, "linestyle": "none"}
    for ax, col in ((a1, "autowu_warmup_epochs"), (a2, "autowu_peak_lr")):
        ax.plot(g.batch_size, g[col], **{**kw, "marker": None})
        if found.any():
            ax.plot(g.batch_size[found], g[col][found], label=f"{label}: detected", **{**points, "fillstyle": "full"})
        if (~found).any():
            ax.plot(g.batch_size[~found], g[col][~found], label=f"{label}: at its cap (not detected)",
                    **{**points, "fillstyle": "none"})
    a1.plot(xs, base.warmup_epochs * k, ls="--", color=REFERENCE, label="LEGW: w0 * k")
    a1.set_ylabel("warmup (epochs)")
    a2.plot(xs, base.peak_lr * np.sqrt(k), ls=":", color=REFERENCE, label="sqrt rule")
    a2.plot(xs, base.peak_lr * k, ls="--", color=REFERENCE, label="linear rule")
    a2.set_ylabel("peak LR")
    for ax in (a1, a2):
        log2_axis(ax, [int(x) for x in xs])
        ax.set_yscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("AutoWU against LEGW's linear-epoch warmup", fontsize=10)
    p = Plot("autowu", "AutoWU warmup and peak LR", "Warmup length and peak LR where AutoWU's warmup ended (mean over "
             "the seeds whose warmup ended; see the AutoWU table for why each ended): filled markers where its GP test "
             "(or a cooldown) ended it in some seed, hollow where every seed's ramp reached its cap "
             "(max_warmup_fraction of the run), which is the cap's length, not a detected one; against LEGW's warmup "
             "(w0 x k epochs) and the linear and sqrt LR rules.")
    return finish(fig, folder, p)


from analysis.projection import projection  # noqa: E402,F401 (the report's section, kept importable here)
