"""The report's time-to-solution section: the projection onto N accelerators (analysis.costmodel),
per series, as a table and a plot whose lines are named at their ends."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from analysis.aggregate import Results, series_order
from analysis.costmodel import project
from analysis.figure import Plot, finish
from analysis.style import series_styles
from analysis.tables import Table, clean_cell
from harness.errors import BatchscaleError


def _label_ends(ax, ends: list[tuple[float, float, str, str]]) -> None:
    """Name each line at its right end (x, y, text, colour), moved apart vertically (log y) so that
    no two names overlap, with a thin leader from the line's end to its name."""
    if not ends:
        return
    lo, hi = ax.get_ylim()
    span = math.log10(hi / lo) if hi > lo > 0 else 1.0
    gap = 0.055 * span
    placed = []
    for x, y, text, color in sorted(ends, key=lambda e: e[1]):
        want = math.log10(y)
        if placed and want < placed[-1][0] + gap:
            want = placed[-1][0] + gap
        placed.append((want, x, y, text, color))
    shift = max(0.0, placed[-1][0] - math.log10(hi) + gap / 2)  # keep the top name inside the axes
    x_text = max(x for x, _, _, _ in ends) * 1.6
    for want, x, y, text, color in placed:
        ty = 10 ** (want - shift)
        ax.plot([x, x_text * 0.93], [y, ty], color=color, lw=0.5, alpha=0.6)
        ax.text(x_text, ty, text, color=color, fontsize=7, va="center", ha="left")
    left, right = ax.get_xlim()
    ax.set_xlim(left, x_text * 2 ** (0.12 * max(len(t) for _, _, t, _ in ends)))


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
    cells = agg.set_index(["optimizer", "method", "batch_size"])
    fig, ax = plt.subplots(figsize=(8.5, 4.8), layout="constrained")
    starved_any = False
    ends, spoiled, borrowed, unknown = [], pd.DataFrame(False, index=display.index, columns=[]), [], []
    for label, o, m in series_order(res):
        g = proj[(proj.optimizer == o) & (proj.method == m)].set_index("devices")
        if g.empty:
            continue
        pace = g.pace.iloc[0]
        if pace.startswith("not known"):
            unknown.append(label)
        elif pace != "its own trials":
            borrowed.append(f"{label}: {pace}")
        display[label] = [_fmt_time(g.loc[n], not pace.startswith("not known")) for n in devices]
        numbers[label] = [g.loc[n, "seconds"] for n in devices]
        numbers[f"{label} batch"] = [g.loc[n, "best_batch"] for n in devices]
        numbers[f"{label} per-device batch"] = [g.loc[n, "per_device_batch"] for n in devices]
        status[label] = ["not projected: no pace measured" if pace.startswith("not known") else
                         "not reached" if not math.isfinite(g.loc[n, "seconds"]) else
                         "below efficient batch" if g.loc[n, "below_efficient"] else "projected" for n in devices]
        # a time read off a cell where a seed diverged or failed is never the row's best (analysis.tables)
        spoiled[label] = [bool(pd.notna(g.loc[n, "best_batch"]) and (o, m, int(g.loc[n, "best_batch"])) in cells.index
                               and not clean_cell(cells.loc[(o, m, int(g.loc[n, "best_batch"]))])) for n in devices]
        ok = g[np.isfinite(g.seconds)]
        if len(ok):
            ax.plot(ok.index, ok.seconds, ms=4, label=label, **styles[label].kw())
            ends.append((float(ok.index[-1]), float(ok.seconds.iloc[-1]), label, styles[label].color))
            starved = ok[ok.below_efficient.astype(bool)]
            if len(starved):
                starved_any = True
                ax.scatter(starved.index, starved.seconds, s=110, facecolors="none", edgecolors="black", lw=0.8,
                           zorder=5)
    handles, _ = ax.get_legend_handles_labels()
    if starved_any:
        handles.append(Line2D([], [], ls="none", marker="o", color="black", mfc="none", mec="black", ms=10,
                              label=f"fewer than its efficient batch ({info['efficient batch per device']}) "
                                    f"examples per device"))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _label_ends(ax, ends)
    ax.set_xticks(devices)
    ax.set_xticklabels([str(n) for n in devices], fontsize=8)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("devices N (data parallel)")
    ax.set_ylabel("projected time to target (s)")
    ax.set_title("Projected time to solution vs devices (best batch size per N), each arm at its own pace")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(  # 2 and 5 of each decade, plainly
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v)), 6) in (2, 5) else ""))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.legend(handles=handles, fontsize=7, ncol=min(4, len(handles)), loc="outside lower center")
    paces = (" Each series (arm) is projected at its own measured pace, never one pooled over arms"
             + (f"; borrowed: {'; '.join(borrowed)}" if borrowed else "")
             + (f"; not projected (no pace measured): {', '.join(unknown)}" if unknown else "") + ".")
    plot = Plot("projected_time", "Projected time to solution",
                f"Measured steps to the target at each batch size times the cost model's step time on N devices "
                f"(per-device throughput: {info['throughput source']}); each point uses the batch size that is fastest "
                f"there for that series, and each line is named at its right end.{paces} A projection, not a "
                f"measurement: ringed points would put fewer examples on a device than its efficient batch, where "
                f"the throughput assumed is not reached.")
    plot = finish(fig, folder, plot)
    best = pd.DataFrame(False, index=display.index, columns=display.columns)
    for n in numbers.index:
        vals = numbers.loc[n, list(display.columns)].astype(float)
        vals = vals[np.isfinite(vals) & ~spoiled.loc[n, list(display.columns)].astype(bool)]
        if len(vals):
            best.loc[n, vals[vals == vals.min()].index] = True
    note = (f"Per-device throughput: {info['throughput source']}.{paces} * marks a projection whose batch would put "
            f"fewer examples on each device than the series' efficient batch ({info['efficient batch per device']}): "
            f"the assumed throughput is not reached there, so its time is optimistic. The best of a row is bold unless "
            f"a seed of its cell diverged or failed. The cost model is below the table.")
    table = Table("projected_time", f"Projected time to target on N devices (batch size used; speedup over "
                  f"B={res.base_batch_size} of the same series on the same N devices)", display, numbers, best,
                  note, status)
    return table, plot, info


def _fmt_time(row, paced: bool = True) -> str:
    s = row.seconds
    if not paced:
        return "no pace measured"
    if not math.isfinite(s):
        return "not reached"
    text = f"{s:.3g} s" if s < 120 else (f"{s / 60:.3g} min" if s < 7200 else f"{s / 3600:.3g} h")
    text += f" (B={int(row.best_batch)}"
    if math.isfinite(row.speedup_vs_base):
        text += f", {row.speedup_vs_base:.1f}x"
    return text + ")" + (" *" if row.below_efficient else "")
