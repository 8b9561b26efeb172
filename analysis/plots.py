"""Plots (matplotlib, Agg backend: no screen needed), each saved as PNG and SVG.

Every plot function takes the loaded results and the aggregate and returns a ``Figure``
record (title, file stem, caption); ``save`` writes the files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.aggregate import Results, cell_label, representative_trials  # noqa: E402
from harness.scaling import AUTOMATIC_METHODS, GOYAL_WARMUP_FRACTION, BaseRecipe, resolve  # noqa: E402
from harness.schedules import lr_table  # noqa: E402


@dataclass
class Plot:
    stem: str
    title: str
    caption: str
    files: list[Path] = field(default_factory=list)


def _save(fig, folder: Path, stem: str, formats=("png", "svg")) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = folder / f"{stem}.{fmt}"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def plot_schedules(recipes, path: Path, max_points: int = 2000) -> list[Path]:
    """LR against epochs for each (method, batch size) recipe (``batchscale schedule --plot``)."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in recipes:
        rows = lr_table(r, every=max(1, r.total_steps // max_points))
        ax.plot([e for _, e, _ in rows], [lr for _, _, lr in rows], label=f"{r.method} B={r.batch_size}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedules")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]


def _series(res: Results, agg: pd.DataFrame):
    optimizers = res.meta["spec_resolved"]["axes"].get("optimizers") or sorted(agg.optimizer.unique())
    methods = res.meta["spec_resolved"]["axes"]["methods"]
    for o in optimizers:
        for m in methods:
            sub = agg[(agg.optimizer == o) & (agg.method == m)].sort_values("batch_size")
            if len(sub):
                yield cell_label(o, m, optimizers), o, m, sub


def _log2_axis(ax, batches):
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([f"{b // 1024}K" if b >= 1024 and b % 1024 == 0 else str(b) for b in batches], fontsize=8)
    ax.set_xlabel("batch size (log2)")


def metric_vs_batch(res: Results, agg: pd.DataFrame, folder: Path) -> Plot:
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    batches = sorted(agg.batch_size.unique())
    diverged = []
    for label, _, _, sub in _series(res, agg):
        ok = sub[sub.complete > 0]
        line = ax.errorbar(ok.batch_size, ok.final_mean, yerr=ok.final_std.fillna(0), marker="o", ms=4,
                           capsize=2, label=label)
        div = sub[(sub.complete == 0) & (sub.diverged > 0)]
        if len(div):
            diverged.append((div.batch_size, line[0].get_color()))
    edge = ax.get_ylim()[0] if res.higher_is_better else ax.get_ylim()[1]  # the worse edge, once all is drawn
    for i, (xs, color) in enumerate(diverged):  # spread a little so that methods stay apart
        ax.scatter(xs * 2 ** (0.06 * (i - (len(diverged) - 1) / 2)), [edge] * len(xs), marker="x", color=color,
                   zorder=5, clip_on=False)
    base = agg[agg.batch_size == res.base_batch_size].final_mean.dropna()
    if len(base):
        ax.axhline(base.max() if res.higher_is_better else base.min(), color="gray", ls="--", lw=1,
                   label=f"B={res.base_batch_size} (base)")
    _log2_axis(ax, batches)
    ax.set_ylabel(f"final {res.metric}")
    ax.set_title(f"{res.metric.capitalize()} vs batch size (x: diverged)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    p = Plot("metric_vs_batch", f"{res.metric.capitalize()} vs batch size",
             "Final metric per method (mean ± std over seeds); the dashed line is the base batch's best result.")
    p.files = _save(fig, folder, p.stem)
    return p


def steps_to_target(res: Results, agg: pd.DataFrame, folder: Path, extra=None) -> Plot | None:
    if not res.target:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    batches = sorted(agg.batch_size.unique())
    any_point = False
    for label, _, _, sub in _series(res, agg):
        ok = sub[np.isfinite(sub.steps_to_target)]
        if len(ok):
            any_point = True
            ax.plot(ok.batch_size, ok.steps_to_target, marker="o", ms=4, label=label)
    ref = agg[(agg.batch_size == res.base_batch_size) & np.isfinite(agg.steps_to_target)].steps_to_target
    if len(ref):
        s0 = ref.min()
        xs = np.array(batches, dtype=float)
        ax.plot(xs, s0 * res.base_batch_size / xs, color="gray", ls="--", lw=1, label="perfect scaling (slope -1)")
    if extra:
        extra(ax)
    if not any_point:
        ax.text(0.5, 0.5, "no method reached the target", transform=ax.transAxes, ha="center")
    _log2_axis(ax, batches)
    ax.set_yscale("log", base=2)
    ax.set_ylabel("steps to target (log2)")
    ax.set_title(f"Steps to {res.metric} {'>=' if res.higher_is_better else '<='} {res.target['value']}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    p = Plot("steps_to_target", "Steps to target vs batch size",
             "Median optimizer steps to the target (misses left out of the line, see the table); the dashed line "
             "halves the steps with every doubling of the batch (Shallue et al. 2018).")
    p.files = _save(fig, folder, p.stem)
    return p


def tuned_lr(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    tuned = agg[(agg.method == "tuned") & agg.best_peak_lr.notna()]
    if tuned.empty:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.3))
    batches = sorted(agg.batch_size.unique())
    for o, sub in tuned.groupby("optimizer"):
        sub = sub.sort_values("batch_size")
        line = ax.plot(sub.batch_size, sub.best_peak_lr, marker="o", label=f"tuned best LR ({o})")
        base = BaseRecipe.model_validate(res.meta["workload"]["base_recipes"][o])
        xs = np.array(batches, dtype=float)
        k = xs / base.base_batch_size
        ax.plot(xs, base.peak_lr * k, ls="--", color=line[0].get_color(), alpha=0.6, label=f"linear rule ({o})")
        ax.plot(xs, base.peak_lr * np.sqrt(k), ls=":", color=line[0].get_color(), alpha=0.8, label=f"sqrt rule ({o})")
        all_trials = res.trials[(res.trials.method == "tuned") & (res.trials.optimizer == o)]
        ok = all_trials[all_trials.status == "complete"]
        ax.scatter(ok.batch_size, ok.peak_lr, s=8, color=line[0].get_color(), alpha=0.25)
    _log2_axis(ax, batches)
    ax.set_yscale("log", base=2)
    ax.set_ylabel("peak learning rate (log2)")
    ax.set_title("Best tuned LR vs the scaling rules' predictions")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    p = Plot("tuned_lr", "Tuned LR vs batch size",
             "Best peak LR of each batch size's Optuna study (dots: every searched trial) against eta0*k and "
             "eta0*sqrt(k) from the base recipe.")
    p.files = _save(fig, folder, p.stem)
    return p


def schedules(res: Results, agg: pd.DataFrame, folder: Path) -> Plot | None:
    spec = res.meta["spec_resolved"]
    methods = [m for m in spec["axes"]["methods"] if m not in AUTOMATIC_METHODS]  # the rules' schedules
    if not methods:
        return None
    batches = sorted(spec["axes"]["batch_sizes"])
    picks = sorted({batches[0], batches[len(batches) // 2], batches[-1]})
    optimizer = next(iter(res.meta["workload"]["base_recipes"]))
    base = BaseRecipe.model_validate(res.meta["workload"]["base_recipes"][optimizer])
    n = res.meta["workload"]["dataset_size"]
    budget = spec.get("budget") or {}
    epochs = budget.get("epochs") or (budget["examples"] / n if budget.get("examples") else None)
    by_steps = res.protocol["kind"] == "steps_to_result"
    budgets = {r["batch_size"]: r for r in res.protocol.get("budgets", []) if r["optimizer"] == optimizer}
    if by_steps and base.fixed_warmup_epochs is None:  # pinned to the study's reference budget, as the trials were
        base = base.model_copy(update={"fixed_warmup_epochs": GOYAL_WARMUP_FRACTION * (epochs or base.epochs)})
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(3.2 * max(1, len(methods)), 3.2), sharey=True,
                             squeeze=False)
    for ax, m in zip(axes[0], methods):
        for b in picks:
            # under steps_to_result each batch size ran its own step budget
            own = budgets[b]["budget_steps"] * b / n if by_steps and b in budgets else epochs
            r = resolve(base, b, m, n, epochs=own)
            rows = lr_table(r, every=max(1, r.total_steps // 1000))
            ax.plot([e for _, e, _ in rows], [lr for _, _, lr in rows], label=f"B={b}")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"learning rate ({optimizer})")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("LR schedules of each method", fontsize=10, y=1.04)  # above the panels' titles
    p = Plot("schedules", "LR schedules", f"Resolved schedules at B = {', '.join(map(str, picks))} "
             f"(log LR; {optimizer} base recipe)" + (", each over its batch size's step budget (steps to result); "
                                                     "trials stopped earlier, at the target." if by_steps else "."))
    p.files = _save(fig, folder, p.stem)
    return p


def training_curves(res: Results, agg: pd.DataFrame, folder: Path) -> Plot:
    reps = representative_trials(res)
    m = res.measurements
    spec = res.meta["spec_resolved"]
    series = [(o, meth) for o in (spec["axes"].get("optimizers") or sorted(reps.optimizer.unique()))
              for meth in spec["axes"]["methods"] if ((reps.optimizer == o) & (reps.method == meth)).any()]
    batches = sorted(reps.batch_size.unique())
    cmap = plt.get_cmap("viridis", max(2, len(batches)))
    fig, axes = plt.subplots(len(series), 2, figsize=(9, 2.6 * len(series)), squeeze=False)
    first_seed = reps.sort_values("seed").groupby(["optimizer", "method", "batch_size"]).head(1)
    for (o, meth), row_axes in zip(series, axes):
        chosen = first_seed[(first_seed.optimizer == o) & (first_seed.method == meth)].sort_values("batch_size")
        for _, t in chosen.iterrows():
            curve = m[m.trial_id == t.trial_id].dropna(subset=["metric"])
            color = cmap(batches.index(t.batch_size))
            row_axes[0].plot(curve.epoch, curve.metric, color=color, label=f"B={t.batch_size}")
            row_axes[1].plot(curve.step, curve.metric, color=color)
        row_axes[0].set_ylabel(f"{o}/{meth}\n{res.metric}", fontsize=8)
        row_axes[1].set_xscale("log")
        row_axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        for ax in row_axes:
            ax.grid(alpha=0.3)
    axes[0][0].set_title("vs epochs", fontsize=9)
    axes[0][1].set_title("vs optimizer steps (log)", fontsize=9)
    axes[-1][0].set_xlabel("epoch")
    axes[-1][1].set_xlabel("step")
    axes[0][0].legend(fontsize=6, ncol=2)
    p = Plot("training_curves", "Training curves", f"Held-out {res.metric} during training, one line per batch size "
             "(first seed; for tuned, the best trial).")
    p.files = _save(fig, folder, p.stem)
    return p


def divergence_map(res: Results, agg: pd.DataFrame, folder: Path) -> Plot:
    labels, rows = [], []
    batches = sorted(agg.batch_size.unique())
    for label, _, _, sub in _series(res, agg):
        rate = sub.set_index("batch_size").divergence_rate
        labels.append(label)
        rows.append([rate.get(b, math.nan) for b in batches])
    data = np.array(rows, dtype=float)
    fig, ax = plt.subplots(figsize=(1 + 0.8 * len(batches), 1 + 0.45 * len(labels)))
    im = ax.imshow(data, cmap="Reds", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(batches)))
    ax.set_xticklabels([str(b) for b in batches], fontsize=8, rotation=45)
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(batches)):
            if not math.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.0%}", ha="center", va="center", fontsize=7,
                        color="white" if data[i, j] > 0.5 else "black")
    ax.set_xlabel("batch size")
    ax.set_title("Divergence rate (share of seeds)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03)
    p = Plot("divergence_map", "Divergence map", "Share of seeds that diverged (NaN/inf loss or a loss blow-up), "
             "per method and batch size; for tuned, of the chosen trials.")
    p.files = _save(fig, folder, p.stem)
    return p


def all_plots(res: Results, agg: pd.DataFrame, folder: Path, extras: dict | None = None) -> list[Plot]:
    extras = extras or {}
    plots = [metric_vs_batch(res, agg, folder),
             steps_to_target(res, agg, folder, extra=extras.get("steps_to_target")),
             tuned_lr(res, agg, folder), schedules(res, agg, folder), training_curves(res, agg, folder),
             divergence_map(res, agg, folder)]
    return [p for p in plots if p is not None]
