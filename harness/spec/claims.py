"""Which cells a study's claims read, so that a study can run only those (``claims_only``).

Each claim kind of ``analysis.reproduce`` reads a known set of (arm, batch size) cells; this module
says which, from the claim's params alone, before anything runs. Arms are labels as the report
names them (``legw``, ``tuned:conadv``, ``legw:dmsgd``: harness.spec.sweep.arm_label). A claim of
a kind not listed here keeps every cell of its arms, and a study without claims keeps everything.

* ``within_base``: the arm at B0 and at every batch size up to ``max_scale`` x B0;
* ``loses_or_diverges``: the arm at B0 and at the largest batch from ``min_scale`` x B0 (or at all
  of them with ``at: all``);
* ``better_than``: both arms at the largest batch size in [min_scale, max_scale] x B0 (or all);
* ``smaller_drop``: both arms at B0 and at the largest batch size;
* ``matches`` and ``speedup``: the arms at every batch size (the largest that reaches the target,
  and the projection, need them all).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.spec import SweepSpec

#: the claim kinds whose cells are known here (analysis.reproduce judges these)
KINDS = ("within_base", "loses_or_diverges", "better_than", "smaller_drop", "matches", "speedup")


def needed_cells(spec: SweepSpec) -> dict[str, set[int]] | None:
    """Arm label -> the batch sizes the claims read; None when every cell is needed (no claims, or
    a claim of a kind not listed in KINDS)."""
    batches = sorted(spec.axes.batch_sizes)
    out: dict[str, set[int]] = {}
    if not spec.claims:
        return None
    for claim in spec.claims:
        p, kind = claim.params, claim.kind
        if kind not in KINDS:
            return None
        arms = [p["method"]] + ([p["other"]] if "other" in p else [])
        b0 = spec.base_recipe(p.get("optimizer") or spec.optimizers()[0]).base_batch_size
        lo, hi = float(p.get("min_scale", 1)) * b0, float(p.get("max_scale", math.inf)) * b0
        in_range = [b for b in batches if lo <= b <= hi]
        largest = in_range[-1:] if p.get("at", "largest") == "largest" else in_range
        cells = {"within_base": [b0, *in_range], "loses_or_diverges": [b0, *largest], "better_than": largest,
                 "smaller_drop": [b0, batches[-1]]}.get(kind, batches)
        for arm in arms:
            out.setdefault(arm, set()).update(b for b in cells if b in batches)
    return out


def left_out(spec: SweepSpec) -> list[tuple[str, int]]:
    """(arm, batch size) of every cell of the axes that ``claims_only`` does not run."""
    from harness.spec.sweep import arm_label

    needed = needed_cells(spec) if spec.claims_only else None
    if needed is None:
        return []
    arms = [arm_label(m, a, g) for m in spec.axes.methods for a, g in spec.arms()]
    return [(arm, b) for arm in dict.fromkeys(arms) for b in sorted(spec.axes.batch_sizes)
            if b not in needed.get(arm, set())]
