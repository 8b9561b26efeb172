"""Plots over steps: the LR schedules (of a sweep, and of ``batchscale schedule --plot``) and the
training curves, with targets, divergences and failed runs marked."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from analysis.aggregate import Results, representative_trials, series_order  # noqa: E402
from analysis.figure import Plot, finish, proxy  # noqa: E402
from analysis.style import DIVERGED_MARK, REFERENCE, batch_styles  # noqa: E402
from harness.rules.scaling import (  # noqa: E402
    AUTOMATIC_METHODS,
    GOYAL_WARMUP_FRACTION,
    BaseRecipe,
    resolve,
)
from harness.rules.schedules import lr_table  # noqa: E402
from harness.spec import Budget  # noqa: E402


def plot_schedules(recipes, path: Path, max_points: int = 2000) -> list[Path]:
    """LR against epochs for each (method, batch size) recipe (``batchscale schedule --plot``)."""
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
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
    epochs = Budget.model_validate(spec.get("budget") or {}).epochs_for(n)
    by_steps = res.protocol["kind"] == "steps_to_result"
    budgets = {r["batch_size"]: r for r in res.protocol.get("budgets", []) if r["optimizer"] == optimizer}
    if by_steps and base.fixed_warmup_epochs is None:  # pinned to the study's reference budget, as the trials were
        base = base.model_copy(update={"fixed_warmup_epochs": GOYAL_WARMUP_FRACTION * (epochs or base.epochs)})
    cols = min(3, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.9 * rows), squeeze=False, layout="constrained")
    styles = batch_styles(picks)
    for ax, m in zip(axes.flat, methods):
        for b in picks:
            # under steps_to_result each batch size ran its own step budget
            own = budgets[b]["budget_steps"] * b / n if by_steps and b in budgets else epochs
            r = resolve(base, b, m, n, epochs=own)
            rows_ = lr_table(r, every=max(1, r.total_steps // 1000))
            color, ls = styles[b]
            ax.plot([e for _, e, _ in rows_], [lr for _, _, lr in rows_], color=color, ls=ls, label=f"B={b}")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(f"learning rate ({optimizer})")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("LR schedule of each rule at three batch sizes", fontsize=10)
    p = Plot("schedules", "LR schedules", f"Resolved schedules at B = {', '.join(map(str, picks))} (linear LR axis, "
             f"so that the warmup shows; {optimizer} base recipe; automatic methods choose their own and are not shown)"
             + (", each over its batch size's step budget (steps to result); trials stopped earlier, at the target."
                if by_steps else "."))
    return finish(fig, folder, p)


def training_curves(res: Results, agg: pd.DataFrame, folder: Path) -> Plot:
    reps = representative_trials(res)
    m = res.measurements
    series = [(label, o, meth) for label, o, meth in series_order(res)
              if ((reps.optimizer == o) & (reps.method == meth)).any()]
    batches = sorted(reps.batch_size.unique())
    styles = batch_styles(batches)
    fig, axes = plt.subplots(len(series), 2, figsize=(9.5, 2.5 * len(series) + 0.6), squeeze=False,
                             layout="constrained")
    first_seed = reps.sort_values("seed").groupby(["optimizer", "method", "batch_size"]).head(1)
    target = res.target["value"] if res.target else None
    ends = {"diverged": False, "failed": False}
    early = []
    for (label, o, meth), row_axes in zip(series, axes):
        chosen = first_seed[(first_seed.optimizer == o) & (first_seed.method == meth)].sort_values("batch_size")
        for _, t in chosen.iterrows():
            curve = m[m.trial_id == t.trial_id].dropna(subset=["metric"]).sort_values("step")
            color, ls = styles[int(t.batch_size)]
            if curve.empty:  # diverged before its first evaluation: marked at the worse edge where it did
                if t.outcome == "diverged" and pd.notna(t.diverged_step):
                    early.append((row_axes, t.diverged_step * t.batch_size / res.meta["workload"]["dataset_size"],
                                  t.diverged_step, color))
                continue
            row_axes[0].plot(curve.epoch, curve.metric, color=color, ls=ls, label=f"B={t.batch_size}")
            row_axes[1].plot(curve.step, curve.metric, color=color, ls=ls)
            if t.outcome in ends:  # where it ended: diverged (x) or failed (square)
                ends[t.outcome] = True
                mk = DIVERGED_MARK if t.outcome == "diverged" else "s"
                for ax, x in ((row_axes[0], curve.epoch.iloc[-1]), (row_axes[1], curve.step.iloc[-1])):
                    ax.scatter([x], [curve.metric.iloc[-1]], marker=mk, s=45, color=color, zorder=5,
                               **({"facecolors": "none", "edgecolors": color} if mk == "s" else {}))
        row_axes[0].set_ylabel(f"{label}\n{res.metric}", fontsize=8)
        row_axes[1].set_xscale("log")
        row_axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        for ax in row_axes:
            if target is not None:
                ax.axhline(target, color=REFERENCE, ls="--", lw=0.8)
            if not res.higher_is_better:
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
    for row_axes, epoch, step, color in early:
        ends["diverged"] = True
        for ax, x in ((row_axes[0], epoch), (row_axes[1], step)):
            edge = ax.get_ylim()[0 if res.higher_is_better else 1]
            ax.scatter([x], [edge], marker=DIVERGED_MARK, s=45, color=color, zorder=5, clip_on=False)
    axes[0][0].set_title("vs epochs", fontsize=9)
    axes[0][1].set_title("vs optimizer steps (log)", fontsize=9)
    axes[-1][0].set_xlabel("epoch")
    axes[-1][1].set_xlabel("step")
    handles, _ = axes[0][0].get_legend_handles_labels()
    if target is not None:
        handles.append(Line2D([], [], color=REFERENCE, ls="--", lw=0.8, label=f"target {target}"))
    if ends["diverged"]:
        handles.append(proxy(DIVERGED_MARK, "diverged here"))
    if ends["failed"]:
        handles.append(proxy("s", "failed run ends here", mfc="none"))
    fig.legend(handles=handles, loc="outside upper center", ncol=min(6, len(handles)), fontsize=7)
    p = Plot("training_curves", "Training curves", f"Held-out {res.metric} during training, one line per batch size "
             "(the first seed; for tuned, its study's best trial); x: where a run diverged (at its last evaluation "
             "before, or at the worse edge when it diverged before its first), square: a failed run's end" + (", dashed: the target" if target is not None else "") + ".")
    return finish(fig, folder, p)
