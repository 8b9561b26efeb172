"""The report's plots over batch sizes (metric, steps to target, tuned LRs, divergences), and
``all_plots``, which draws them with the curves over steps (analysis.curves); each saved as PNG
and SVG through analysis.figure.

Every plot function takes the loaded results and the aggregate and returns a ``Plot`` record (title,
file stem, a caption that says what was measured, how often and what is left out); ``finish``
reads the legend's colours and any overlapping titles back from the figure (tests/test_report.py
checks both) and writes the files. Colours, markers and line styles come from analysis.style: a
method's colour is the same in every report (a fixed table, not the spec's order), an arm keeps its
method's colour on another line style, and no two series of a plot share all three; reference
lines are grey or black.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from analysis.aggregate import Results, eval_grid, series_order  # noqa: E402
from analysis.curves import schedules, training_curves  # noqa: E402
from analysis.figure import Plot, finish, log2_axis, proxy, seeds_phrase, spread  # noqa: E402
from analysis.outcome import chance_metric  # noqa: E402
from analysis.style import DIVERGED_MARK, REFERENCE, series_styles  # noqa: E402
from harness.results.store import RAN_TO_END  # noqa: E402
from harness.rules.scaling import BaseRecipe  # noqa: E402


def _series(res: Results, agg: pd.DataFrame):
    """(label, optimizer, method, its cells sorted by batch size, its style) in the spec's order."""
    styles = series_styles(res)
    for label, o, m in series_order(res):
        sub = agg[(agg.optimizer == o) & (agg.method == m)].sort_values("batch_size")
        if len(sub):
            yield label, o, m, sub, styles[label]


def metric_vs_batch(res: Results, agg: pd.DataFrame, folder: Path) -> Plot:
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    batches = sorted(agg.batch_size.unique())
    series = list(_series(res, agg))
    dead, rings = [], []
    for i, (label, _, _, sub, st) in enumerate(series):
        shift = spread(i, len(series), 0.03)
        ok = sub[sub.final_mean.notna() & ((sub.complete > 0) | (sub.failed > 0))]
        ax.errorbar(ok.batch_size * shift, ok.final_mean, yerr=ok.final_std.fillna(0), capsize=2, ms=4,
                    label=label, **st.kw())
        spoiled = ok[(ok.diverged > 0) | (ok.failed > 0)]
        rings += [(b * shift, v) for b, v in zip(spoiled.batch_size, spoiled.final_mean)]
        div = sub[(sub.complete == 0) & (sub.failed == 0) & (sub.diverged > 0)]
        if len(div):
            dead.append((div.batch_size * shift, st.color))
    edge = ax.get_ylim()[0] if res.higher_is_better else ax.get_ylim()[1]  # the worse edge, once all is drawn
    for xs, color in dead:
        ax.scatter(xs, [edge] * len(xs), marker=DIVERGED_MARK, color=color, s=50, zorder=5, clip_on=False)
    if rings:
        ax.scatter([x for x, _ in rings], [y for _, y in rings], s=170, facecolors="none", edgecolors="black",
                   linewidths=1, zorder=4)
    handles, _ = ax.get_legend_handles_labels()
    base = agg[agg.batch_size == res.base_batch_size].final_mean.dropna()
    if len(base):
        handles.append(ax.axhline(base.max() if res.higher_is_better else base.min(), color=REFERENCE, ls="--", lw=1,
                                  label=f"best at B0={res.base_batch_size}"))
    chance = chance_metric(res.meta)
    if chance is not None and (agg.failed > 0).any():  # only where a run is near it: it would squash the axis
        handles.append(ax.axhline(chance, color=REFERENCE, ls=":", lw=1, label=f"chance ({chance:.3g})"))
    if dead:
        handles.append(proxy(DIVERGED_MARK, "every seed diverged (at the axis edge)"))
    if rings:
        handles.append(proxy("o", "some seeds diverged or failed", mfc="none", ms=10))
    log2_axis(ax, batches)
    ax.set_ylabel(f"final {res.metric}")
    if not res.higher_is_better:
        ax.set_yscale("log")
    ax.set_title(f"Final {res.metric} vs batch size", pad=12)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, ncol=2)
    steps_note = (" Under steps to result trials stop at the target, so these values sit at the target by design: "
                  "read the steps plot." if res.protocol["kind"] == "steps_to_result" else "")
    p = Plot("metric_vs_batch", f"{res.metric.capitalize()} vs batch size",
             f"Final {res.metric} per method and batch size, mean ± std over {seeds_phrase(agg)} (failed seeds "
             f"included in the mean, ringed); a cell where every seed diverged has no value and is marked x at the "
             f"worse edge. The dashed line is the best result at B0.{steps_note}")
    return finish(fig, folder, p)


def steps_to_target(res: Results, agg: pd.DataFrame, folder: Path, extra=None) -> Plot | None:
    if not res.target:
        return None
    fig, ax = plt.subplots(figsize=(7.8, 4.8), layout="constrained")
    batches = sorted(agg.batch_size.unique())
    log2_axis(ax, batches)
    ax.set_yscale("log", base=2)
    series = list(_series(res, agg))
    any_point, misses = False, []
    for i, (label, _, _, sub, st) in enumerate(series):
        ok = sub[np.isfinite(sub.steps_to_target)]
        if len(ok):
            any_point = True
            ax.plot(ok.batch_size * spread(i, len(series), 0.02), ok.steps_to_target, ms=4, label=label, **st.kw())
        miss = sub[~np.isfinite(sub.steps_to_target)]
        if len(miss):
            misses.append((miss.batch_size * spread(i, len(series)), st.color,
                           [DIVERGED_MARK if r.diverged == r.seeds else "^" for r in miss.itertuples()]))
    handles, _ = ax.get_legend_handles_labels()
    ref = agg[(agg.batch_size == res.base_batch_size) & np.isfinite(agg.steps_to_target)].steps_to_target
    if len(ref):
        xs = np.array(batches, dtype=float)
        handles += ax.plot(xs, ref.min() * res.base_batch_size / xs, color=REFERENCE, ls="--", lw=1,
                           label="perfect scaling from B0 (slope -1)")
    if extra:
        handles += extra(ax)
    if not any_point:
        ax.text(0.5, 0.5, "no method reached the target", transform=ax.transAxes, ha="center")
    log2_axis(ax, batches)  # again: the reference lines may have moved the limits
    top = ax.get_ylim()[1]
    for xs, color, marks in misses:  # at the top edge: the target was not reached within the budget
        for x, mk in zip(xs, marks):
            ax.scatter([x], [top], marker=mk, color=color, s=45, zorder=5, clip_on=False)
    ax.set_ylim(top=top)
    if misses:
        handles += [proxy("^", "not reached within the budget (top edge)"),
                    proxy(DIVERGED_MARK, "every seed diverged (top edge)")]
    ax.set_ylabel("steps to target (log2)")
    ax.set_title(f"Steps to {res.metric} {'>=' if res.higher_is_better else '<='} {res.target['value']}", pad=12)
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize=7, ncol=2)
    budgets = res.protocol.get("budgets") or []
    every = sorted({r["eval_every_steps"] for r in budgets})
    how_often = (f"evaluated every {every[0]}-{every[-1]} steps by batch size (resolution in the protocol table)"
                 if every else f"read at the sweep's evaluations ({eval_grid(res)}), so up to one interval late")
    p = Plot("steps_to_target", "Steps to target vs batch size",
             f"Median optimizer steps to the target over {seeds_phrase(agg)}, {how_often}; a miss counts as "
             "infinitely late in the median, and a cell that missed is marked at the top edge (^ not reached, x all "
             "seeds diverged), not drawn in the line; series are offset sideways a little so that equal values stay "
             "visible. The grey dashed line halves the steps with every doubling of "
             "the batch (Shallue et al. 2018); the black fit is drawn solid over the batch sizes it was fitted on "
             "and dotted where it is an extrapolation.")
    return finish(fig, folder, p)


def tuned_lr(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    tuned = agg[(agg.method == "tuned") & agg.best_peak_lr.notna()]
    if tuned.empty:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.6), layout="constrained")
    batches = sorted(agg.batch_size.unique())
    styles = series_styles(res)
    labels = {(o, m): label for label, o, m in series_order(res)}
    optimizers = sorted(tuned.optimizer.unique())
    edges, counts = [], {"complete": 0, "failed": 0, "diverged": 0, "other": 0}
    for o, sub in tuned.groupby("optimizer"):
        st = styles[labels[(o, "tuned")]]
        sub = sub.sort_values("batch_size")
        suffix = f" ({o})" if len(optimizers) > 1 else ""
        ax.plot(sub.batch_size, sub.best_peak_lr, ms=6, label=f"best LR per batch size{suffix}", **st.kw())
        base = BaseRecipe.model_validate(res.meta["workload"]["base_recipes"][o])
        xs = np.array(batches, dtype=float)
        k = xs / base.base_batch_size
        ax.plot(xs, base.peak_lr * k, ls="--", color=REFERENCE, lw=1, label=f"linear rule eta0*k{suffix}")
        ax.plot(xs, base.peak_lr * np.sqrt(k), ls=":", color=REFERENCE, lw=1.2, label=f"sqrt rule eta0*sqrt(k){suffix}")
        trials = res.trials[(res.trials.method == "tuned") & (res.trials.optimizer == o)]
        for outcome, marker, kw in (("complete", "o", {"alpha": 0.45}), ("failed", "s", {"facecolors": "none"}),
                                    ("diverged", DIVERGED_MARK, {})):
            pts = trials[trials.outcome == outcome]
            counts[outcome] += len(pts)
            if len(pts):
                jitter = np.exp(np.random.default_rng(0).uniform(-0.06, 0.06, len(pts)))
                color = st.color
                ax.scatter(pts.batch_size * jitter, pts.peak_lr, s=16, marker=marker,
                           **({"edgecolors": color} if outcome == "failed" else {"color": color}), **kw,
                           label=f"{outcome} trial{suffix}")
        counts["other"] += int((~trials.outcome.isin(["complete", "failed", "diverged"])).sum())
        for study in (res.meta.get("studies") or {}).values():
            if study.get("optimizer") != o:
                continue
            lo, hi = study["lr_range"]
            ax.plot([study["batch_size"]] * 2, [lo, hi], color=REFERENCE, lw=0.6, alpha=0.5)
            at = range_edge(study.get("best_peak_lr"), lo, hi)
            if at:
                edges.append((study["batch_size"], study["best_peak_lr"]))
    if edges:
        ax.scatter([b for b, _ in edges], [v for _, v in edges], s=200, facecolors="none", edgecolors="#D55E00",
                   linewidths=1.5, zorder=6, label="best LR at the edge of its search range")
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color=REFERENCE, lw=0.6, alpha=0.5, label="search range of each study"))
    log2_axis(ax, batches)
    ax.set_yscale("log", base=2)
    ax.set_ylabel("peak learning rate (log2)")
    ax.set_title("Tuned LR vs the scaling rules' predictions")
    ax.grid(alpha=0.3, which="both")
    ax.legend(handles=handles, fontsize=7, ncol=2)
    total = sum(counts.values())
    p = Plot("tuned_lr", "Tuned LR vs batch size",
             f"Every one of the {total} searched trials ({counts['complete']} complete, {counts['failed']} failed, "
             f"{counts['diverged']} diverged" + (f", {counts['other']} error or incomplete, not drawn" if counts['other']
                                                 else "") +
             "; jittered sideways), the best LR of each batch size's Optuna study (by the study's objective) and the "
             "search range of each study (grey bars), against eta0*k and eta0*sqrt(k) from the base recipe. A best LR "
             "in the outer 10% of its (log) range is ringed: the optimum may lie outside the range.")
    return finish(fig, folder, p)


def range_edge(best: float | None, lo: float, hi: float, fraction: float = 0.1) -> str:
    """'top' or 'bottom' when ``best`` lies in the outer ``fraction`` of the log range [lo, hi], else ''."""
    if best is None or not (best == best) or hi <= lo:
        return ""
    pos = math.log(best / lo) / math.log(hi / lo)
    return "top" if pos >= 1 - fraction else "bottom" if pos <= fraction else ""


def divergence_counts(res: Results, batches) -> pd.DataFrame:
    """Per (series label, batch size): trials run (complete or diverged: errors and unfinished ones
    left out), diverged, failed. Every trial counts: every seed, every trial of every tuned study."""
    t = res.trials[res.trials.status.isin(RAN_TO_END)]
    rows = []
    for label, o, m in series_order(res):
        cells = t[(t.optimizer == o) & (t.method == m)]
        for b in batches:
            c = cells[cells.batch_size == b]
            if len(c):
                rows.append({"series": label, "batch_size": int(b), "trials": len(c),
                             "diverged": int((c.outcome == "diverged").sum()),
                             "failed": int((c.outcome == "failed").sum())})
    return pd.DataFrame(rows, columns=["series", "batch_size", "trials", "diverged", "failed"])


def divergence_map(res: Results, agg: pd.DataFrame, folder: Path) -> Plot:
    """Over every trial (every trial of a tuned study too), per series and batch size."""
    batches = sorted(agg.batch_size.unique())
    counts = divergence_counts(res, batches)
    labels = list(dict.fromkeys(counts.series))
    share, texts = [], []
    for label in labels:
        mine = counts[counts.series == label].set_index("batch_size")
        row_share, row_text = [], []
        for b in batches:
            if b not in mine.index:
                row_share.append(math.nan)
                row_text.append("")
                continue
            n, d, f = mine.loc[b, ["trials", "diverged", "failed"]]
            row_share.append((d + f) / n)
            row_text.append(f"{d + f}/{n}" + (f"\n{f} failed" if f else ""))
        share.append(row_share)
        texts.append(row_text)
    data = np.array(share, dtype=float)
    fig, ax = plt.subplots(figsize=(1.6 + 0.85 * len(batches), 1.4 + 0.5 * len(labels)), layout="constrained")
    im = ax.imshow(data, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(batches)))
    ax.set_xticklabels([str(b) for b in batches], fontsize=8, rotation=45)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(batches)):
            if texts[i][j]:
                ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=7,
                        color="white" if data[i, j] > 0.5 else "black")
    ax.set_xlabel("batch size")
    ax.set_title("Diverged or failed runs (of all trials run)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.04, label="share diverged or failed")
    p = Plot("divergence_map", "Divergence map", "Diverged or failed runs / trials run, per method and batch size, "
             "over every trial (all seeds; for tuned, every trial of every study, not only the chosen one). Diverged: "
             "a NaN/inf loss or a loss blow-up; failed: ended at chance or with its loss above its start "
             "(docs/reports.md). Errors and unfinished trials are not counted.")
    return finish(fig, folder, p)


def all_plots(res: Results, agg: pd.DataFrame, folder: Path, extras: dict | None = None) -> list[Plot]:
    extras = extras or {}
    plots = [metric_vs_batch(res, agg, folder),
             steps_to_target(res, agg, folder, extra=extras.get("steps_to_target")),
             tuned_lr(res, agg, folder), schedules(res, agg, folder), training_curves(res, agg, folder),
             divergence_map(res, agg, folder)]
    return [p for p in plots if p is not None]
