"""What a finished run writes about its tuned studies: each study to ``optuna.db`` (for
optuna-dashboard) and its summary to ``sweep.json`` (``studies``): for a bracketing study
(harness.spec.tuning) every LR tried with its value over the seeds, the tuned LR and its bracket; for a
TPE study its best trial."""

from __future__ import annotations

from typing import Any

from harness.results.store import FINAL, Status
from harness.sweep.plan import Plan
from harness.sweep.protocol import best_trial


def record_studies(store, spec, p: Plan, mode: str) -> None:
    """Each study's trials to ``optuna.db`` (optuna-dashboard), and its summary to sweep.json."""
    from harness.sweep.search import export_optuna_study

    storage_url = f"sqlite:///{(store.root / 'optuna.db').resolve()}"  # optuna-dashboard <url>
    rows, measurements = store.trial_rows(), None
    higher = spec.workload_obj().higher_is_better
    studies = dict(store.read_meta().get("studies", {}))
    for study in p.studies:
        ours = [t for t in rows if t.get("study") == study.name]
        if studies.get(study.name, {}).get("trials") == len(ours):
            continue  # recorded by an earlier run, unchanged
        if study.search == "bracket":
            studies[study.name] = _record_bracket(study, ours, storage_url, higher)
            continue
        measurements = measurements if measurements is not None else store.measurement_rows()
        t = spec.tuning
        export_optuna_study(study, ours, [m for m in measurements if m["trial_id"].startswith(study.name)],
                            mode, storage_url, t.search_warmup and t.warmup_epochs_range)
        by_steps = study.objective == "steps"
        scored = [t for t in ours if t["status"] == Status.COMPLETE and t["final_metric"] is not None]
        best = best_trial(scored, higher, by_steps)
        studies[study.name] = {
            "status": "finished", "optimizer": study.optimizer, "batch_size": study.batch_size,
            "seed": study.seed, "trials": len(ours), "lr_range": list(study.lr_range), "storage": storage_url,
            "best_peak_lr": best["peak_lr"] if best else None, "best_metric": best["final_metric"] if best else None,
            "best_trial_id": best["trial_id"] if best else None,
            "selects_on": "steps_to_target" if by_steps else "final_metric",
            "best_steps_to_target": best.get("steps_to_target") if best else None,
        }
    store.update_meta(studies=studies)


def _record_bracket(study, rows: list[dict], storage_url: str, higher: bool) -> dict[str, Any]:
    """A bracketing study's summary (every LR's value over the seeds, the tuned LR, its bracket)
    for sweep.json, and its candidates as trials of an Optuna study in ``optuna.db``."""
    from harness.spec.tuning import select
    from harness.sweep.search import export_bracket_study

    done = [r for r in rows if r["status"] in FINAL]
    lr, values = select(done, study.objective == "steps", study.budget_steps, higher, study.select_seeds)
    search = study.bracket
    by_index = {search.lattice.index(x): v for x, v in values.items()}
    export_bracket_study(study, values, storage_url)
    return {"status": "finished", "search": "bracket", "optimizer": study.optimizer,
            "batch_size": study.batch_size, "seeds": study.seeds, "trials": len(rows),
            "lr_range": list(study.lr_range), "storage": storage_url, "best_peak_lr": lr,
            "budget_steps": study.budget_steps,
            "selects_on": ("validation steps_to_target" if study.objective == "steps" else "validation final_metric")
            + (f" (seed {min(study.seeds)}; the chosen LR then ran every seed)" if study.select_seeds == "first"
               else " (median over seeds)"), "select_seeds": study.select_seeds,
            "candidates": [{"peak_lr": x, "median": v[0], "mean": v[1]} for x, v in sorted(values.items())],
            "bracket": search.bracket(by_index) if by_index else None}

