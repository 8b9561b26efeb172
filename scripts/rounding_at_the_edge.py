"""How float rounding grows near the edge of stability (docs/reports.md).

Two runs of the same mnist1d_mlp trial that differ only in micro-batch size (so only in the order
of float additions): the relative difference of their parameters after each step.

    .venv/bin/python scripts/rounding_at_the_edge.py [--batch 1024] [--steps 80]
"""

from __future__ import annotations

import argparse

import torch

from harness.spec import load_spec
from harness.trial.loop import Trial


def trajectory(method: str, batch: int, micro: int, steps: int) -> list[torch.Tensor]:
    trial = Trial(load_spec(data={"workload": "mnist1d_mlp", "optimizer": "momentum", "method": method,
                                  "batch_size": batch, "micro_batch_size": micro, "threads": 2}, kind="trial"))
    out = []
    for _ in range(steps):
        trial._train_step()
        out.append(torch.cat([p.detach().flatten() for p in trial.model.parameters()]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--micro", type=int, nargs=2, default=[256, 512])
    ap.add_argument("--steps", type=int, default=80)
    args = ap.parse_args()
    shown = [s for s in (1, 2, 5, 10, 20, 40, 60, 80) if s <= args.steps]
    print(f"relative parameter difference, micro-batch {args.micro[0]} vs {args.micro[1]}, B={args.batch}")
    for method in ("goyal", "none"):
        a, b = (trajectory(method, args.batch, m, args.steps) for m in args.micro)
        diffs = [f"{s}: {((a[s - 1] - b[s - 1]).norm() / a[s - 1].norm()).item():.1e}" for s in shown]
        print(f"  {method:<6} after step " + ", ".join(diffs))


if __name__ == "__main__":
    main()
