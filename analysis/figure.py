"""The figure machinery every plot shares: the ``Plot`` record, reading a saved figure's legend
colours and overlapping boxes back (tests/test_report.py checks both), saving PNG and SVG, and
small helpers for log2 batch axes, jitter, legend proxies and captions. Agg backend: no screen."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402


@dataclass
class Plot:
    stem: str
    title: str
    caption: str
    files: list[Path] = field(default_factory=list)
    #: legend label -> colour (hex) of every legend entry, read back from the figure
    legend: dict[str, str] = field(default_factory=dict)
    #: pairs of titles, axis labels or legends whose boxes overlap on the saved figure
    overlaps: list[tuple[str, str]] = field(default_factory=list)


def _handle_color(handle) -> str | None:
    """A legend entry's colour: its line's (an errorbar's first line), else its marker edge or face."""
    target = handle.lines[0] if getattr(handle, "lines", None) else handle
    for getter in ("get_color", "get_edgecolor", "get_facecolor"):
        if not hasattr(target, getter):
            continue
        c = getattr(target, getter)()
        if not isinstance(c, str) and len(c) and hasattr(c[0], "__len__"):  # rows of RGBA (a scatter)
            c = c[0]
        try:
            return matplotlib.colors.to_hex(c)
        except (ValueError, TypeError):
            continue
    return None


def _inspect(fig) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Legend colours, and overlapping text boxes (suptitle, axes titles, axis labels, legends)."""
    legend: dict[str, str] = {}
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    for lg in legends:
        for handle, text in zip(lg.legend_handles, lg.get_texts()):
            c = _handle_color(handle)
            if c is not None:
                legend[text.get_text()] = c
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    if fig._suptitle is not None and fig._suptitle.get_text():
        boxes.append(("suptitle", fig._suptitle.get_window_extent(renderer)))
    for i, ax in enumerate(fig.axes):
        if ax.get_label() == "<colorbar>":
            continue
        for name, t in (("title", ax.title), ("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label)):
            if t.get_text():
                boxes.append((f"axes {i} {name}", t.get_window_extent(renderer)))
        if ax.get_legend() is not None:
            boxes.append((f"axes {i} legend", ax.get_legend().get_window_extent(renderer)))
    for lg in fig.legends:
        boxes.append(("figure legend", lg.get_window_extent(renderer)))
    overlaps = []
    for i, (na, a) in enumerate(boxes):
        for nb, b in boxes[i + 1:]:
            if a.overlaps(b) and a.width > 0 and b.width > 0:
                ix = min(a.x1, b.x1) - max(a.x0, b.x0)
                iy = min(a.y1, b.y1) - max(a.y0, b.y0)
                if ix > 1 and iy > 1:  # a shared edge is not an overlap
                    overlaps.append((na, nb))
    return legend, overlaps


def finish(fig, folder: Path, plot: Plot, formats=("png", "svg")) -> Plot:
    """Inspect the figure (legend colours, overlapping texts), save it as PNG and SVG, close it."""
    plot.legend, plot.overlaps = _inspect(fig)
    folder.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        path = folder / f"{plot.stem}.{fmt}"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plot.files.append(path)
    plt.close(fig)
    return plot


def log2_axis(ax, batches):
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches)
    ax.set_xticklabels([f"{b // 1024}K" if b >= 1024 and b % 1024 == 0 else str(b) for b in batches], fontsize=8)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("batch size (log2)")


def spread(i: int, n: int, width: float = 0.05) -> float:
    """A multiplicative x offset that keeps n series' markers at one batch size apart."""
    return 2 ** (width * (i - (n - 1) / 2))


def proxy(marker: str, label: str, **kw) -> Line2D:
    return Line2D([], [], ls="none", marker=marker, color=kw.pop("color", "black"), label=label, **kw)


def seeds_phrase(agg: pd.DataFrame) -> str:
    n = sorted({int(v) for v in agg.seeds.dropna()})
    return f"{n[0]} seed{'s' if n[0] > 1 else ''}" if len(n) == 1 else f"{n[0]}-{n[-1]} seeds"
