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


class SweepProgress:
    def __init__(self, name: str, metric: str, console: Console | None = None):
        self.name, self.metric = name, metric
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
        secs = summary.get("train_seconds")
        line = f"[{done}/{self.total}] {trial_id:<34} {status:<10} {shown}" + (
            f"  ({steps} steps, {secs:.1f} s training)" if steps is not None and secs is not None else "")
        self.console.print(line, highlight=False, soft_wrap=True)
        if self.live:
            self.live.update(self._render())

    def stop(self) -> None:
        if self.live:
            self.live.stop()
            self.live = None

    # -- view ------------------------------------------------------------------------------------------
    def _render(self):
        elapsed = time.monotonic() - self.started
        done = self.already + sum(self.counts.values())
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "none yet"
        head = Text(f"sweep {self.name}: {done}/{self.total} finished ({counts}); {len(self.running)} running; "
                    f"{elapsed / 60:.1f} min")
        table = Table(box=None, pad_edge=False)
        for col in ("trial", "step", "examples", self.metric, "train loss"):
            table.add_column(col, justify="left" if col == "trial" else "right")
        for trial_id, r in sorted(self.running.items()):
            m = r.get("metric")
            table.add_row(trial_id, f"{r.get('step', 0)}/{r.get('total_steps', '?')}", f"{r.get('examples', 0):,}",
                          f"{m:.4f}" if isinstance(m, float) else "", f"{r.get('train_loss', float('nan')):.4f}")
        return Group(head, table)
