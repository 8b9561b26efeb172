"""Tune a workload's base recipe at B0: one trial per peak LR, everything else from the workload.

    .venv/bin/python scripts/tune_base_recipe.py mnist1d_mlp momentum 0.05 0.1 0.2 0.4 0.8 1.6

Prints a Markdown row per LR (final test metric or "diverged") and the choice by the rule used for
the shipped recipes (accuracy workloads): the smallest LR within 0.5 points of the best final
metric. One thread per trial, as in sweeps. This is how the numbers in docs/workloads.md were made.
"""

from __future__ import annotations

import sys

from harness.spec import load_spec
from harness.trial.loop import Trial


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__)
        return 2
    workload, optimizer, lrs = argv[0], argv[1], [float(x) for x in argv[2:]]
    results = {}
    for lr in lrs:
        spec = load_spec(data={"workload": workload, "optimizer": optimizer, "method": "none",
                               "recipe": {"peak_lr": lr}, "threads": 1, "eval": {"per_epoch": 1}})
        s = Trial(spec).run().summary
        results[lr] = s["final_metric"] if s["status"] == "complete" else None
        shown = "diverged" if results[lr] is None else f"{results[lr]:.4f}"
        print(f"| {workload} | {optimizer} | {lr:g} | {shown} |", flush=True)
    ok = {lr: v for lr, v in results.items() if v is not None}
    if ok:
        best = max(ok.values())
        pick = min(lr for lr, v in ok.items() if v >= best - 0.005)
        print(f"choice: peak_lr {pick:g} (best {best:.4f} at {max(ok, key=ok.get):g})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
