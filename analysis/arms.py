"""Report sections of the augmentation and data-parallel arms (issue 14): the time per step of each
arm against its plain counterpart, the sharpness at the end, and the decentralized workers'
consensus distance. Each returns nothing when the sweep measured nothing of the kind.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from analysis.aggregate import Results, representative_trials, rule_of, series_order
from analysis.figure import Plot, finish, log2_axis
from analysis.style import batch_styles, series_styles
from analysis.tables import Table
from harness.results.store import RAN_TO_END


def _cells(res: Results, column: str) -> tuple[list[int], list[tuple[str, pd.Series]]]:
    """(batch sizes, [(series label, mean of ``column`` over its seeds per batch size)]) for the
    series that measured it (tuned: each study's chosen trial)."""
    t = representative_trials(res)
    t = t[t.status.isin(RAN_TO_END) & t[column].notna()] if column in t else t.iloc[0:0]
    out = []
    for label, o, m in series_order(res):
        cells = t[(t.optimizer == o) & (t.method == m)]
        if not cells.empty:
            out.append((label, cells.groupby("batch_size")[column].mean()))
    return sorted(res.trials.batch_size.unique()), out


def _plain(label: str) -> str:
    """The series an arm is compared with: the same optimizer and LR method, no augmentation,
    all-reduce (``legw:conadv`` -> ``legw``)."""
    head, _, rest = label.rpartition("/")
    return (head + "/" if head else "") + rule_of(rest)


def _table(name: str, title: str, note: str, batches, series, fmt) -> Table:
    index = pd.Index(batches, name="batch size")
    numbers = pd.DataFrame({label: s.reindex(batches) for label, s in series}, index=index)
    display = numbers.apply(lambda col: [fmt(v, col.name, b) for b, v in zip(batches, col)])
    display.index = index
    best = pd.DataFrame(False, index=index, columns=numbers.columns)
    return Table(name, title, display, numbers, best, note)


def step_time_table(res: Results) -> Table | None:
    """Model-only time per step of every series, and each arm's ratio to its plain series."""
    if not _has_arms(res):
        return None
    batches, series = _cells(res, "model_step_seconds")
    if not series:
        return None
    by_label = dict(series)

    def fmt(v, label, b):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        plain = by_label.get(_plain(label))
        ratio = plain.get(b) if plain is not None and label != _plain(label) else None
        return f"{v * 1e3:.2f} ms" + (f" ({v / ratio:.2f}x)" if ratio else "")

    return _table("step_time", "Time per step by arm", "Mean model-only seconds per optimizer step (steps without "
                  "the noise-scale measurement; evaluation excluded), and in brackets the ratio to the same method's "
                  "plain arm (no augmentation, all-reduce) at the same batch size, measured in the same sweep on the "
                  f"same machine. ConAdv's two passes run one after the other in one process: on a CPU it costs what "
                  f"DisAdv costs; its saving needs the attack pass on parallel hardware (harness.trial.adversarial).",
                  batches, series, fmt)


def sharpness_table(res: Results) -> Table | None:
    batches, series = _cells(res, "sharpness")
    if not series:
        return None
    return _table("sharpness", "Sharpness at the end of training", "Top eigenvalue of the training loss's Hessian "
                  "(power iteration on Hessian-vector products over a fixed set of training examples; "
                  "harness.trial.sharpness), mean over seeds; larger is sharper (Keskar et al. 2017).", batches, series,
                  lambda v, label, b: "" if pd.isna(v) else f"{v:.4g}")


def consensus_table(res: Results) -> Table | None:
    batches, series = _cells(res, "consensus_distance")
    series = [(label, s) for label, s in series if (s > 0).any()]
    if not series:
        return None
    return _table("consensus", "Consensus distance at the end (decentralized arms)", "(1/K) sum_i |x_i - mean x|^2 "
                  "over the K workers at the last evaluation, mean over seeds: how far the workers' models are "
                  "from agreeing (the averaged model is the one evaluated).", batches, series,
                  lambda v, label, b: "" if pd.isna(v) else f"{v:.3g}")


def consensus_plot(res: Results, folder: Path) -> Plot | None:
    m = res.measurements.dropna(subset=["consensus_distance"])
    m = m[m.consensus_distance > 0]
    if m.empty:
        return None
    t = res.trials[["trial_id", "batch_size", "seed", "optimizer", "method"]]
    m = m.merge(t.sort_values("seed").groupby(["optimizer", "method", "batch_size"]).head(1), on="trial_id")
    labels = [(label, o, meth) for label, o, meth in series_order(res)
              if ((m.optimizer == o) & (m.method == meth)).any()]
    styles = batch_styles(sorted(m.batch_size.unique()))
    fig, axes = plt.subplots(1, len(labels), figsize=(3.8 * len(labels), 3.2), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (label, o, meth) in zip(axes[0], labels):
        for b, g in m[(m.optimizer == o) & (m.method == meth)].groupby("batch_size"):
            color, ls = styles[int(b)]
            ax.plot(g.epoch, g.consensus_distance, color=color, ls=ls, marker=".", label=f"B={b}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("consensus distance (log)")
    handles, _ = axes[0][0].get_legend_handles_labels()
    fig.legend(handles=handles, loc="outside upper center", ncol=min(8, len(handles)), fontsize=7)
    return finish(fig, folder, Plot("consensus", "Consensus distance", "(1/K) sum_i |x_i - mean x|^2 of the "
                                    "decentralized workers at each evaluation, per batch size (first seed)."))


def sharpness_plot(res: Results, folder: Path) -> Plot | None:
    batches, series = _cells(res, "sharpness")
    if not series:
        return None
    styles = series_styles(res)
    fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
    for label, s in series:
        ax.plot(s.index, s.values, label=label, **styles[label].kw())
    log2_axis(ax, [int(b) for b in batches])
    ax.set_yscale("log")
    ax.set_ylabel("top Hessian eigenvalue (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return finish(fig, folder, Plot("sharpness", "Sharpness vs batch size", "Top eigenvalue of the training loss's "
                                    "Hessian at the end of training (harness.trial.sharpness), mean over seeds, per series."))


def _has_arms(res: Results) -> bool:
    t = res.trials
    return bool(((t.augment.fillna("none") != "none") | (t.dp_algorithm.fillna("allreduce") != "allreduce")).any())


def arm_tables(res: Results) -> list[Table]:
    return [t for t in (step_time_table(res), sharpness_table(res), consensus_table(res)) if t is not None]


def arm_plots(res: Results, folder: Path) -> list[Plot]:
    return [p for p in (sharpness_plot(res, folder), consensus_plot(res, folder)) if p is not None]
