"""The report's opening: the answer a reader came for, before the evidence.

For a sweep with a target: per batch size, each arm's median steps to the target over the seeds
(how many seeds reached it, or how the others ended), the fewest of each row in bold; then, in
words, the direct answer to "Sqrt or Linear?" from the tuned LRs (analysis.tuning.lr_scaling), the
fitted critical batch, and how the spec's comparisons came out (the claims table follows it, each
with its seeds' interval). Everything here is also in the sections below; this puts it first.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.aggregate import Results
from analysis.tables import Table, _best_mask, _clean_mask, _columns


def _cell(r) -> tuple[str, float, str]:
    """(text, steps or NaN, status) of one aggregate row."""
    seeds, reached = int(r.seeds), int(r.reached)
    ended = [f"{int(r.get(k, 0))} {k.rstrip('s')}" for k in ("diverged", "failed", "errors") if r.get(k, 0)]
    if not math.isfinite(r.steps_to_target):
        why = ", ".join(ended) if ended else "missed the target"
        return f"- ({reached}/{seeds} reached; {why})", math.nan, "not reached"
    text = f"{r.steps_to_target:.0f}" + ("" if reached == seeds else f" ({reached}/{seeds} reached)")
    return text, float(r.steps_to_target), "reached" if reached == seeds else f"reached by {reached}/{seeds}"


def answer_table(res: Results, agg: pd.DataFrame) -> Table | None:
    """Median steps to the target per batch size and arm (``None`` without a target)."""
    if not res.target:
        return None
    batches, columns = _columns(res, agg)
    display = pd.DataFrame(index=pd.Index(batches, name="batch size"))
    numbers, status = pd.DataFrame(index=display.index), pd.DataFrame(index=display.index)
    for label, sub in columns:
        cells = [_cell(sub.loc[b]) if b in sub.index else ("", math.nan, "missing") for b in batches]
        display[label] = [c[0] for c in cells]
        numbers[label] = [c[1] for c in cells]
        status[label] = [c[2] for c in cells]
    best = _best_mask(numbers, higher=False, clean=_clean_mask(res, agg, display.index))
    sign = ">=" if res.higher_is_better else "<="
    title = f"The answer: steps to {res.metric} {sign} {res.target['value']} (median over seeds)"
    return Table("answer", title, display, numbers, best, "", status)


def answer_note(res: Results, verdicts: list, scaling: str, b_crit: float | None) -> str:
    """The words under the answer table."""
    parts = [("Median over seeds of the steps to the target; a seed that missed it counts as infinitely late, so "
              "a cell most seeds missed shows '-' with how its seeds ended. Bold: the fewest steps of the row among "
              "the cells where every seed ended cleanly.")]
    if b_crit:
        parts.append(f"Fitted critical batch: B_crit = {b_crit:,.0f} (section 'Critical batch').")
    if scaling:
        parts.append(f"Sqrt or Linear? {scaling}.")
    if verdicts:
        counts = pd.Series([v.verdict for v in verdicts]).value_counts()
        said = ", ".join(f"{n} {word}" for word, n in counts.items())
        parts.append(f"The spec's {len(verdicts)} comparisons, each judged on a 90% t-interval over the seeds: "
                     f"{said} (the next section, 'Claims').")
    return " ".join(parts)
