"""A small results store written by hand, with answers known in advance (see test_analysis)."""

from __future__ import annotations

from pathlib import Path

from harness.results.store import ResultsStore

BASE = {"base_batch_size": 128, "peak_lr": 0.1, "warmup_epochs": 0.05, "warmup_init": "zero", "epochs": 10,
        "decay": {"kind": "poly", "power": 2.0, "end_factor": 0.0}, "optimizer": {"name": "momentum"},
        "grad_clip_norm": None, "source": "hand-made"}

CLAIMS = [
    {"id": "legw-flat", "text": "Sqrt+LEGW within 2 points of B0 up to 16x", "kind": "within_base",
     "params": {"method": "legw", "max_scale": 16, "tolerance": 0.02}, "published": "no loss up to 64x"},
    {"id": "legw-flat-strict", "text": "Sqrt+LEGW within 1.5 points of B0 up to 16x", "kind": "within_base",
     "params": {"method": "legw", "max_scale": 16, "tolerance": 0.015}},
    {"id": "goyal-breaks", "text": "Linear+fixed loses or diverges at the largest batch", "kind": "loses_or_diverges",
     "params": {"method": "goyal", "tolerance": 0.01}},
    {"id": "legw-beats-goyal", "text": "LEGW better than Goyal at the largest batch", "kind": "better_than",
     "params": {"method": "legw", "other": "goyal"}},
    {"id": "goyal-beats-legw", "text": "Goyal better than LEGW at the largest batch", "kind": "better_than",
     "params": {"method": "goyal", "other": "legw"}},
    {"id": "speedup-3", "text": "LEGW reaches the target 3x faster in steps", "kind": "speedup",
     "params": {"method": "legw", "min": 3.0, "kind": "steps"}},
    {"id": "speedup-4", "text": "LEGW reaches the target 4x faster in steps", "kind": "speedup",
     "params": {"method": "legw", "min": 4.0, "kind": "steps"}},
    {"id": "absent", "text": "Sqrt without LEGW is worse than LEGW", "kind": "better_than",
     "params": {"method": "legw", "other": "sqrt"}},
]

# (method, batch, seed) -> (status, final, steps_to_target, seconds_to_target, peak_lr)
GRID = {
    ("legw", 128, 0): ("complete", 0.88, 400, 4.0, 0.1),
    ("legw", 128, 1): ("complete", 0.89, 420, 4.2, 0.1),
    ("legw", 128, 2): ("complete", 0.90, 380, 3.8, 0.1),
    ("legw", 512, 0): ("complete", 0.885, 110, 2.0, 0.2),
    ("legw", 512, 1): ("complete", 0.885, 100, 1.9, 0.2),
    ("legw", 512, 2): ("complete", 0.885, None, None, 0.2),
    ("legw", 2048, 0): ("complete", 0.88, None, None, 0.4),
    ("legw", 2048, 1): ("complete", 0.87, None, None, 0.4),
    ("legw", 2048, 2): ("complete", 0.86, 30, 0.5, 0.4),
    ("goyal", 128, 0): ("complete", 0.89, 400, 4.0, 0.1),
    ("goyal", 128, 1): ("complete", 0.89, 400, 4.0, 0.1),
    ("goyal", 128, 2): ("complete", 0.89, 400, 4.0, 0.1),
    ("goyal", 512, 0): ("complete", 0.87, 120, 2.0, 0.4),
    ("goyal", 512, 1): ("complete", 0.87, 120, 2.0, 0.4),
    ("goyal", 512, 2): ("diverged", None, None, None, 0.4),
    ("goyal", 2048, 0): ("diverged", None, None, None, 1.6),
    ("goyal", 2048, 1): ("diverged", None, None, None, 1.6),
    ("goyal", 2048, 2): ("diverged", None, None, None, 1.6),
}
# tuned studies (seed 0): batch -> [(peak_lr, status, final)]
TUNED = {
    128: [(0.05, "complete", 0.87), (0.1, "complete", 0.90), (0.2, "diverged", None)],
    2048: [(0.3, "complete", 0.50), (0.6, "complete", 0.86), (1.2, "complete", 0.84),
           (2.4, "complete", 0.11),  # failed: 0.11 is 1% of the way from chance (0.1) to the sweep's best (0.9)
           (1.8, "complete", 0.70, "rising")],  # failed: its training loss ends above its start
}


# with ``failed_cell``: a method whose every seed ends at chance at 2048 (10 classes: chance 0.1)
NONE_GRID = {("none", 128, s): ("complete", 0.86, 500, 5.0, 0.1) for s in range(3)} | {
    ("none", 2048, s): ("complete", 0.10 + 0.002 * s, None, None, 0.1) for s in range(3)}


def write_handmade_store(root: Path, failed_cell: bool = False, model_step_seconds: float | None = None,
                         lr_range: tuple[float, float] = (0.01, 2.0)) -> ResultsStore:
    """``model_step_seconds``: every trial also records its model-only step time (harness.trial.loop)."""
    store = ResultsStore(root)
    methods = ["goyal", "legw", "tuned"] + (["none"] if failed_cell else [])
    spec = {"name": "handmade", "description": "hand-made results with known answers", "workload": "fmnist_lstm",
            "target": {"metric": "accuracy", "value": 0.85, "stop": False}, "budget": {"epochs": None, "examples": None},
            "axes": {"batch_sizes": [128, 512, 2048], "methods": methods,
                     "optimizers": ["momentum"], "seeds": [0, 1, 2]},
            "claims": CLAIMS}
    store.root.mkdir(parents=True, exist_ok=True)
    store.write_meta({
        "name": "handmade", "status": "finished", "spec_hash": "x", "spec_given": {"effective": spec},
        "spec_resolved": spec,
        "workload": {"name": "fmnist_lstm", "metric": "accuracy", "higher_is_better": True, "dataset_size": 60000,
                     "summary": "", "base_recipes": {"momentum": BASE}},
        "trials": [], "studies": {f"momentum-tuned-b{b}-s0": {
            "status": "finished", "optimizer": "momentum", "batch_size": b, "seed": 0, "trials": len(ts),
            "lr_range": list(lr_range), "storage": "", "best_peak_lr": max((t for t in ts if t[2]), key=lambda t: t[2])[0],
            "best_metric": max(t[2] for t in ts if t[2])} for b, ts in TUNED.items()},
        "environment": {"host": "test", "cpu": "test cpu", "cpu_count": 2, "python": "3", "torch": "x", "ray": "x",
                        "optuna": "x", "batchscale": "x"},
        "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T01:00:00+00:00", "sessions": [],
    })

    def row(trial_id, method, batch, seed, status, final, steps, secs, lr, study=None):
        total = -(-10 * 60000 // batch)
        return {"trial_id": trial_id, "workload": "fmnist_lstm", "optimizer": "momentum", "method": method,
                "batch_size": batch, "seed": seed, "study": study, "status": status, "metric_name": "accuracy",
                "higher_is_better": True, "final_metric": final, "best_metric": None if final is None else final + 0.001,
                "peak_lr": lr, "warmup_epochs": 0.05 * batch / 128, "warmup_steps": 24, "total_steps": total,
                "steps_per_epoch": 60000 / batch, "dataset_size": 60000, "micro_batch_size": min(batch, 512),
                "steps": total, "examples_seen": total * batch, "train_seconds": 10.0, "wall_seconds": 12.0,
                "throughput": total * batch / 10.0, "target_reached": steps is not None, "steps_to_target": steps,
                "examples_to_target": None if steps is None else steps * batch, "seconds_to_target": secs,
                "diverged_step": 5 if status == "diverged" else None, "parameters": 100_000,
                **({"model_step_seconds": model_step_seconds, "model_throughput": batch / model_step_seconds,
                    "timing_steps": total // 8}
                   if model_step_seconds else {})}

    def curve(final, batch, status, noise=None, rising=False):
        total = -(-10 * 60000 // batch)
        if status == "diverged":
            return [{"step": 5, "examples": 5 * batch, "epoch": 5 * batch / 60000, "train_loss": float("nan"),
                     "eval_loss": float("nan"), "metric": float("nan"), "lr": 0.1, "train_seconds": 0.1}]
        return [{"step": total * i // 4, "examples": total * i // 4 * batch, "epoch": 2.5 * i, "train_loss": i if rising else 1 / i,
                 "eval_loss": 1 / i, "metric": final * (0.7 + 0.075 * i), "lr": 0.1, "train_seconds": 2.5 * i,
                 "noise_scale": None if noise is None else noise * i} for i in range(1, 5)]

    for (method, batch, seed), (status, final, steps, secs, lr) in (GRID | (NONE_GRID if failed_cell else {})).items():
        tid = f"momentum-{method}-b{batch}-s{seed}"
        # legw trials log a noise scale of 100 * batch/128 * epoch-quarter i (i = 1..4)
        noise = 100 * batch / 128 if method == "legw" else None
        store.record(row(tid, method, batch, seed, status, final, steps, secs, lr), curve(final, batch, status, noise))
    for batch, trials in TUNED.items():
        for i, (lr, status, final, *rising) in enumerate(trials):
            study = f"momentum-tuned-b{batch}-s0"
            reached = final is not None and final >= 0.85
            store.record(row(f"{study}-t{i}", "tuned", batch, 0, status, final, 300 if reached else None,
                             3.0 if reached else None, lr, study), curve(final, batch, status, rising=bool(rising)))
    store.consolidate()  # as a finished sweep leaves it
    return store
