"""The sweep's live view: running trials and counts while it runs, a line per finished trial.

On a terminal it is a ``rich`` live table; in a log (CI, ``nohup``) it prints one line per
finished trial, so the output stays readable either way.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def target_words(summary: dict[str, Any], metric: str, target: float | None) -> str:
    """Whether a trial reached the study's target, in words: "target reached at step N", or
    "target missed (best accuracy 0.7746 < 0.85)"; "" without a target."""
    if target is None or summary.get("status") in ("diverged", "failed"):
        return ""
    if summary.get("target_reached"):
        return f"target reached at step {summary.get('steps_to_target')}"
    best = summary.get("best_metric")
    if not isinstance(best, (int, float)):
        return "target missed"
    side = "<" if summary.get("higher_is_better", True) else ">"
    return f"target missed (best {metric} {best:.4f} {side} {target:g})"


def eta_words(elapsed: float, finished: int, remaining: int) -> str:
    """The sweep's remaining time at this session's pace so far ("about 4 min left", "under a minute left"); "" before the
    first trial of the session ends. An estimate: a bracketing search's count is an upper bound."""
    if finished <= 0 or remaining <= 0:
        return ""
    left = elapsed / finished * remaining
    return f"about {left / 60:.0f} min left" if left >= 60 else "under a minute left"


class SweepProgress:
    def __init__(self, name: str, metric: str, console: Console | None = None, target: float | None = None):
        self.name, self.metric, self.target = name, metric, target
        self.console = console or Console()
        self.live: Live | None = None
        self.running: dict[str, dict[str, Any]] = {}
        self.counts: dict[str, int] = {}
        self.total = 0
        self.started = time.monotonic()

    # -- driver hooks --------------------------------------------------------------------------------
    def start(self, total: int, done: set[str]) -> None:
        self.total, self.already = total, len(done)
        self.started = time.monotonic()
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self.live.start()
        else:
            self.console.print(f"sweep {self.name}: {total} trials, {len(done)} already finished")

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.running[trial_id] = result
        if self.live:
            self.live.update(self._render())

    def finished(self, trial_id: str, status: str, summary: dict[str, Any]) -> None:
        self.running.pop(trial_id, None)
        self.counts[status] = self.counts.get(status, 0) + 1
        done = self.already + sum(self.counts.values())
        metric = summary.get("final_metric")
        shown = f"{self.metric} {metric:.4f}" if isinstance(metric, float) else ""
        steps = summary.get("steps")
        # training seconds as the report counts them: steps x the mean step time without the
        # noise-scale measurement (docs/reports.md#timing); the raw clock where that is unknown
        model = summary.get("model_step_seconds")
        secs = model * steps if isinstance(model, (int, float)) and steps else summary.get("train_seconds")
        said = target_words({"status": status, **summary}, self.metric, self.target)
        line = f"[{done}/{self.total}] {trial_id:<34} {status:<10} {shown}" + (
            f"  ({steps} steps, {secs:.1f} s training)" if steps is not None and secs is not None else "") + (
            f"; {said}" if said else "")
        self.console.print(line, highlight=False, soft_wrap=True)
        if self.live:
            self.live.update(self._render())
        elif (tenth := max(1, self.total // 10)) and done % tenth == 0 and done < self.total:
            # in a log, the overall ETA every tenth of the sweep
            eta = eta_words(time.monotonic() - self.started, sum(self.counts.values()), self.total - done)
            if eta:
                self.console.print(f"sweep {self.name}: {done}/{self.total} finished, {eta} "
                                   f"(at most {self.total} trials)", highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.live:
            self.live.stop()
            self.live = None

    # -- view ------------------------------------------------------------------------------------------
    def _render(self):
        elapsed = time.monotonic() - self.started
        done = self.already + sum(self.counts.values())
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "none yet"
        eta = eta_words(elapsed, sum(self.counts.values()), self.total - done)
        head = Text(f"sweep {self.name}: {done}/{self.total} finished ({counts}); {len(self.running)} running; "
                    f"{elapsed / 60:.1f} min" + (f"; {eta} (at most {self.total} trials)" if eta else ""))
        table = Table(box=None, pad_edge=False)
        for col in ("trial", "step", "examples", self.metric, "train loss"):
            table.add_column(col, justify="left" if col == "trial" else "right")
        for trial_id, r in sorted(self.running.items()):
            m = r.get("metric")
            table.add_row(trial_id, f"{r.get('step', 0)}/{r.get('total_steps', '?')}", f"{r.get('examples', 0):,}",
                          f"{m:.4f}" if isinstance(m, float) else "", f"{r.get('train_loss', float('nan')):.4f}")
        return Group(head, table)
