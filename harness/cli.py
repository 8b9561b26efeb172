"""The ``batchscale`` command.

    batchscale train SPEC [--set KEY=VALUE ...]       one trial in this process
    batchscale schedule SPEC [--batch-size B ...]     resolved recipes and the LR at every step
    batchscale plan SPEC                              trial counts, budgets, recipes, time estimate
    batchscale sweep SPEC [--address ...]             a study on Ray Tune (see harness.sweep)
    batchscale report RESULTS_DIR                     tables, plots and the HTML report
    batchscale reproduce NAME                         a LEGW paper study, claim by claim
    batchscale list                                   workloads, methods, optimizers

Bad input prints one line ``batchscale: error: ...`` and exits non-zero (2 for a spec error).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path

from harness.errors import BatchscaleError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"value {text!r} is not allowed; allowed: a positive integer")
    return value


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="YAML spec file (see experiments/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key of the spec (dotted, value in YAML), e.g. --set budget.epochs=2")
    p.add_argument("--data-dir", help="folder holding datasets (else BATCHSCALE_DATA_DIR, then Debian paths)")


def _overrides(args) -> list[str]:
    extra = [f"data_dir={args.data_dir}"] if getattr(args, "data_dir", None) else []
    return [*args.overrides, *extra]


# --- train --------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from harness.spec import load_spec
    from harness.trial import Trial

    from harness.protocol import with_b_noise

    spec = with_b_noise(load_spec(args.spec, _overrides(args), kind="trial"))
    workers = spec.data_parallel.workers
    trial = Trial(spec, world=(0, workers))
    r = trial.recipe
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or f"results/train/{spec.workload}-{r.method}-b{r.batch_size}-s{spec.seed}-{stamp}")
    print(f"{spec.workload}: {r.method} at B={r.batch_size} (k={r.scale:g}): peak LR {r.peak_lr:.4g}, warmup "
          f"{r.warmup_steps} steps ({r.warmup_epochs:g} epochs), {r.total_steps} steps, micro-batch "
          f"{trial.micro_batch_size}, {trial.device}")
    for w in r.warnings:
        print(f"warning: {w}")
    if trial.noise_note:
        print(f"note: {trial.noise_note}")
    result = _train_data_parallel(spec, trial) if workers > 1 else _train_here(trial, args.quiet)
    _write_train(out, spec, result)

    s, metric = result.summary, trial.workload.metric
    best = f"{s['best_metric']:.4f}" if s["best_metric"] is not None else "n/a"
    print(f"{result.status}: {s['steps']} steps, {s['train_seconds']:.1f} s training "
          f"({s['throughput']:.0f} examples/s), best {metric} {best}"
          + (f", diverged at step {s['diverged_step']}" if s["diverged_step"] else "")
          + (f"; target reached at step {s['steps_to_target']}" if s["target_reached"] else "")
          + (f"; noise scale B_simple {s['noise_scale']:.0f}" if s.get("noise_scale") else ""))
    print(f"results in {out}")
    return 0


def _train_here(trial, quiet: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    metric = trial.workload.metric
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=quiet) as bar:
        task = bar.add_task("train", total=trial.recipe.total_steps, info="")
        last = [0.0]

        def on_step(t):
            now = time.monotonic()
            if now - last[0] > 0.2:
                bar.update(task, completed=t.step)
                last[0] = now

        def on_eval(t, row):
            bar.update(task, completed=t.step, info=f"epoch {row['epoch']:.2f} loss {row['train_loss']:.4f} "
                                                     f"{metric} {row['metric']:.4f}")

        return trial.run(on_eval=on_eval, on_step=on_step)


def _train_data_parallel(spec, trial):
    """A data-parallel trial: its workers through Ray Train on an embedded Ray."""
    import tempfile

    from harness.distributed import run_standalone
    from harness.trial import TrialResult

    workers, gpu = spec.data_parallel.workers, trial.device.type == "cuda"
    print(f"data-parallel: {workers} workers (Ray Train, {'nccl' if gpu else 'gloo'}), {trial.local_batch} examples "
          f"each per step")
    with tempfile.TemporaryDirectory(prefix="batchscale-train-") as storage:
        res = run_standalone(spec.model_dump(mode="json"), workers, spec.threads or 1, 1.0 if gpu else 0.0, storage)
    return TrialResult(res["summary"]["status"], trial.recipe, res["measurements"], res["summary"])


def _write_train(out: Path, spec, result) -> None:
    from harness.store import write_json_atomic, write_table

    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "measurements.parquet", result.measurements)
    write_json_atomic(out / "recipe.json", result.recipe.model_dump(mode="json"))
    write_json_atomic(out / "summary.json", result.summary)
    write_json_atomic(out / "spec.json", spec.model_dump(mode="json"))


# --- schedule -----------------------------------------------------------------------------------


def _schedule_recipes(args):
    from harness.scaling import resolve
    from harness.spec import RecipeSpec, SweepSpec, load_spec

    spec = load_spec(args.spec, _overrides(args))
    if isinstance(spec, RecipeSpec):
        base, n = spec.recipe, spec.dataset_size
        batches = args.batch_size or spec.batch_sizes or [base.base_batch_size]
        methods = args.method or spec.methods
    else:
        wl = spec.workload_obj()
        n = wl.train_size()
        if isinstance(spec, SweepSpec):
            base = spec.base_recipe(args.optimizer or spec.optimizers()[0])
            batches = args.batch_size or spec.axes.batch_sizes
            methods = args.method or [m for m in spec.axes.methods if m != "tuned"] or ["legw"]
        else:
            base = spec.base_recipe()
            batches = args.batch_size or [spec.batch_size or base.base_batch_size]
            methods = args.method or [spec.method]
        epochs = spec.budget.epochs_for(n)
        return [resolve(base, b, m, n, epochs=epochs) for m in methods for b in batches]
    return [resolve(base, b, m, n) for m in methods for b in batches]


def recipe_table(recipes) -> list[str]:
    import math

    head = (f"{'method':>12} {'batch':>7} {'k':>6} {'peak_lr':>10} {'log2 lr':>8} {'realised':>10} "
            f"{'warmup_ep':>10} {'warmup_st':>9} {'total_st':>9} {'steps/ep':>9}")
    lines = [head]
    for r in recipes:
        lines.append(f"{r.method:>12} {r.batch_size:>7} {r.scale:>6g} {r.peak_lr:>10.5g} {math.log2(r.peak_lr):>8.3f} "
                     f"{r.realised_peak_lr:>10.5g} {r.warmup_epochs:>10.5g} {r.warmup_steps:>9} {r.total_steps:>9} "
                     f"{r.steps_per_epoch:>9.2f}")
    for r in recipes:
        for w in r.warnings:
            lines.append(f"warning: {r.method} B={r.batch_size}: {w}")
    return lines


def cmd_schedule(args) -> int:
    from harness.schedules import lr_table

    recipes = _schedule_recipes(args)
    table = recipe_table(recipes)
    if args.recipe_only:
        print("\n".join(table))
    else:
        print("\n".join("# " + line for line in table))
        print("method,batch_size,step,epoch,lr")
        out = sys.stdout
        for r in recipes:
            for step, epoch, lr in lr_table(r, args.every):
                out.write(f"{r.method},{r.batch_size},{step},{epoch:.6g},{lr:.8g}\n")
    if args.plot:
        from analysis.plots import plot_schedules

        plot_schedules(recipes, Path(args.plot))
        print(f"# plot written to {args.plot}", file=sys.stderr)
    return 0


# --- plan ---------------------------------------------------------------------------------------


PROTOCOL_SOURCES = {"fixed_epochs": "the same epoch budget at every batch size, no retuning (You et al. 2019; "
                                    "Goyal et al. 2017)",
                    "steps_to_result": "a step budget per batch size, trials stop at the target, tuned arm selects "
                                       "on steps (Shallue et al. 2018)"}


def cmd_plan(args) -> int:
    """What a sweep spec will run, whether its budgets can reach the target, and how long it takes."""
    import os

    from harness import protocol
    from harness.scaling import AUTOMATIC_METHODS, resolve
    from harness.spec import load_spec
    from harness.sweep import plan

    spec = load_spec(args.spec, _overrides(args), kind="sweep")
    wl = spec.workload_obj()
    wl.prepare()
    n = wl.train_size()
    p = spec.protocol
    print(f"plan: {spec.name} ({wl.name}, {n:,} training examples); protocol {p.kind}: {PROTOCOL_SOURCES[p.kind]}")
    if spec.target is None:
        print("no target: budgets are not checked (steps to what?)")
    estimates = protocol.estimates(spec, n)
    rows = protocol.budget_table(spec, n, estimates)
    the_plan = plan(spec, n, {}, rows)
    counts: dict[str, int] = {}
    per_cell: dict[tuple, int] = {}
    for r in the_plan.rows:
        k = r.get("trials", 1)
        counts[r["method"]] = counts.get(r["method"], 0) + k
        per_cell[(r["optimizer"], r["batch_size"])] = per_cell.get((r["optimizer"], r["batch_size"]), 0) + k
    studies = len(the_plan.studies)
    print(f"trials: {sum(counts.values())} = " + ", ".join(
        f"{m} {c}" + (f" ({studies} studies x {spec.tuning.trials})" if m == "tuned" else "") for m, c in counts.items())
        + f"; {len(spec.axes.seeds)} seed(s)")
    if estimates or rows:
        print("budgets (S(B) = steps the best rule needs, needed = margin x S(B); resol = evaluation interval / S(B)):")
        for line in protocol.format_table(rows, estimates, wl.metric):
            print("  " + line)
    by_cell = {(r["optimizer"], r["batch_size"]): r for r in rows}
    recipes = []
    for optimizer in spec.optimizers():
        for method in (m for m in spec.axes.methods if m not in AUTOMATIC_METHODS):
            for b in spec.axes.batch_sizes:
                row = by_cell[(optimizer, b)]
                trial = spec.trial_spec(optimizer, method, b, spec.axes.seeds[0],
                                        **protocol.trial_settings(spec, row, n))
                recipes.append(resolve(trial.base_recipe(), b, method, n, epochs=row["budget_steps"] * b / n))
    if recipes:
        print("recipes (peak LR as the rule gives it; realised = the largest LR the schedule reaches):")
        for line in recipe_table(recipes):
            print("  " + line)
    probe_batches = sorted({min(spec.axes.batch_sizes), max(spec.axes.batch_sizes)})
    throughput = protocol.throughput_probe(spec, spec.optimizers()[0], probe_batches, seconds=args.probe_seconds)
    slots = max(1, (os.cpu_count() or 1) // spec.resources.cpus) if not args.slots else args.slots
    if spec.max_concurrent:
        slots = min(slots, spec.max_concurrent)
    t = protocol.time_estimate(spec, rows, throughput, per_cell, slots, overhead_s=args.trial_overhead_s)
    print("throughput probe on this machine (" + f"{spec.resources.cpus} thread(s) per trial): "
          + ", ".join(f"B={b}: {v:,.0f} examples/s" for b, v in throughput.items()))
    print(f"estimated wall time: {t['low_s'] / 60:.1f} - {t['high_s'] / 60:.1f} min on {slots} slot(s) (trials stopping "
          f"at the predicted steps - running their whole budget; {args.trial_overhead_s:g} s of Ray and data set-up "
          f"per trial, 15 s start)")
    protocol.refuse_infeasible(spec, rows)
    return 0


# --- sweep --------------------------------------------------------------------------------------


def cmd_sweep(args) -> int:
    from harness.progress import SweepProgress
    from harness.spec import apply_overrides, load_spec, read_yaml
    from harness.sweep import Sweep

    spec = load_spec(args.spec, _overrides(args), kind="sweep")
    given = {"file": str(args.spec), "spec": read_yaml(args.spec), "overrides": _overrides(args)}
    given["effective"] = apply_overrides(given["spec"], given["overrides"])
    name = args.name or spec.name
    wl = spec.workload_obj()
    sweep = Sweep(spec, given, results_root=args.results, name=name, address=args.address, storage=args.storage,
                  progress=None if args.quiet else SweepProgress(name, wl.metric))
    try:
        out = sweep.run()
    except KeyboardInterrupt:
        print(f"interrupted: finished trials are saved in {sweep.store.root}; run the same command again to resume",
              file=sys.stderr)
        return 130
    counts = ", ".join(f"{k} {v}" for k, v in sorted(out["counts"].items())) or "no trials"
    if out.get("already_finished"):
        print(f"sweep '{out['name']}' already finished ({counts}); nothing to do. Results in {out['path']}")
    else:
        print(f"sweep '{out['name']}' {out['status']} in {out['wall_seconds'] / 60:.1f} min: {counts}")
        print(f"results in {out['path']} (sweep.json, trials.parquet, measurements.parquet)")
    for study, info in sorted(out["studies"].items()):
        if info.get("best_peak_lr"):
            print(f"  {study}: best peak LR {info['best_peak_lr']:.4g} ({wl.metric} {info['best_metric']:.4f})")
    if not args.no_report:
        return cmd_report(argparse.Namespace(results=out["path"], quiet=args.quiet))
    print(f"report: batchscale report {out['path']}")
    return 0


def check_budgets(results: str) -> None:
    """Run the protocol's pilot for a finished sweep's spec (as given) and record, in its
    ``sweep.json``, the budget table it implies, marked as checked after the run."""
    from harness import protocol
    from harness.spec import load_spec
    from harness.store import ResultsStore, now

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


def cmd_report(args) -> int:
    from analysis.report import build_report

    if getattr(args, "check_budgets", False):
        check_budgets(args.results)
    try:
        out = build_report(args.results)
    except ValueError as e:
        raise BatchscaleError(str(e)) from None
    if not args.quiet:
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
        if v.published:
            print(f"      published: {v.published}")
    print()


def cmd_reproduce(args) -> int:
    spec_path = Path(args.name)
    if not spec_path.suffix:
        spec_path = Path("experiments/paper") / f"{args.name}.yaml"
    if not spec_path.is_file():
        import glob

        known = sorted(Path(p).stem for p in glob.glob("experiments/paper/*.yaml") if "recipe" not in p)
        raise BatchscaleError(f"reproduce: no study {args.name!r} ({spec_path} not found); allowed: {', '.join(known)}")
    sweep_args = argparse.Namespace(spec=str(spec_path), overrides=args.overrides, data_dir=args.data_dir,
                                    name=args.name_override, address=args.address, storage=None,
                                    results=args.results, no_report=False, quiet=args.quiet)
    return cmd_sweep(sweep_args)


# --- list ---------------------------------------------------------------------------------------


def cmd_list(args) -> int:
    from harness.optimizers import OPTIMIZERS
    from harness.scaling import AUTOMATIC_METHODS, METHODS
    from harness.workloads import WORKLOADS, workload_names

    print("workloads:")
    for name in workload_names():
        w = WORKLOADS[name]
        print(f"  {name:<14} {w.summary} [{w.metric}, {'higher' if w.higher_is_better else 'lower'} is better; "
              f"optimizers: {', '.join(w.base_recipes)}]")
    print("methods:")
    for m in METHODS.values():
        print(f"  {m.name:<14} {m.summary} (lr {m.lr_rule}, warmup {m.warmup_rule})")
    for name, summary in AUTOMATIC_METHODS.items():
        print(f"  {name:<14} {summary}")
    print("  <lr>+<warmup>  any LR rule (none, linear, sqrt) with any warmup rule (none, fixed, legw, base)")
    print("optimizers:")
    for o in OPTIMIZERS.values():
        print(f"  {o.name:<14} {o.summary}; params: {json.dumps(o.defaults)}")
    return 0


# --- wiring -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``batchscale sweep: error: ...``), exit code 2; --help stays full."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="batchscale", description="Large-batch training experiments.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one trial in this process")
    _add_spec_args(p)
    p.add_argument("--out", help="output folder (default results/train/<workload>-<method>-b<B>-s<seed>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("schedule", help="print resolved recipes and the LR at every step (CSV)")
    _add_spec_args(p)
    p.add_argument("--batch-size", type=_positive_int, action="append",
                   help="batch size (repeatable; default: the spec's)")
    p.add_argument("--method", action="append", help="method (repeatable; default: the spec's)")
    p.add_argument("--optimizer", help="optimizer of a sweep spec (default: its first)")
    p.add_argument("--every", type=_positive_int, default=1, help="print every N-th step (default 1)")
    p.add_argument("--recipe-only", action="store_true", help="print the recipe table only")
    p.add_argument("--plot", help="draw the schedules to this image file (PNG/SVG/PDF)")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("plan", help="trial counts, budgets (pilot at B0), recipes and a time estimate, without running")
    _add_spec_args(p)
    p.add_argument("--probe-seconds", type=float, default=1.5, help="length of each throughput probe (default 1.5)")
    p.add_argument("--slots", type=_positive_int, help="trials at once (default: CPU cores / resources.cpus)")
    p.add_argument("--trial-overhead-s", type=float, default=2.5,
                   help="Ray and data set-up per trial (default 2.5 s: the default sweep on a 2-core VM, "
                        "docs/protocols.md)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("sweep", help="run a study on Ray Tune (local by default, or a cluster)")
    _add_spec_args(p)
    p.add_argument("--name", help="sweep name: results/<name>/ (default: the spec's name, or its file name)")
    p.add_argument("--address", help="Ray cluster address (host:port or ray://host:10001); default RAY_ADDRESS, "
                                     "else an embedded local Ray")
    p.add_argument("--storage", help="Ray Tune storage path: a folder all nodes share, or a cloud URL "
                                     "(default results/<name>/ray)")
    p.add_argument("--results", default="results", help="results root folder (default results/)")
    p.add_argument("--no-report", action="store_true", help="do not build the report at the end")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="tables, plots and the HTML report of a sweep's results")
    p.add_argument("results", help="a sweep's results folder, e.g. results/default")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    p.add_argument("--check-budgets", action="store_true",
                   help="first run the protocol's pilot for this sweep's spec and record which batch sizes its "
                        "budget could reach the target at (for sweeps run before protocols existed)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="run (or reuse) a LEGW paper study and judge its claims")
    p.add_argument("name", help="a study of experiments/paper/ (e.g. mnist_lstm) or a spec path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir")
    p.add_argument("--name", dest="name_override", help="sweep name (default: the study's)")
    p.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    p.add_argument("--results", default="results")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("list", help="list workloads, methods and optimizers")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BatchscaleError as e:
        print(f"batchscale: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("batchscale: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `batchscale schedule ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
