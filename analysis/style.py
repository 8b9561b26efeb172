"""One look for every report: a method keeps its colour in every plot of every report, and no two
series of one plot share colour, marker and line style.

A series is an optimizer, an LR/warmup method and an arm (``legw``, ``tuned:conadv``,
``momentum/legw:dmsgd``). Its style is read off those parts, never off the spec's order, so that
``legw`` is blue whether a study lists it first or fifth:

* **colour: the LR/warmup method**, from a fixed table (``METHOD_STYLES``) on Okabe and Ito's
  colour-blind-safe palette (Okabe & Ito 2008, "Color Universal Design"). Families: the sqrt-LR
  rules in blues (``legw`` blue, ``sqrt`` sky blue), the linear-LR rules in warm colours (``goyal``
  vermilion, ``linear-legw`` reddish purple), ``none`` black, ``tuned`` bluish green, the methods
  that set the LR from the measured noise scale orange (``adascale`` and ``noise-aware``, told apart
  by their markers), ``autowu`` yellow. Eight colours cannot name nine methods apart; marker and line
  style do the rest. A method outside the table (an ``<lr>+<warmup>`` combination such as
  ``sqrt+none``, a plugin's method) starts at a stable hash of its name (CRC-32, not Python's
  salted ``hash``) in the palette and skips the colours the report's other methods already use,
  while one is free; its marker comes from markers no tabled method uses.
* **marker: the method** (``METHOD_STYLES``); in a sweep of several optimizers the marker names
  the optimizer instead (``OPTIMIZER_MARKERS``), since the colour already names the method.
* **line style and marker fill: the arm**, keeping the method's colour (``ARM_STYLES``): plain
  ``-`` with filled markers, ``:disadv`` ``--`` hollow, ``:conadv`` ``-.`` half-filled, ``:dmsgd``
  ``:`` hollow, ``:decentlam`` dash-dot-dot half-filled; an arm with both an augmentation and a
  decentralized algorithm takes the algorithm's line style, with markers filled in the bottom half
  (DisAdv) or the right half (ConAdv).

A last pass over the report's series, in the spec's order, moves any series whose colour, marker,
line style and fill would repeat an earlier one's to a spare marker, so the guarantee holds for
any combination. Reference lines (perfect scaling, fits, B_crit, B_simple, the base result,
targets) are grey or black and dashed or dotted, never drawn with a series' marker. Batch sizes,
where they are the lines of a plot, get an ordered palette (plasma, light end cut off) and
alternating line styles, so that neighbouring batch sizes stay apart on paper and in greyscale.
Tables and plots list the series in the spec's order.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import matplotlib

from analysis.aggregate import Results, series_order

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
BLUE, ORANGE, GREEN, VERMILION, PURPLE, SKY, BLACK, YELLOW = OKABE_ITO

#: LR/warmup method -> (colour, marker): the same in every report
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "legw": (BLUE, "o"),
    "sqrt": (SKY, "^"),
    "goyal": (VERMILION, "s"),
    "linear-legw": (PURPLE, "D"),
    "none": (BLACK, "v"),
    "tuned": (GREEN, "P"),
    "adascale": (ORANGE, "X"),
    "noise-aware": (ORANGE, "h"),
    "autowu": (YELLOW, "*"),
}
#: markers for methods outside the table, and for resolving a repeat: none of them is a tabled one
SPARE_MARKERS = ["<", ">", "d", "p", "H", "8", "o", "s", "^", "D", "v", "P", "X", "*", "h"]
#: in a sweep of several optimizers the marker names the optimizer
OPTIMIZER_MARKERS = {"sgd": "o", "momentum": "s", "nesterov": "^", "adam": "D", "adamw": "v", "adagrad": "P",
                     "rmsprop": "X", "adadelta": "*", "lars": "h", "lamb": "p"}
#: the arm (augmentation or data-parallel algorithm) -> (line style, marker fill)
ARM_STYLES = {"": ("-", "full"), "disadv": ("--", "none"), "conadv": ("-.", "left"), "dmsgd": (":", "none"),
              "decentlam": ((0, (6, 2, 1, 2, 1, 2)), "left")}
ARM_LINESTYLES = {arm: ls for arm, (ls, _) in ARM_STYLES.items()}
#: an augmentation on a decentralized arm: the algorithm's line style, these fills
AUGMENT_FILL = {"disadv": "bottom", "conadv": "right"}
MARKERS = list(dict.fromkeys(m for _, m in METHOD_STYLES.values()))
LINESTYLES = ["-", "--", "-.", ":"]
REFERENCE = "#555555"  # perfect scaling, the base result, rule predictions
FIT = "#000000"  # fitted curves
MEASURED = "#7F7F7F"  # measured reference values (B_simple)
DIVERGED_MARK = "x"


@dataclass(frozen=True)
class SeriesStyle:
    color: str
    marker: str
    linestyle: str | tuple
    fillstyle: str = "full"

    def kw(self) -> dict:
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle, "fillstyle": self.fillstyle}

    def key(self) -> tuple:
        return self.color, self.marker, str(self.linestyle), self.fillstyle


def _stable(name: str) -> int:
    return zlib.crc32(name.encode())


def _parts(label: str) -> tuple[str, str, list[str]]:
    """(optimizer or '', LR/warmup method, arm parts) of a series label (``adam/legw:conadv``)."""
    optimizer, _, rest = label.rpartition("/")
    method, *arm = rest.split(":")
    return optimizer, method, arm


def arm_linestyle(arm: list[str]) -> tuple[str | tuple, str]:
    """(line style, marker fill) of an arm: ``[]``, ``["conadv"]``, ``["disadv", "dmsgd"]``."""
    if not arm:
        return ARM_STYLES[""]
    if len(arm) == 1:
        known = ARM_STYLES.get(arm[0])
        if known is not None:
            return known
        return LINESTYLES[1 + _stable(arm[0]) % (len(LINESTYLES) - 1)], "top"
    augment, algorithm = arm[0], arm[-1]
    return (ARM_LINESTYLES.get(algorithm, ":"), AUGMENT_FILL.get(augment, "top"))


def method_colors(methods: list[str]) -> dict[str, tuple[str, str]]:
    """LR/warmup method -> (colour, marker): the fixed table's, and for any other method a stable
    hash into the palette that skips the colours the other methods already use (while one is free)."""
    out = {m: METHOD_STYLES[m] for m in methods if m in METHOD_STYLES}
    for m in sorted(set(methods) - set(out)):  # sorted: independent of the spec's order
        used = {c for c, _ in out.values()}
        start = _stable(m)
        free = [OKABE_ITO[(start + i) % len(OKABE_ITO)] for i in range(len(OKABE_ITO))
                if OKABE_ITO[(start + i) % len(OKABE_ITO)] not in used]
        color = free[0] if free else OKABE_ITO[start % len(OKABE_ITO)]
        out[m] = (color, SPARE_MARKERS[start % 6])
    return out


def styles_for(labels: list[str]) -> dict[str, SeriesStyle]:
    """Series label -> style (see the module docstring), for the labels of one report in order."""
    parts = {label: _parts(label) for label in labels}
    several = len({o for o, _, _ in parts.values()}) > 1
    colors = method_colors(list(dict.fromkeys(m for _, m, _ in parts.values())))
    out: dict[str, SeriesStyle] = {}
    seen: set[tuple] = set()
    for label in labels:
        optimizer, method, arm = parts[label]
        color, marker = colors[method]
        if several:
            marker = OPTIMIZER_MARKERS.get(optimizer, SPARE_MARKERS[_stable(optimizer) % 6])
        linestyle, fill = arm_linestyle(arm)
        style = SeriesStyle(color, marker, linestyle, fill)
        for spare in SPARE_MARKERS:  # a repeat (only where the tables could not keep them apart)
            if style.key() not in seen:
                break
            style = SeriesStyle(color, spare, linestyle, fill)
        seen.add(style.key())
        out[label] = style
    return out


def series_styles(res: Results) -> dict[str, SeriesStyle]:
    """Label (as in the tables) -> style, in the spec's order."""
    return styles_for([label for label, _, _ in series_order(res)])


def batch_styles(batches) -> dict[int, tuple[tuple, str]]:
    """Batch size -> (colour, line style): ordered colours, neighbours on different line styles."""
    batches = sorted(int(b) for b in batches)
    cmap = matplotlib.colormaps["plasma"]
    n = max(1, len(batches) - 1)
    return {b: (cmap(0.85 * i / n), LINESTYLES[i % 2]) for i, b in enumerate(batches)}
