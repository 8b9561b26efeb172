"""Plots (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness.schedules import lr_table  # noqa: E402


def _save(fig, path: Path) -> list[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [path]


def plot_schedules(recipes, path: Path, max_points: int = 2000) -> list[Path]:
    """LR against epochs for each (method, batch size) recipe."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in recipes:
        rows = lr_table(r, every=max(1, r.total_steps // max_points))
        ax.plot([e for _, e, _ in rows], [lr for _, _, lr in rows], label=f"{r.method} B={r.batch_size}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning-rate schedules")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)
