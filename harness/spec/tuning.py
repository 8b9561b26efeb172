"""The tuned arm's search of the peak LR: a bracketing search on a log lattice, and the one rule
that picks a tuned LR from its trials.

Shallue et al. (2018) tune every batch size and check that the best point is not on the edge of
the searched range; a tuned curve is only a reference if its optimum is *bracketed*: the LRs tried
just below and just above the best are both worse, at a spacing fine enough to matter. Here that
check is the search (``../shared/notes`` section 8 of the project's science notes; docs/methods.md):

1. **Lattice**: LR_j = anchor * step^j, with ``anchor`` the `none` rule's LR / ``lr_range_factor``
   (the same at every batch size, so tuned LRs of all batch sizes lie on one grid) and ``step``
   the final spacing (sqrt 2 by default).
2. **Coarse stage**: every ``coarse`` (4 by default) lattice points over [none / f, linear x f]
   of the rules' predictions, and the rules' predictions themselves (the none, sqrt and linear
   LRs lie on the lattice: sqrt 2 steps from the anchor at B = 2^m B0), all at once, so the tuned
   arm never does worse than the best rule's LR.
3. **Extension**: while the best tried LR is the smallest or the largest tried, one more coarse
   step beyond it (at most ``max_extensions`` per side).
4. **Refinement**: while a neighbour of the best is more than one lattice step away, the midpoint
   of that gap (both sides in one round), until both neighbours are one step (sqrt 2) away.

A candidate LR runs every seed of the sweep; its value is the **median over seeds** of each seed's
objective on the **validation split** (steps to the target there, a miss or a divergence counting
as twice the step budget; or the final validation metric), then the mean as a tie-break, then the
smaller LR. With ``tuning.select_seeds: first`` candidates run the first (smallest) seed alone, its
objective is the value, and once the search is over the chosen LR runs the other seeds.
Everything is deterministic, so a rerun of a spec tries the same LRs. The search is
pure (no Ray, no Optuna): ``harness.sweep.search.BracketStudyRun`` feeds it the results and runs
its candidates as Tune trials, each LR one Optuna trial (ask/tell, stored in ``optuna.db``).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from typing import Any, Iterable

PENALTY = 2.0  # a miss or a divergence counts as PENALTY x the step budget (harness.trial.objective)


@dataclass(frozen=True)
class Lattice:
    """LR_j = anchor * step ** j."""

    anchor: float
    step: float = math.sqrt(2.0)

    def lr(self, j: int) -> float:
        return self.anchor * self.step**j

    def index(self, lr: float) -> int:
        return round(math.log(lr / self.anchor) / math.log(self.step))


@dataclass(frozen=True)
class BracketSearch:
    """The candidates of one study, decided from the values of those tried (pure)."""

    lattice: Lattice
    lo: float  # the coarse stage spans [lo, hi]
    hi: float
    coarse: int = 4  # lattice steps between coarse points (a power of 2)
    max_extensions: int = 3
    #: LRs the coarse stage always tries (the rules' predictions), each rounded to the lattice, so
    #: the tuned arm is never worse than the best rule's LR
    always: tuple[float, ...] = ()

    def coarse_indices(self) -> list[int]:
        top = math.ceil(math.log(self.hi / self.lattice.anchor) / math.log(self.lattice.step) - 1e-9)
        first = self.lattice.index(self.lo)
        out = list(range(first, top + 1, self.coarse))
        if out[-1] < top:
            out.append(out[-1] + self.coarse)
        return sorted(set(out) | {self.lattice.index(lr) for lr in self.always})

    def _grid(self) -> tuple[int, int]:
        """The lowest and highest index of the regular coarse grid (the rules' LRs lie within)."""
        grid = [j for j in self.coarse_indices() if (j - self.lattice.index(self.lo)) % self.coarse == 0]
        return min(grid), max(grid)

    def max_candidates(self) -> int:
        levels = max(0, int(round(math.log2(self.coarse))))
        return len(self.coarse_indices()) + 2 * self.max_extensions + 2 * (levels + 1)

    def next(self, values: dict[int, tuple[float, ...]]) -> list[int]:
        """Lattice indices to try next, given every tried candidate's value (lower is better);
        [] when the search is over."""
        missing = [j for j in self.coarse_indices() if j not in values]
        if missing:
            return missing
        best = best_index(values)
        tried = sorted(values)
        below, above = [j for j in tried if j < best], [j for j in tried if j > best]
        out = []
        low, high = self._grid()
        # an edge is extended only when the best beats the LR next to it: a flat edge (every LR
        # there missed the target, or all diverged) has nothing beyond it to find
        beats = (lambda n: values[best] < values[n])
        if not below:
            if above and beats(above[0]) and sum(1 for j in tried if j < low) < self.max_extensions:
                out.append(best - self.coarse)
        elif best - below[-1] > 1:
            out.append(best - (best - below[-1]) // 2)
        if not above:
            if below and beats(below[-1]) and sum(1 for j in tried if j > high) < self.max_extensions:
                out.append(best + self.coarse)
        elif above[0] - best > 1:
            out.append(best + (above[0] - best) // 2)
        return out

    def bracket(self, values: dict[int, tuple[float, ...]]) -> dict[str, Any]:
        """Whether the best is bracketed, and at what spacing (a factor), for the report."""
        best = best_index(values)
        tried = sorted(values)
        below, above = [j for j in tried if j < best], [j for j in tried if j > best]
        lower = self.lattice.step ** (best - below[-1]) if below else None
        upper = self.lattice.step ** (above[0] - best) if above else None
        worse = [values[n] > values[best] for n in ([below[-1]] if below else []) + ([above[0]] if above else [])]
        return {"best_index": best, "best_lr": self.lattice.lr(best), "bracketed": bool(below and above),
                "strict": bool(below and above and all(worse)), "spacing_below": lower, "spacing_above": upper,
                "edge": None if below and above else ("low" if not below else "high"),
                "candidates": len(values)}


def best_index(values: dict[int, tuple[float, ...]]) -> int:
    """The best candidate: lowest value tuple, then the smaller LR."""
    return min(values, key=lambda j: (*values[j], j))


# -- a trial's objective on the validation split, and a candidate's value over seeds -------------------

def field(row: dict[str, Any], key: str) -> Any:
    """A trial row's value, from its columns or its ``extra`` JSON (keys beyond the store's columns)."""
    if key in row and row[key] is not None and row[key] == row[key]:
        return row[key]
    extra = row.get("extra")
    if isinstance(extra, str) and extra:
        return json.loads(extra).get(key)
    return None


def on_validation(row: dict[str, Any]) -> bool:
    """Whether the trial measured the validation split (stores before it did not)."""
    return field(row, "valid_target_reached") is not None or field(row, "valid_final_metric") is not None


def objective(row: dict[str, Any], by_steps: bool, budget_steps: int | None, higher_is_better: bool) -> float:
    """One trial's objective, lower is better: steps to the target on the validation split (a miss
    or a divergence: PENALTY x the budget), or minus the final validation metric (higher is better)
    or that metric; trials that never measured the validation split fall back on the test split."""
    valid = on_validation(row)
    if by_steps:
        reached = field(row, "valid_target_reached" if valid else "target_reached")
        steps = field(row, "valid_steps_to_target" if valid else "steps_to_target")
        return float(steps) if reached and steps is not None else PENALTY * float(budget_steps or 1)
    metric = field(row, "valid_final_metric" if valid else "final_metric")
    if metric is None or not math.isfinite(float(metric)):
        return math.inf
    return -float(metric) if higher_is_better else float(metric)


def candidate_value(objectives: Iterable[float]) -> tuple[float, float]:
    """(median, mean) over seeds; a diverged seed's inf makes the mean inf, never the median alone."""
    xs = list(objectives)
    return float(statistics.median(xs)), float(sum(xs) / len(xs)) if all(math.isfinite(x) for x in xs) else math.inf


def select(rows: list[dict[str, Any]], by_steps: bool, budget_steps: int | None,
           higher_is_better: bool, select_seeds: str = "all") -> tuple[float | None, dict[float, tuple[float, float]]]:
    """The tuned LR of one study's finished trials: the LR whose trials have the best
    ``candidate_value``, among the LRs that ran every seed the study ran; and every LR's value.
    ``select_seeds="first"`` (``tuning.select_seeds``): on the trials of the study's first seed alone."""
    if select_seeds == "first" and rows:
        first = min(r["seed"] for r in rows)
        rows = [r for r in rows if r["seed"] == first]
    seeds = {r["seed"] for r in rows}
    by_lr: dict[float, list[dict]] = {}
    for r in rows:
        key = next((lr for lr in by_lr if math.isclose(lr, r["peak_lr"], rel_tol=1e-6)), r["peak_lr"])
        by_lr.setdefault(key, []).append(r)
    values = {lr: candidate_value(objective(r, by_steps, budget_steps, higher_is_better) for r in rs)
              for lr, rs in by_lr.items() if {r["seed"] for r in rs} >= seeds}
    if not values:
        return None, {}
    return min(values, key=lambda lr: (*values[lr], lr)), values
