"""A sweep's plan, pure (no Ray): spec -> grid trials and tuned studies, and how a spec may grow.

``plan`` expands the spec's axes into the trials of the grid (each a ``TrialSpec``'s fields under
its trial id) and one ``Study`` per tuned cell; ``growth`` says what a changed spec adds to a
stored sweep, or refuses it naming the keys that would change cells it already holds.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from harness.errors import SpecError, SweepConflict
from harness.rules.scaling import AUTOMATIC_METHODS, LR_RULES, resolve, warmup_epochs_for
from harness.spec import Budget, SweepSpec
from harness.spec.claims import needed_cells
from harness.spec.sweep import arm_label
from harness.spec.tuning import BracketSearch, Lattice
from harness.sweep import protocol
from harness.trial.placement import micro_batch_sizes


@dataclass
class Study:
    """One tuned study: the search of the peak LR at one (optimizer, batch size, arm): a bracket over
    every seed, or a TPE study per seed."""

    name: str
    optimizer: str
    batch_size: int
    seed: int
    lr_range: tuple[float, float]
    trial: dict[str, Any]
    warmup_epochs: float | None  # the warmup rule's value, unless warmup is searched too
    #: The rules' LR predictions tried first (``tuning.start_from_rules``), smallest first.
    start_points: list[dict[str, float]] = field(default_factory=list)
    #: What the search optimizes: the final metric (fixed_epochs) or steps to the target
    #: (steps_to_result; a miss counts as ``steps_objective``'s penalty).
    objective: str = "metric"
    budget_steps: int | None = None
    #: ``bracket`` (harness.spec.tuning: one study for every seed, each candidate LR run on all of them)
    #: or ``tpe`` (one study per seed)
    search: str = "tpe"
    seeds: list[int] = field(default_factory=list)
    trials_by_seed: dict[int, dict[str, Any]] = field(default_factory=dict)
    bracket: Any = None  # harness.spec.tuning.BracketSearch of a bracket study
    trials_budget: int = 0  # tpe: ``tuning.trials``
    #: bracket: ``all`` seeds decide, or the ``first`` alone and the others run its LR (``tuning.select_seeds``)
    select_seeds: str = "all"

    @property
    def search_seeds(self) -> list[int]:
        """The seeds every candidate LR runs (``first``: the smallest, as harness.spec.tuning.select reads it)."""
        return [min(self.seeds)] if self.select_seeds == "first" else self.seeds

    @property
    def max_trials(self) -> int:
        """An upper bound on the study's trials (all seeds)."""
        if not self.bracket:
            return self.trials_budget
        return self.bracket.max_candidates() * len(self.search_seeds) + len(self.seeds) - len(self.search_seeds)


@dataclass
class Plan:
    grid: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial_id -> TrialSpec fields
    studies: list[Study] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the trial list of sweep.json


#: what the report does with the results may change without a new sweep
REPORT_ONLY = ("name", "description", "claims", "projection")
#: how a run is watched and paced: changes no trial
RUN_ONLY = ("tracking", "repeat_examples", "retries", "max_concurrent")
#: axes a finished sweep can grow along: new values add cells and leave every existing cell as it was
GROWABLE_AXES = ("seeds", "batch_sizes", "methods", "augment", "algorithm")


#: tuning keys that never change a trial already run: a study's number of trials (it grows) and
#: how many of its trials run at once
GROWABLE_TUNING = ("trials", "concurrent_trials")


def arm_suffix(augment: str, algorithm: str) -> str:
    """What an arm adds to a cell's trial id (``-conadv``, ``-dmsgd``): nothing for the defaults,
    so sweeps without these axes keep their ids."""
    return (f"-{augment}" if augment != "none" else "") + (f"-{algorithm}" if algorithm != "allreduce" else "")


def _with_defaults(resolved: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """``resolved`` with every key it lacks taken from ``defaults``, at every depth."""
    out = dict(resolved)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def b_noise_source(spec: SweepSpec, meta: dict[str, Any] | None, estimates: dict[str, Any] | None) -> str | None:
    """Where ``probe_b_noise`` took the noise-aware rule's B_noise from, in words."""
    if "noise-aware" not in spec.axes.methods:
        return None
    if spec.noise_aware.b_noise:
        return "given in the spec (noise_aware.b_noise)"
    if (meta or {}).get("noise_aware_source"):
        return meta["noise_aware_source"]
    if estimates and all(o in estimates and estimates[o].source == "pilot" for o in spec.optimizers()):
        return "the protocol's pilot: B_simple at the target at B0"
    return f"a probe at B0 over the first {spec.noise_aware.probe_epochs:g} epoch(s) of the base recipe"


def identity(resolved: dict[str, Any]) -> dict[str, Any]:
    """What fixes the existing cells of a sweep: its resolved spec without the report-only keys,
    the growable axes (their values only say which cells exist) and the studies' sizes. Keys a
    stored spec lacks (written before they existed) count as their defaults, which is how those
    sweeps ran."""
    defaults = SweepSpec.model_construct(workload=resolved.get("workload")).model_dump(mode="json", warnings=False)
    resolved = _with_defaults(resolved, defaults)
    out = {k: v for k, v in resolved.items() if k not in REPORT_ONLY + RUN_ONLY}
    out["axes"] = {k: v for k, v in (out.get("axes") or {}).items() if k not in GROWABLE_AXES}
    out["tuning"] = {k: v for k, v in (out.get("tuning") or {}).items() if k not in GROWABLE_TUNING}
    out.pop("claims_only", None)  # which cells run: growth says what turning it off adds
    return out


def spec_hash(spec: SweepSpec) -> str:
    data = identity(spec.model_dump(mode="json"))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two resolved specs differ (``budget.epochs``, ``recipe.peak_lr``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            out += _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


def growth(old_resolved: dict[str, Any], new_resolved: dict[str, Any]) -> dict[str, Any]:
    """What ``new`` adds to a sweep run as ``old``: axis -> its new values, and ``tuning.trials`` ->
    the trials each TPE study gains; {} when it adds nothing. Raises SweepConflict when anything that
    fixes the existing cells changed, or the sweep would shrink."""
    changed = _changed_keys(identity(old_resolved), identity(new_resolved))
    if changed:
        raise SweepConflict(f"changed: {', '.join(changed)}")
    old_axes, new_axes = old_resolved.get("axes") or {}, new_resolved.get("axes") or {}
    added, dropped = {}, []
    for axis in GROWABLE_AXES:
        before, after = old_axes.get(axis) or [], new_axes.get(axis) or []
        if set(before) - set(after):
            dropped.append(f"axes.{axis} drops {sorted(set(before) - set(after))}")
        if set(after) - set(before):
            added[axis] = [v for v in after if v not in before]
    # tuning.trials sizes a TPE study only; a bracketing search ends where its bracket closes
    tpe = ((new_resolved.get("tuning") or {}).get("search", "bracket") == "tpe"
           and "tuned" in {m.split(":")[0] for m in (old_axes.get("methods") or [])})
    trials_before = (old_resolved.get("tuning") or {}).get("trials")
    trials_after = (new_resolved.get("tuning") or {}).get("trials")
    if tpe and trials_before is not None and trials_after is not None and trials_after != trials_before:
        if trials_after < trials_before:
            dropped.append(f"tuning.trials drops from {trials_before} to {trials_after}")
        else:
            added["tuning.trials"] = trials_after - trials_before
    if old_resolved.get("claims_only") and not new_resolved.get("claims_only"):
        added["claims_only"] = "off: every cell of the axes"
    elif new_resolved.get("claims_only") and old_resolved.get("claims") != new_resolved.get("claims"):
        added["claims"] = "the cells the changed claims read"
    elif new_resolved.get("claims_only") and not old_resolved.get("claims_only"):
        dropped.append("claims_only turns on")
    if dropped:
        raise SweepConflict(f"{'; '.join(dropped)} from the spec the stored sweep was run with (a sweep grows, it "
                            "does not shrink)")
    return added


def check_fits_the_data(spec: SweepSpec, dataset_size: int) -> None:
    """A batch larger than the training set would repeat examples inside one step: refused (before
    any pilot), naming the batch size and the training set's size."""
    too_big = [] if spec.repeat_examples else [b for b in spec.axes.batch_sizes if b > dataset_size]
    if too_big:
        raise SpecError("axes.batch_sizes", too_big[0] if len(too_big) == 1 else too_big,
                        f"allowed: at most the {dataset_size:,} training examples of {spec.workload} (a step would "
                        "repeat examples; enlarge the data set, or set repeat_examples: true)")


def plan(spec: SweepSpec, dataset_size: int, b_noise: dict[str, float] | None = None,
         budgets: list[dict[str, Any]] | None = None, micro_batch_cap: int | None = None) -> Plan:
    """Expand the grid; ``b_noise`` (optimizer -> B_noise at B0) feeds the noise-aware rule;
    ``budgets`` (harness.sweep.protocol.budget_table) sets each batch size's budget and evaluation grid;
    ``micro_batch_cap`` (harness.trial.calibrate, measured by the driver) is written into every trial, so
    the trials split their batches exactly as planned (default: the spec's, else the workload's table)."""
    p = Plan()
    wl = spec.workload_obj()
    cuda = spec.resources.gpus > 0
    cap = spec.micro_batch_cap or micro_batch_cap or wl.micro_batch_cap(cuda)

    by_cell = {(r["optimizer"], r["batch_size"]): r for r in budgets or []}
    cells = [(*cell, *arm) for cell in spec.grid() for arm in spec.arms()]
    if spec.claims_only and (needed := needed_cells(spec)) is not None:  # the cells the claims read
        cells = [c for c in cells if c[2] in needed.get(arm_label(c[1], c[4], c[5]), ())]
    bracket = spec.tuning.search == "bracket"
    studies: dict[str, Study] = {}
    for optimizer, method, batch, seed, augment, algorithm in cells:
        base = spec.base_recipe(optimizer)
        arm = {"augment": spec.augment.model_copy(update={"kind": augment}).model_dump(),
               "data_parallel": spec.data_parallel.model_copy(update={"algorithm": algorithm}).model_dump()}
        suffix = arm_suffix(augment, algorithm)
        arm_row = {"augment": augment, "algorithm": algorithm, "arm": arm_label(method, augment, algorithm)} if suffix else {}
        budget_row = by_cell.get((optimizer, batch))
        settings = {**(protocol.trial_settings(spec, budget_row, dataset_size) if budget_row else {}),
                    "micro_batch_cap": cap, **arm}
        budget = Budget.model_validate(settings.get("budget") or spec.budget.model_dump())
        epochs = budget.epochs_for(dataset_size)
        reference_epochs = spec.budget_epochs(optimizer, dataset_size)  # the fixed warmup's 5/90 of it
        protocol_info = ({k: budget_row[k] for k in ("budget_steps", "eval_every_steps", "feasible")}
                         if budget_row else {})
        micro, _ = micro_batch_sizes(spec.trial_spec(optimizer, method, batch, seed), batch, cap,
                                     spec.data_parallel.workers)
        if method == "tuned":
            k = batch / base.base_batch_size
            lrs = [base.peak_lr * rule(k) for rule in LR_RULES.values()]
            f = spec.tuning.lr_range_factor
            w_rule = warmup_epochs_for(spec.tuning.warmup_rule, base, k, reference_epochs)
            w_epochs = None if spec.tuning.search_warmup else w_rule
            trial = spec.trial_spec(optimizer, "tuned", batch, seed, **settings,
                                    validation={**spec.validation.model_dump(), "evaluate": True}).model_dump(mode="json")
            by_steps = spec.protocol.kind == "steps_to_result"
            common = dict(objective="steps" if by_steps else "metric",
                          budget_steps=budget_row["budget_steps"] if budget_row else None)
            lr_range = (min(lrs) / f, max(lrs) * f)
            if bracket:
                name = f"{optimizer}-tuned{suffix}-b{batch}"
                if name in studies:
                    studies[name].seeds.append(seed)
                    studies[name].trials_by_seed[seed] = trial
                    continue
                search = BracketSearch(Lattice(base.peak_lr / f, spec.tuning.lattice_step), *lr_range,
                                       coarse=spec.tuning.coarse_steps, max_extensions=spec.tuning.max_extensions,
                                       always=tuple(sorted(lrs)) if spec.tuning.start_from_rules else ())
                study = studies[name] = Study(name, optimizer, batch, seed, lr_range, trial, w_epochs, search="bracket",
                                              seeds=[seed], trials_by_seed={seed: trial}, bracket=search,
                                              select_seeds=spec.tuning.select_seeds, **common)
                p.studies.append(study)
                p.rows.append({"study": name, "optimizer": optimizer, "method": "tuned", "batch_size": batch,
                               "seeds": study.seeds, "search": "bracket", "trials": None,
                               "lr_range": list(lr_range), "coarse_lrs": [search.lattice.lr(j) for j in search.coarse_indices()],
                               "warmup_epochs": w_epochs, "micro_batch_size": micro,
                               "selects_on": "validation " + ("steps_to_target" if by_steps else "final_metric")
                               + " (median over seeds)", **arm_row, **protocol_info})
                continue
            name = f"{optimizer}-tuned{suffix}-b{batch}-s{seed}"
            starts = []
            if spec.tuning.start_from_rules:
                w_start = w_rule
                if spec.tuning.search_warmup:
                    lo_w, hi_w = spec.tuning.warmup_epochs_range
                    w_start = min(max(w_start, lo_w), hi_w)
                for lr in sorted(lrs):
                    if not starts or lr > starts[-1]["peak_lr"] * (1 + 1e-9):
                        starts.append({"peak_lr": lr} | ({"warmup_epochs": w_start} if spec.tuning.search_warmup else {}))
                starts = starts[: spec.tuning.trials]
            p.studies.append(Study(name, optimizer, batch, seed, lr_range, trial, w_epochs, starts, **common,
                                   seeds=[seed], trials_by_seed={seed: trial}, trials_budget=spec.tuning.trials))
            p.rows.append({"study": name, "optimizer": optimizer, "method": "tuned", "batch_size": batch, "seed": seed,
                           "trials": spec.tuning.trials, "lr_range": list(lr_range), "search": "tpe",
                           "warmup_epochs": w_epochs, "start_points": starts, "micro_batch_size": micro,
                           "selects_on": "validation " + ("steps_to_target" if by_steps else "final_metric"),
                           **arm_row, **protocol_info})
            continue
        trial_id = f"{optimizer}-{method}{suffix}-b{batch}-s{seed}"
        trial = spec.trial_spec(optimizer, method, batch, seed, **settings)
        row = {"trial_id": trial_id, "optimizer": optimizer, "method": method, "batch_size": batch, "seed": seed,
               "micro_batch_size": micro, **arm_row, **protocol_info}
        if method == "noise-aware":
            trial = trial.model_copy(update={"noise_aware": trial.noise_aware.model_copy(
                update={"b_noise": (b_noise or {}).get(optimizer, trial.noise_aware.b_noise)})})
            row["b_noise"] = trial.noise_aware.b_noise
        if method in AUTOMATIC_METHODS:  # the LR is decided while training: no rule to resolve here
            row["note"] = AUTOMATIC_METHODS[method]
        else:
            r = resolve(trial.base_recipe(), batch, method, dataset_size, epochs=epochs)
            row.update(peak_lr=r.peak_lr, realised_peak_lr=r.realised_peak_lr, warmup_epochs=r.warmup_epochs,
                       warmup_steps=r.warmup_steps, total_steps=r.total_steps, warnings=list(r.warnings))
        p.grid[trial_id] = trial.model_dump(mode="json")
        p.rows.append(row)
    for r in p.rows:  # a bracketing study's size is known only as it runs: what it will likely need, and bounds
        if r.get("search") == "bracket":
            s = studies[r["study"]]
            n, rest = len(s.search_seeds), len(s.seeds) - len(s.search_seeds)  # rest: the chosen LR's other seeds
            coarse = len(s.bracket.coarse_indices())
            levels = max(0, int(round(math.log2(s.bracket.coarse))))
            r.update(trials=(coarse + 2 * levels) * n + rest, trials_range=[coarse * n + rest, s.max_trials])
    return p


def probe_b_noise(spec: SweepSpec, meta: dict[str, Any] | None,
                  estimates: dict[str, Any] | None = None) -> dict[str, float]:
    """B_noise per optimizer for the noise-aware rule: given in the spec; stored by an earlier run;
    the protocol's pilot's at the target (``estimates``: B_simple where the base recipe reached the
    target, the noise scale the rule needs: McCandlish's B_noise grows as the loss falls, and one
    measured early in training is far below it); else probed at B0 early in training
    (``noise_aware_source`` says which)."""
    if "noise-aware" not in spec.axes.methods:
        return {}
    from harness.sweep.protocol import probe_noise_scale

    known = dict((meta or {}).get("noise_aware", {}))
    out = {}
    for optimizer in spec.optimizers():
        if spec.noise_aware.b_noise:
            out[optimizer] = spec.noise_aware.b_noise
        elif optimizer in known:
            out[optimizer] = known[optimizer]
        elif estimates and optimizer in estimates and estimates[optimizer].source == "pilot":
            out[optimizer] = float(estimates[optimizer].b_crit)
        else:
            base = spec.base_recipe(optimizer)
            out[optimizer] = probe_noise_scale(spec.trial_spec(optimizer, "none", base.base_batch_size,
                                                               spec.axes.seeds[0]))
    return out
