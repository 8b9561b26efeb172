"""Commands that show what a spec means without training: ``schedule``, ``plan`` and ``list``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _schedule_recipes(spec_path, overrides, batch_sizes, methods, optimizer):
    from harness.rules.scaling import AUTOMATIC_METHODS, resolve
    from harness.spec import RecipeSpec, SweepSpec, load_spec

    spec = load_spec(spec_path, overrides)
    if isinstance(spec, RecipeSpec):
        base, n = spec.recipe, spec.dataset_size
        batches = batch_sizes or spec.batch_sizes or [base.base_batch_size]
        methods = methods or spec.methods
    else:
        wl = spec.workload_obj()
        n = wl.train_size()
        if isinstance(spec, SweepSpec):
            base = spec.base_recipe(optimizer or spec.optimizers()[0])
            batches = batch_sizes or spec.axes.batch_sizes
            # methods that decide their LR while training (tuned, adascale, autowu, noise-aware) have no schedule
            methods = methods or [m for m in spec.axes.methods if m not in AUTOMATIC_METHODS] or ["legw"]
            if spec.protocol.kind == "steps_to_result" and spec.target is not None:
                return _steps_to_result_recipes(spec, base, batches, methods, n)
        else:
            base = spec.base_recipe()
            batches = batch_sizes or [spec.batch_size or base.base_batch_size]
            methods = methods or [spec.method]
        epochs = spec.budget.epochs_for(n)
        return [resolve(base, b, m, n, epochs=epochs) for m in methods for b in batches]
    return [resolve(base, b, m, n) for m in methods for b in batches]


def _steps_to_result_recipes(spec, base, batches, methods, n):
    """Under steps_to_result each batch size runs its own step budget (harness.sweep.protocol), and the
    fixed warmup is pinned to the study's epochs: the recipes the sweep runs, from the estimates the
    spec gives, an earlier run of the sweep stored (results/<name>), or the pilot, run here as
    ``plan`` runs it."""
    from harness.results.store import ResultsStore
    from harness.sweep import protocol

    store = ResultsStore(Path("results") / spec.name)
    stored = store.read_meta().get("protocol", {}).get("estimates") if store.exists() else None
    if spec.protocol.s_min is None and not stored and spec.protocol.pilot and not spec.protocol.step_budgets:
        print("# steps_to_result: running the pilot at B0 for the step budgets (as batchscale plan does)",
              file=sys.stderr)
    spec = spec.model_copy(update={"axes": spec.axes.model_copy(update={"batch_sizes": list(batches)})})
    rows = protocol.budget_table(spec, n, protocol.estimates(spec, n, stored))
    return budgeted_recipes(spec, rows, n, [base.optimizer.name], methods, batches)


def budgeted_recipes(spec, rows, n, optimizers, methods, batches):
    """The recipes a sweep's trials run: each batch size's budget from the protocol's table
    (``rows``), with the trial settings it sets (the fixed warmup pinned to the study's epochs)."""
    from harness.rules.scaling import resolve
    from harness.sweep import protocol

    by_cell = {(r["optimizer"], r["batch_size"]): r for r in rows}
    out = []
    for optimizer in optimizers:
        for method in methods:
            for b in batches:
                row = by_cell[(optimizer, b)]
                trial = spec.trial_spec(optimizer, method, b, spec.axes.seeds[0], **protocol.trial_settings(spec, row, n))
                out.append(resolve(trial.base_recipe(), b, method, n, epochs=row["budget_steps"] * b / n))
    return out


def claims_left_out_words(spec) -> str:
    """The cells ``claims_only`` leaves out, per arm, in words."""
    from harness.spec.claims import left_out

    out: dict[str, list[int]] = {}
    for arm, b in left_out(spec):
        out.setdefault(arm, []).append(b)
    if not out:
        return "every cell is read by a claim (or a claim's kind needs them all): nothing left out"
    return "left out (no claim reads them): " + "; ".join(
        f"{arm} " + ("at every batch size" if len(bs) == len(spec.axes.batch_sizes) else "at B = " + ", ".join(map(str, bs)))
        for arm, bs in out.items())


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


def schedule(spec_path: str, overrides: list[str], *, batch_sizes=None, methods=None, optimizer=None,
             every: int = 1, recipe_only: bool = False, plot: str | None = None) -> int:
    """``batchscale schedule``: the resolved recipes, then the LR at every step as CSV."""
    from harness.rules.schedules import lr_table

    if plot and Path(plot).suffix.lower() not in (".png", ".svg", ".pdf"):
        from harness.errors import SpecError

        raise SpecError("--plot", plot, "allowed: an image file ending in .png, .svg or .pdf")
    recipes = _schedule_recipes(spec_path, overrides, batch_sizes, methods, optimizer)
    table = recipe_table(recipes)
    if recipe_only:
        print("\n".join(table))
    else:
        print("\n".join("# " + line for line in table))
        print("method,batch_size,step,epoch,lr")
        out = sys.stdout
        for r in recipes:
            for step, epoch, lr in lr_table(r, every):
                out.write(f"{r.method},{r.batch_size},{step},{epoch:.6g},{lr:.8g}\n")
    if plot:
        from analysis.curves import plot_schedules

        plot_schedules(recipes, Path(plot))
        print(f"# plot written to {plot}", file=sys.stderr)
    return 0




def _arm_costs(spec, seconds: float) -> dict[tuple[str, str], float]:
    """(augment, algorithm) -> time per example of that arm over a plain trial's, measured at the
    largest batch size by the protocol's throughput probe (augmented steps take two passes;
    simulated workers split a step into K gradients). Printed, and used by the time estimate."""
    from harness.sweep import eta

    arms = [a for a in spec.arms() if a != ("none", "allreduce") or spec.data_parallel.simulate]
    if not arms:
        return {}
    b, optimizer = max(spec.axes.batch_sizes), spec.optimizers()[0]
    plain = eta.throughput_probe(spec, optimizer, [b], seconds=seconds / 2)[b]
    out = {}
    for augment, algorithm in arms:
        arm = {"augment": {**spec.augment.model_dump(), "kind": augment},
               "data_parallel": {**spec.data_parallel.model_dump(), "algorithm": algorithm}}
        out[(augment, algorithm)] = plain / eta.throughput_probe(spec, optimizer, [b], seconds / 2, arm)[b]
    print(f"arm cost per example against a plain trial at B={b}, measured here: "
          + ", ".join(f"{a}/{g} {c:.2f}x" for (a, g), c in out.items()))
    return out


PROTOCOL_SOURCES = {"fixed_epochs": "the same epoch budget at every batch size, no retuning (You et al. 2019; "
                                    "Goyal et al. 2017)",
                    "steps_to_result": "a step budget per batch size, trials stop at the target, tuned arm selects "
                                       "on steps (Shallue et al. 2018)"}


def plan_sweep(spec_path: str, overrides: list[str], *, probe_seconds: float = 1.5, slots: int | None = None,
              trial_overhead_s: float = 2.5) -> int:
    """What a sweep spec will run, whether its budgets can reach the target, and how long it takes."""
    from harness.rules.scaling import AUTOMATIC_METHODS
    from harness.spec import load_spec
    from harness.sweep import eta, plan, protocol
    from harness.sweep.plan import check_fits_the_data

    spec = load_spec(spec_path, overrides, kind="sweep")
    wl = spec.workload_obj()
    wl.prepare()
    n = wl.train_size()
    check_fits_the_data(spec, n)
    from harness.sweep.memory import check_memory
    from harness.trial.calibrate import sweep_cap

    cap, cap_source = sweep_cap(spec)
    check_memory(spec, cap)
    p = spec.protocol
    print(f"plan: {spec.name} ({wl.name}, {n:,} training examples); protocol {p.kind}: {PROTOCOL_SOURCES[p.kind]}")
    if spec.target is None:
        print("no target: budgets are not checked (steps to what?)")
    estimates = protocol.estimates(spec, n)
    rows = protocol.budget_table(spec, n, estimates)
    loaders = wl.loader_workers(spec.resources.cpus)
    print(f"{spec.resources.cpus} thread(s) per trial, micro-batches of at most {cap} ({cap_source})"
          + (f"; {loaders} DataLoader worker(s) per trial (workload_options.loader_workers"
             + (")" if spec.workload_options.get("loader_workers") is not None else ": resources.cpus less one)")
             if loaders is not None else ""))
    the_plan = plan(spec, n, {}, rows, micro_batch_cap=cap)
    costs = _arm_costs(spec, probe_seconds)  # an arm's step against a plain one, measured here
    counts: dict[str, int] = {}
    per_cell: dict[tuple, float] = {}  # trials per cell, in plain-trial equivalents
    for r in the_plan.rows:
        k = r.get("trials", 1)
        label = r.get("arm", r["method"])
        counts[label] = counts.get(label, 0) + k
        cost = k * costs.get((r.get("augment", "none"), r.get("algorithm", "allreduce")), 1.0)
        per_cell[(r["optimizer"], r["batch_size"])] = per_cell.get((r["optimizer"], r["batch_size"]), 0) + cost
    studies = len(the_plan.studies)
    brackets = [r for r in the_plan.rows if r.get("search") == "bracket"]

    def tuned_note() -> str:
        if not brackets:
            return f" ({studies} studies x {spec.tuning.trials})"
        lo, hi = (sum(r["trials_range"][i] for r in brackets) for i in (0, 1))
        how = (f"every LR on seed {min(spec.axes.seeds)}, the chosen one then on the other {len(spec.axes.seeds) - 1}"
               if spec.tuning.select_seeds == "first" else f"every LR x {len(spec.axes.seeds)} seed(s)")
        return (f" (about: {studies} bracketing studies, {how}; at least {lo}, "
                f"at most {hi}: the search ends when the best LR is bracketed)")

    print(f"trials: {'about ' if brackets else ''}{sum(counts.values())} = " + ", ".join(
        f"{m} {c}" + (tuned_note() if m == "tuned" else "") for m, c in counts.items())
        + f"; {len(spec.axes.seeds)} seed(s)")
    if spec.claims_only:
        print(f"claims only: {claims_left_out_words(spec)}")
    if estimates or rows:
        print("budgets (S(B) = steps the best rule needs, needed = margin x S(B); resol = evaluation interval / S(B)):")
        for line in protocol.format_table(rows, estimates, wl.metric):
            print("  " + line)
    recipes = budgeted_recipes(spec, rows, n, spec.optimizers(),
                               [m for m in spec.axes.methods if m not in AUTOMATIC_METHODS], spec.axes.batch_sizes)
    if recipes:
        print("recipes (peak LR as the rule gives it; realised = the largest LR the schedule reaches):")
        for line in recipe_table(recipes):
            print("  " + line)
    from harness.sweep.console import gpu_line, local_cpus, local_gpus

    if spec.resources.gpus:  # a plan made here for a cluster is fine; a sweep here would be refused
        print(gpu_line(spec))
    if spec.resources.gpus and not __import__("torch").cuda.is_available():
        print(f"throughput probe: skipped (the trials run on GPUs, resources.gpus {spec.resources.gpus:g}, and this "
              "driver has none to probe on): no wall-time estimate; run plan where a GPU is")
        protocol.refuse_infeasible(spec, rows)
        return 0
    probe_batches = sorted({min(spec.axes.batch_sizes), max(spec.axes.batch_sizes)})
    throughput = eta.throughput_probe(spec, spec.optimizers()[0], probe_batches, seconds=probe_seconds)
    slots = slots or max(1, int(local_cpus()) // spec.resources.cpus)
    if spec.resources.gpus:  # the GPUs' room, when it is the smaller (the probe ran on one of them)
        slots = max(1, min(slots, int(local_gpus() // spec.resources.gpus)))
    if spec.max_concurrent:
        slots = min(slots, spec.max_concurrent)
    t = eta.time_estimate(spec, rows, throughput, per_cell, slots, overhead_s=trial_overhead_s)
    print("throughput probe on this machine (" + f"{spec.resources.cpus} thread(s) per trial): "
          + ", ".join(f"B={b}: {v:,.0f} examples/s" for b, v in throughput.items()))
    print(f"estimated wall time: {t['low_s'] / 60:.1f} - {t['high_s'] / 60:.1f} min on {slots} slot(s) (trials stopping "
          f"at the predicted steps - running their whole budget; {trial_overhead_s:g} s of Ray and data set-up "
          f"per trial, 15 s start)")
    protocol.refuse_infeasible(spec, rows)
    return 0


def list_all() -> int:
    """``batchscale list``: workloads, methods, optimizers."""
    from harness.rules.optimizers import OPTIMIZERS
    from harness.rules.scaling import AUTOMATIC_METHODS, LR_RULES, METHODS, WARMUP_RULES, lr_rules, warmup_rules
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
    plugin_lr = [r for r in lr_rules() if r not in LR_RULES]
    plugin_warmup = [r for r in warmup_rules() if r not in WARMUP_RULES]
    print(f"  <lr>+<warmup>  any LR rule ({', '.join(lr_rules())}) with any warmup rule ({', '.join(warmup_rules())})"
          + (f"; from plugin modules: {', '.join(plugin_lr + plugin_warmup)}" if plugin_lr or plugin_warmup else ""))
    print("optimizers:")
    for o in OPTIMIZERS.values():
        print(f"  {o.name:<14} {o.summary}; params: {json.dumps(o.defaults)}")
    print("augment (axes.augment; the augment section's eps and norm):")
    print("  none           no augmentation")
    print("  disadv         adversarial copies x + eps*sign(grad_x) at the current weights: two passes in a row "
          "(Liu et al. 2022's baseline)")
    print("  conadv         the same at the previous step's weights, so the two passes are independent (ConAdv, "
          "Liu et al. 2022)")
    print("data-parallel algorithms (axes.algorithm, data_parallel.algorithm; topology ring or exponential; "
          "simulate: true runs the workers in one process):")
    print("  allreduce      every step averages all workers' gradients (parallel momentum SGD)")
    print("  dmsgd          decentralized momentum SGD: neighbours average x - lr*m (Yuan et al. 2021's baseline)")
    print("  decentlam      DecentLaM: neighbours average x - lr*g; the momentum takes the corrected step (Yuan et "
          "al. 2021)")
    from harness.spec.catalog import examples, studies

    print("paper studies (batchscale reproduce NAME):")
    for name, path in studies().items():
        print(f"  {name:<14} {path}")
    from harness.spec import read_yaml

    kinds = {name: "sweep" if isinstance(read_yaml(path), dict) and "axes" in read_yaml(path) else "trial"
             for name, path in examples().items()}
    for kind, how in (("sweep", "batchscale sweep NAME"), ("trial", "batchscale train NAME: one trial")):
        print(f"example {kind}s ({how}):")
        for name, path in examples().items():
            if kinds[name] == kind:
                print(f"  {name:<22} {path}")
    return 0
