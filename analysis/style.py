"""One look for the whole report: each series (optimizer x method) keeps one colour and one marker
in every plot, and every table and plot lists the series in the spec's order.

Colours are Okabe and Ito's colour-blind-safe palette (Okabe & Ito 2008, "Color Universal
Design"), in the order of the spec's methods; beyond eight series the colours repeat with another
line style. Reference lines (perfect scaling, fits, B_crit, B_simple, the base result, targets)
are grey or black and dashed or dotted, never a series' colour. Batch sizes, where they are the
lines of a plot, get an ordered palette (plasma, light end cut off) and alternating line styles, so
that neighbouring batch sizes stay apart on paper and in greyscale.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

from analysis.aggregate import Results, series_order

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES = ["-", "--", "-.", ":"]
REFERENCE = "#555555"  # perfect scaling, the base result, rule predictions
FIT = "#000000"  # fitted curves
MEASURED = "#7F7F7F"  # measured reference values (B_simple)
DIVERGED_MARK = "x"


@dataclass(frozen=True)
class SeriesStyle:
    color: str
    marker: str
    linestyle: str

    def kw(self) -> dict:
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle}


def series_styles(res: Results) -> dict[str, SeriesStyle]:
    """Label (as in the tables) -> style, in the spec's order."""
    out = {}
    for i, (label, _, _) in enumerate(series_order(res)):
        out[label] = SeriesStyle(OKABE_ITO[i % len(OKABE_ITO)], MARKERS[i % len(MARKERS)],
                                 LINESTYLES[(i // len(OKABE_ITO)) % len(LINESTYLES)])
    return out


def batch_styles(batches) -> dict[int, tuple[tuple, str]]:
    """Batch size -> (colour, line style): ordered colours, neighbours on different line styles."""
    batches = sorted(int(b) for b in batches)
    cmap = matplotlib.colormaps["plasma"]
    n = max(1, len(batches) - 1)
    return {b: (cmap(0.85 * i / n), LINESTYLES[i % 2]) for i, b in enumerate(batches)}
