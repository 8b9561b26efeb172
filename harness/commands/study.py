"""Commands that run and read studies: ``sweep``, ``report`` and ``reproduce``."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from harness.errors import BatchscaleError


def sweep(spec_path: str, overrides: list[str], *, name: str | None = None, address: str | None = None,
          storage: str | None = None, results: str = "results", report: bool = True, quiet: bool = False,
          verbose: bool = False) -> int:
    """``batchscale sweep``: run (or resume, or grow) a sweep, then write its report."""
    from harness.spec import apply_overrides, load_spec, read_yaml
    from harness.spec.catalog import find_spec
    from harness.sweep import Sweep
    from harness.sweep.progress import SweepProgress

    spec_path = str(find_spec(spec_path))
    spec = load_spec(spec_path, overrides, kind="sweep")
    given = {"file": str(spec_path), "spec": read_yaml(spec_path), "overrides": overrides}
    given["effective"] = apply_overrides(given["spec"], given["overrides"])
    name = name or spec.name
    wl = spec.workload_obj()
    driver = Sweep(spec, given, results_root=results, name=name, address=address, storage=storage,
                   progress=None if quiet else SweepProgress(name, wl.metric, target=spec.target.value if spec.target else None),
                   verbose=verbose)
    try:
        out = driver.run()
    except KeyboardInterrupt:
        if driver.store.exists():
            print(f"interrupted: finished trials are saved in {driver.store.root}; run the same command again to "
                  "resume", file=sys.stderr)
        else:
            print(f"interrupted before any trial was recorded: nothing was written to {driver.store.root}",
                  file=sys.stderr)
        return 130
    counts = ", ".join(f"{k} {v}" for k, v in sorted(out["counts"].items())) or "no trials"
    if out.get("already_finished"):
        print(f"sweep '{out['name']}' already finished ({counts}); nothing to do. Results in {out['path']}")
    else:
        print(f"sweep '{out['name']}' {out['status']} in {out['wall_seconds'] / 60:.1f} min: {counts}")
        print(f"results in {out['path']} (sweep.json, trials.parquet, measurements.parquet)")
    for study, info in sorted(out["studies"].items()):
        if info.get("best_peak_lr") and info.get("search") == "bracket":
            b = info.get("bracket") or {}
            where = (f"bracketed at x{max(b['spacing_below'], b['spacing_above']):.3g}" if b.get("bracketed")
                     else f"NOT bracketed: best at the {b.get('edge')} edge of the LRs tried")
            print(f"  {study}: tuned peak LR {info['best_peak_lr']:.4g} ({b.get('candidates')} LRs x "
                  f"{len(info['seeds'])} seeds; {where})")
        elif info.get("best_peak_lr"):
            print(f"  {study}: best peak LR {info['best_peak_lr']:.4g} ({wl.metric} {info['best_metric']:.4f})")
    if report:
        return write_report(out["path"], quiet=quiet)
    print(f"report: batchscale report {out['path']}")
    return 0


def check_budgets(results: str) -> None:
    """Run the protocol's pilot for a finished sweep's spec (as given) and record, in its
    ``sweep.json``, the budget table it implies, marked as checked after the run."""
    from harness.results.store import ResultsStore, now
    from harness.spec import load_spec
    from harness.sweep import protocol

    store = ResultsStore(results)
    meta = store.read_meta()
    if (meta.get("protocol") or {}).get("checked") and not meta["protocol"].get("checked_after_run"):
        raise BatchscaleError(f"report --check-budgets: {results} ran under its protocol's pilot already "
                              "(sweep.json: protocol); its budgets are recorded, nothing to check")
    given = (meta.get("spec_given") or {}).get("effective") or meta["spec_resolved"]
    spec = load_spec(data=given, kind="sweep")
    n = meta["workload"]["dataset_size"]
    spec.workload_obj().prepare()
    estimates = protocol.estimates(spec, n)
    budgets = protocol.budget_table(spec, n, estimates)
    for row in budgets:  # the evaluation grid the run used, not the one the protocol would have planned
        b = row["batch_size"]
        used = spec.eval.every_examples or math.ceil(n / spec.eval.per_epoch)
        row["eval_every_steps"] = max(1, math.ceil(used / b))
        if row["steps_predicted"]:
            row["resolution_predicted"] = (row["eval_every_steps"] - 1) / row["steps_predicted"]
    for line in protocol.format_table(budgets, estimates, meta["workload"]["metric"]):
        print(line)
    store.update_meta(protocol={"kind": spec.protocol.kind, "margin": spec.protocol.margin, "checked": bool(estimates),
                                "estimates": {o: e.to_json() for o, e in estimates.items()}, "budgets": budgets,
                                "checked_after_run": {"at": now(), "by": "batchscale report --check-budgets"}})


def write_report(results: str, *, quiet: bool = False, check: bool = False) -> int:
    """``batchscale report``: tables, plots and the HTML report of a sweep's results."""
    from analysis.report import build_report

    if check:
        check_budgets(results)
    try:
        out = build_report(results)
    except ValueError as e:
        raise BatchscaleError(str(e)) from None
    if not quiet:
        for table in out["tables"]:
            print(table.title)
            print(table.display.to_string())
            print()
        _print_verdicts(out["verdicts"])
    print(f"report: {out['html']} (and report.md, tables/, plots/ beside it)")
    return 0


def _print_verdicts(verdicts) -> None:
    if not verdicts:
        return
    print("paper claims:")
    for v in verdicts:
        print(f"  [{v.verdict}] {v.text}")
        print(f"      measured: {v.measured}")
        if getattr(v, "interval", ""):
            print(f"      interval: {v.interval}")
        if v.published:
            print(f"      published: {v.published}")
    print()


def reproduce(study: str, overrides: list[str], *, name: str | None = None, address: str | None = None,
              results: str = "results", quiet: bool = False, verbose: bool = False) -> int:
    """``batchscale reproduce``: run (or reuse) a paper study, then judge its claims in the report."""
    from harness.spec.catalog import find_study

    return sweep(str(find_study(study)), overrides, name=name, address=address, results=results, quiet=quiet,
                 verbose=verbose)
