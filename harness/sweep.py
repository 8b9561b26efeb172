"""Sweeps on Ray Tune: spec -> trials -> Ray Tune -> trial loop -> results store.

A sweep spec's grid (optimizers x methods x batch sizes x seeds) runs as one Tune experiment
(``grid``); the ``tuned`` method runs as one Optuna study per (optimizer, batch size, seed), each
its own Tune experiment with ``OptunaSearch`` (in memory, checkpointed with the experiment; each
finished study is written to ``optuna.db`` in the sweep's folder for optuna-dashboard). Every trial
is ``harness.trial.Trial``: the sweep adds scheduling, checkpoints and bookkeeping, never training
logic.

Ray: an embedded local Ray by default (started for the sweep, stopped after), or an existing
cluster with ``--address`` / ``RAY_ADDRESS``. Only the current Tune API is used (``Tuner``,
``TuneConfig``, ``RunConfig``, ``tune.report``, ``tune.get_checkpoint``); nothing from
``ray.air`` or ``ray.train`` inside the trainable (``ray.train.report`` errors every trial on 2.60).

Resume: each evaluation reports a checkpoint (the whole ``Trial.state_dict``). Running the same
command again restores each unfinished Tune experiment (``Tuner.restore``): finished trials are
not rerun, unfinished ones continue from their last checkpoint. Our own store is the source of
truth for what finished, so a lost Ray folder costs only the unfinished trials' progress: an
experiment whose saved state is incomplete (a driver killed while Tune was writing it) is set
aside and started afresh for what the store lacks, and an experiment that ends with trials still
missing from the store is run again for them.
A different spec under an existing name is refused.

Failures: a trial that raises or whose worker dies is retried ``retries`` times from its last
checkpoint (``FailureConfig``), then recorded as ``error`` with its message. Divergence is a
result (``diverged``), reported by the trial loop.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import protocol
from harness.protocol import best_trial
from harness.errors import BatchscaleError, SweepConflict
from harness.objective import report_metrics, steps_objective, worst_objective
from harness.scaling import AUTOMATIC_METHODS, LR_RULES, resolve, warmup_epochs_for
from harness.spec import Budget, SweepSpec, TrialSpec
from harness.store import FINAL, ResultsStore, environment, now
from harness.tune_callback import DRIVER as _DRIVER
from harness.tune_callback import StoreCallback, StudyBudget, trial_row



# --- the trainable (runs in Ray workers) -------------------------------------------------------------


REGISTRY_ENV = "BATCHSCALE_FINISHED_REGISTRY"


def tune_trial(config: dict[str, Any]) -> None:
    """One trial inside Tune: build, restore from the last checkpoint if any, run, report.

    A trial this sweep already recorded as finished (Tune's experiment snapshot can lag a few
    seconds behind a killed driver) is not trained again: the driver's registry hands back its
    stored final report, which is reported as is.
    """
    import torch
    from ray import tune

    from harness.trial import Trial

    config = config.get("cell", config)  # grid trials carry {"cell": {"trial_id", "trial"}}
    finished = _finished_report(config.get("trial_id") or f"{config['study']}-{tune.get_context().get_trial_id()}")
    if finished:
        tune.report(finished)
        return
    spec_fields = dict(config["trial"])
    for key in ("peak_lr", "warmup_epochs"):  # chosen by the searcher in tuned studies
        if key in config:
            spec_fields[key] = config[key]
    spec = TrialSpec.model_validate(spec_fields)
    if spec.data_parallel.workers > 1:  # W workers of Ray Train; their reports reach Tune
        from harness.distributed import run_in_tune

        res = config.get("resources", {})
        run_in_tune(spec_fields, spec.data_parallel.workers, res.get("cpus", 1), res.get("gpus", 0.0),
                    config.get("objective_steps_budget"))
        return
    trial = Trial(spec)
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            trial.load_state_dict(torch.load(Path(folder) / "trial.pt", weights_only=False))
    worst = worst_objective(trial.workload.higher_is_better)
    steps_budget = config.get("objective_steps_budget")

    def on_eval(t, row):
        with tempfile.TemporaryDirectory() as folder:
            torch.save(t.state_dict(), Path(folder) / "trial.pt")
            tune.report(report_metrics(t.measurements, t.summary(), "running", worst, steps_budget),
                        checkpoint=tune.Checkpoint.from_directory(folder))

    result = trial.run(on_eval=on_eval)
    tune.report(report_metrics(result.measurements, result.summary, result.status, worst, steps_budget))


def _finished_report(trial_id: str) -> dict[str, Any] | None:
    name = os.environ.get(REGISTRY_ENV)
    if not name:
        return None
    import ray

    try:
        registry = ray.get_actor(name)
    except ValueError:
        return None
    return ray.get(registry.get.remote(trial_id))


def _registry_class():
    import ray

    @ray.remote(num_cpus=0)
    class FinishedTrials:
        """Final reports of trials already in the store, by trial id (lives as long as the driver)."""

        def __init__(self, reports: dict[str, dict[str, Any]]):
            self.reports = reports

        def get(self, trial_id: str):
            return self.reports.get(trial_id)

    return FinishedTrials


# --- planning -------------------------------------------------------------------------------------


@dataclass
class Study:
    """One tuned study: an Optuna search of the peak LR at one (optimizer, batch size, seed)."""

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


@dataclass
class Plan:
    grid: dict[str, dict[str, Any]] = field(default_factory=dict)  # trial_id -> TrialSpec fields
    studies: list[Study] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)  # the trial list of sweep.json


#: what the report does with the results may change without a new sweep
REPORT_ONLY = ("name", "description", "claims", "projection")
#: axes a finished sweep can grow along: new values add cells and leave every existing cell as it was
GROWABLE_AXES = ("seeds", "batch_sizes", "methods")


def identity(resolved: dict[str, Any]) -> dict[str, Any]:
    """What fixes the existing cells of a sweep: its resolved spec without the report-only keys and
    without the growable axes (their values only say which cells exist)."""
    out = {k: v for k, v in resolved.items() if k not in REPORT_ONLY}
    out["axes"] = {k: v for k, v in (out.get("axes") or {}).items() if k not in GROWABLE_AXES}
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


def growth(old_resolved: dict[str, Any], new_resolved: dict[str, Any]) -> dict[str, list]:
    """The axis values ``new`` adds to a sweep run as ``old``: {} when it adds none. Raises
    SweepConflict when anything that fixes the existing cells changed, or an axis lost a value."""
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
    if dropped:
        raise SweepConflict(f"{'; '.join(dropped)}, which the store holds (a sweep grows, it does not shrink)")
    return added


def plan(spec: SweepSpec, dataset_size: int, b_noise: dict[str, float] | None = None,
         budgets: list[dict[str, Any]] | None = None) -> Plan:
    """Expand the grid; ``b_noise`` (optimizer -> B_noise at B0) feeds the noise-aware rule;
    ``budgets`` (harness.protocol.budget_table) sets each batch size's budget and evaluation grid."""
    p = Plan()
    wl = spec.workload_obj()
    cuda = spec.resources.gpus > 0
    from harness.trial import micro_batch_sizes

    by_cell = {(r["optimizer"], r["batch_size"]): r for r in budgets or []}
    for optimizer, method, batch, seed in spec.grid():
        base = spec.base_recipe(optimizer)
        budget_row = by_cell.get((optimizer, batch))
        settings = protocol.trial_settings(spec, budget_row, dataset_size) if budget_row else {}
        budget = Budget.model_validate(settings.get("budget") or spec.budget.model_dump())
        epochs = budget.epochs_for(dataset_size)
        reference_epochs = spec.budget_epochs(optimizer, dataset_size)  # the fixed warmup's 5/90 of it
        protocol_info = ({k: budget_row[k] for k in ("budget_steps", "eval_every_steps", "feasible")}
                         if budget_row else {})
        micro, _ = micro_batch_sizes(spec.trial_spec(optimizer, method, batch, seed), batch, wl.micro_batch_cap(cuda),
                                     spec.data_parallel.workers)
        if method == "tuned":
            k = batch / base.base_batch_size
            lrs = [base.peak_lr * rule(k) for rule in LR_RULES.values()]
            f = spec.tuning.lr_range_factor
            w_rule = warmup_epochs_for(spec.tuning.warmup_rule, base, k, reference_epochs)
            w_epochs = None if spec.tuning.search_warmup else w_rule
            name = f"{optimizer}-tuned-b{batch}-s{seed}"
            trial = spec.trial_spec(optimizer, "tuned", batch, seed, **settings).model_dump(mode="json")
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
            by_steps = spec.protocol.kind == "steps_to_result"
            p.studies.append(Study(name, optimizer, batch, seed, (min(lrs) / f, max(lrs) * f), trial, w_epochs, starts,
                                   objective="steps" if by_steps else "metric",
                                   budget_steps=budget_row["budget_steps"] if budget_row else None))
            p.rows.append({"study": name, "optimizer": optimizer, "method": "tuned", "batch_size": batch, "seed": seed,
                           "trials": spec.tuning.trials, "lr_range": [min(lrs) / f, max(lrs) * f],
                           "warmup_epochs": w_epochs, "start_points": starts, "micro_batch_size": micro,
                           "selects_on": "steps_to_target" if by_steps else "final_metric", **protocol_info})
            continue
        trial_id = f"{optimizer}-{method}-b{batch}-s{seed}"
        trial = spec.trial_spec(optimizer, method, batch, seed, **settings)
        row = {"trial_id": trial_id, "optimizer": optimizer, "method": method, "batch_size": batch, "seed": seed,
               "micro_batch_size": micro, **protocol_info}
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
    return p


def probe_b_noise(spec: SweepSpec, meta: dict[str, Any] | None) -> dict[str, float]:
    """B_noise at B0 per optimizer for the noise-aware rule: given, stored by an earlier run, or probed."""
    if "noise-aware" not in spec.axes.methods:
        return {}
    from harness.protocol import probe_noise_scale

    known = dict((meta or {}).get("noise_aware", {}))
    out = {}
    for optimizer in spec.optimizers():
        if spec.noise_aware.b_noise:
            out[optimizer] = spec.noise_aware.b_noise
        elif optimizer in known:
            out[optimizer] = known[optimizer]
        else:
            base = spec.base_recipe(optimizer)
            out[optimizer] = probe_noise_scale(spec.trial_spec(optimizer, "none", base.base_batch_size,
                                                               spec.axes.seeds[0]))
    return out


# --- the driver ---------------------------------------------------------------------------------------


class Sweep:
    def __init__(self, spec: SweepSpec, given: dict[str, Any], results_root: str | Path = "results",
                 name: str | None = None, address: str | None = None, storage: str | None = None,
                 progress=None):
        self.spec = spec
        self.given = given
        self.name = name or spec.name or "sweep"
        self.store = ResultsStore(Path(results_root) / self.name)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.storage = storage or str((self.store.root / "ray").resolve())
        self.progress = progress

    def _say(self, line: str) -> None:
        if self.progress:
            self.progress.console.print(line, highlight=False, markup=False, soft_wrap=True)

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _check_existing(self) -> tuple[dict[str, Any] | None, dict[str, list]]:
        """(the stored meta or None, the axis values this spec adds to it)."""
        if not self.store.exists():
            return None, {}
        meta = self.store.read_meta()
        try:
            added = growth(meta.get("spec_resolved", {}), self.spec.model_dump(mode="json"))
        except SweepConflict as e:
            raise SweepConflict(
                f"{self.store.root} holds sweep '{self.name}' run with a different spec ({e}); give --name for a new "
                f"sweep, or delete that folder to start over") from None
        return meta, added

    def finished_ids(self) -> set[str]:
        return {t["trial_id"] for t in self.store.trial_rows() if t["status"] in FINAL}

    def _finished_reports(self) -> dict[str, dict[str, Any]]:
        """The final ``tune.report`` of every finished trial, rebuilt from the store."""
        higher = self.spec.workload_obj().higher_is_better
        by_trial: dict[str, list] = {}
        for m in self.store.measurement_rows():
            by_trial.setdefault(m.pop("trial_id"), []).append(m)
        out = {}
        for t in self.store.trial_rows():
            if t["status"] in FINAL:
                summary = {k: v for k, v in t.items() if k not in ("error", "extra")}
                out[t["trial_id"]] = report_metrics(by_trial.get(t["trial_id"], []), summary, t["status"],
                                                    worst_objective(higher))
        return out

    # -- run --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        digest = spec_hash(self.spec)
        meta, added = self._check_existing()
        if meta and not added:  # what the report does with the results may change without a new sweep
            resolved = {**meta["spec_resolved"], **self.spec.model_dump(mode="json", include=set(REPORT_ONLY))}
            if resolved != meta["spec_resolved"]:
                meta = self.store.update_meta(spec_resolved=resolved)
        if meta and meta.get("status") == "finished" and not added:
            return {"already_finished": True, **self.outcome(meta)}
        if added:
            self._say(f"sweep '{self.name}' grows: " + "; ".join(f"axes.{k} + {v}" for k, v in added.items())
                      + " (only the new cells run; every finished trial stays as it is)")

        wl = self.spec.workload_obj()
        wl.prepare()  # generate/convert data here once, and fail before Ray if a dataset is missing
        dataset_size = wl.train_size()
        b_noise = probe_b_noise(self.spec, meta)
        stored = (meta or {}).get("protocol", {}).get("estimates")
        if not stored and protocol.needs_estimate(self.spec) and self.spec.protocol.s_min is None:
            self._say(f"protocol {self.spec.protocol.kind}: pilot of the base recipe at B0 to the target ...")
        estimates = protocol.estimates(self.spec, dataset_size, stored)
        budgets = protocol.budget_table(self.spec, dataset_size, estimates)
        if estimates:
            for line in protocol.format_table(budgets, estimates, wl.metric):
                self._say(line)
        protocol.refuse_infeasible(self.spec, budgets)  # before anything is written
        protocol_meta = {"kind": self.spec.protocol.kind, "margin": self.spec.protocol.margin,
                         "checked": bool(estimates), "estimates": {o: e.to_json() for o, e in estimates.items()},
                         "budgets": budgets}
        the_plan = plan(self.spec, dataset_size, b_noise, budgets)
        session = {"started_at": now(), "address": self.address or "local"}
        if meta is None:
            meta = {
                "name": self.name, "status": "running", "spec_hash": digest,
                "spec_given": self.given, "spec_resolved": self.spec.model_dump(mode="json"),
                "workload": {"name": wl.name, "metric": wl.metric, "higher_is_better": wl.higher_is_better,
                             "chance_metric": wl.chance_metric(), "dataset_size": dataset_size, "summary": wl.summary,
                             "base_recipes": {o: self.spec.base_recipe(o).model_dump(mode="json")
                                              for o in self.spec.optimizers()}},
                "trials": the_plan.rows, "studies": {}, "environment": environment(),
                "started_at": session["started_at"], "finished_at": None, "sessions": [session],
                "storage": self.storage, "noise_aware": b_noise, "protocol": protocol_meta,
            }
            self.store.root.mkdir(parents=True, exist_ok=True)
            self.store.write_meta(meta)
        else:
            if added:  # the plan, the spec and the protocol's budget table now cover the new cells too
                session["grew"] = added
                self.store.update_meta(spec_resolved=self.spec.model_dump(mode="json"), spec_given=self.given,
                                       spec_hash=digest, trials=the_plan.rows,
                                       protocol={**(meta.get("protocol") or {}), **protocol_meta},
                                       finished_at=None)
            meta = self.store.update_meta(status="running", sessions=[*meta.get("sessions", []), session])

        _DRIVER.update(store=self.store, progress=self.progress, finished=self.finished_ids())
        started = time.monotonic()
        self._init_ray()
        try:
            if self.progress:
                self.progress.start(total=len(the_plan.grid) + len(the_plan.studies) * self.spec.tuning.trials,
                                    done=self.finished_ids())
            self._run_grid(the_plan)
            for study in the_plan.studies:
                self._run_study(study)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
        finally:
            if self.progress:
                self.progress.stop()
            self._mark_unfinished_incomplete()
            self.store.consolidate()  # the trials' records into the two tables readers open
            self._shutdown_ray()
            _DRIVER.clear()
        meta = self.store.update_meta(status=status, finished_at=now() if status == "finished" else None,
                                      sessions=[*self.store.read_meta()["sessions"][:-1],
                                                {**session, "ended_at": now(), "status": status}])
        out = self.outcome(meta)
        out["wall_seconds"] = time.monotonic() - started
        if status == "interrupted":
            raise KeyboardInterrupt
        return out

    def outcome(self, meta) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for t in self.store.trial_rows():
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        return {"name": self.name, "path": str(self.store.root), "status": meta.get("status"), "counts": counts,
                "studies": meta.get("studies", {})}

    # -- Ray ---------------------------------------------------------------------------------------------
    def _init_ray(self) -> None:
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # our store replaces Tune's CSV/JSON logs
        # Ctrl-C raises KeyboardInterrupt in the driver (Tune's own handler would swallow it and let
        # the next study start); experiment state and our store are saved as trials finish.
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no Tune tables; our view reports
        import ray

        self.registry_name = f"batchscale-finished-{self.name}-{os.getpid()}"
        env = {k: v for k, v in os.environ.items() if k.startswith("BATCHSCALE_")}
        env[REGISTRY_ENV] = self.registry_name
        env["BATCHSCALE_TRAIN_STORAGE"] = f"{self.storage.rstrip('/')}/data-parallel"  # Ray Train runs
        runtime_env = {"env_vars": env}
        if self.address:
            ray.init(address=self.address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, runtime_env=runtime_env, log_to_driver=False,
                     configure_logging=True, logging_level="ERROR")
        self._registry = _registry_class().options(name=self.registry_name).remote(self._finished_reports())

    def _shutdown_ray(self) -> None:
        import ray

        if ray.is_initialized():
            ray.shutdown()

    def _tune_common(self, experiment: str, *, num_samples: int = 1, search_alg=None, scheduler=None,
                     metric: str | None = None, mode: str | None = None):
        from ray import tune

        spec = self.spec
        concurrent = spec.max_concurrent
        if spec.data_parallel.workers > 1:
            # The workers hold the CPUs/GPUs; the Tune trial only launches and waits on them (a
            # 1-byte memory request, as Ray refuses an empty one). As many trials at once as the
            # cluster has room for all their workers (Ray Train's advice), unless given.
            trainable = tune.with_resources(tune_trial, {"cpu": 0, "memory": 1})
            concurrent = concurrent or self._data_parallel_room()
        else:
            trainable = tune.with_resources(tune_trial, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
        tune_config = tune.TuneConfig(num_samples=num_samples, search_alg=search_alg, scheduler=scheduler,
                                      metric=metric, mode=mode, reuse_actors=True,
                                      max_concurrent_trials=concurrent,
                                      trial_dirname_creator=_trial_dirname)
        run_config = tune.RunConfig(
            name=experiment, storage_path=self.storage, callbacks=[StoreCallback()], verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # see tune_callback.drop_checkpoints
        )
        return trainable, tune_config, run_config

    def _worker_resources(self) -> dict[str, Any]:
        """What a data-parallel trial's config carries for its Ray Train workers."""
        return {"resources": self.spec.resources.model_dump()} if self.spec.data_parallel.workers > 1 else {}

    def _data_parallel_room(self) -> int:
        import ray

        have, w, r = ray.cluster_resources(), self.spec.data_parallel.workers, self.spec.resources
        room = [int(have.get("CPU", 0) // (w * r.cpus))]
        if r.gpus:
            room.append(int(have.get("GPU", 0) // (w * r.gpus)))
        return max(1, min(room))

    def _fit(self, experiment: str, build, missing, *, searcher: bool) -> None:
        """Restore ``experiment`` if Tune can, else build a new Tuner (from what the store lacks); fit.

        ``missing()`` says whether the store still lacks trials of this experiment. After a fit it
        must not: if it does, Tune's restored state had lost them (a driver killed while Tune was
        writing its state), and a new experiment runs them.
        """
        from ray import tune

        path = f"{self.storage.rstrip('/')}/{experiment}"
        trainable, _, _ = self._tune_common(experiment)
        tuner = None
        if tune.Tuner.can_restore(path) and _restorable(path, searcher=searcher):
            try:
                tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
            except (ValueError, RuntimeError, OSError):
                tuner = None
        if tuner is None:  # start this experiment afresh; build() plans only what the store lacks
            self._set_aside(path)
            tuner = build()
        if tuner is not None:
            tuner.fit()
        if missing():
            self._set_aside(path)
            tuner = build()
            if tuner is not None:
                tuner.fit()
            if missing():
                raise BatchscaleError(f"sweep '{self.name}': Tune experiment {experiment!r} ended twice with trials "
                                      f"missing from the store; its folders are kept in {self.storage} (please "
                                      "report this as a bug)")

    def _set_aside(self, path: str) -> None:
        """Move an experiment folder we will not restore out of the way (kept for debugging)."""
        local = Path(path)
        if "://" not in path and local.exists():
            stamp, n = time.strftime("%Y%m%d-%H%M%S"), 0
            while (target := local.with_name(f"{local.name}.unrestorable-{stamp}-{n}")).exists():
                n += 1
            local.rename(target)

    def _run_grid(self, p: Plan) -> None:
        from ray import tune

        done = self.finished_ids()
        pending = [tid for tid in p.grid if tid not in done]
        if not pending:
            return

        def build():
            trainable, tune_config, run_config = self._tune_common("grid")
            cells = [{"trial_id": tid, "trial": p.grid[tid], **self._worker_resources()} for tid in pending]
            return tune.Tuner(trainable, param_space={"cell": tune.grid_search(cells)}, tune_config=tune_config,
                              run_config=run_config)

        self._fit("grid", build, lambda: not set(p.grid) <= self.finished_ids(), searcher=False)

    def _run_study(self, study: Study) -> None:
        from ray import tune
        from ray.tune.search.optuna import OptunaSearch

        meta = self.store.read_meta()
        if meta.get("studies", {}).get(study.name, {}).get("status") == "finished":
            return
        spec, wl = self.spec, self.spec.workload_obj()
        by_steps = study.objective == "steps"
        mode = "min" if by_steps or not wl.higher_is_better else "max"

        def stored_objective(t: dict[str, Any]) -> float:
            if by_steps:
                return steps_objective(t, study.budget_steps)
            return t["final_metric"] if t["final_metric"] is not None else worst_objective(wl.higher_is_better)
        storage_url = f"sqlite:///{(self.store.root / 'optuna.db').resolve()}"  # optuna-dashboard <url>

        def build():
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # The rules' predictions are the start-up trials (evaluated first, in the study like any
            # other); TPE models the results from there. Without them, TPE's 10 random start-up
            # trials would make a small study a random search.
            startup = {"n_startup_trials": max(len(study.start_points), 2)} if study.start_points else {}
            sampler = optuna.samplers.TPESampler(seed=spec.tuning.sampler_seed + study.batch_size, **startup)
            # In memory: Tune checkpoints the searcher with the experiment, so a restored study and
            # its searcher agree; the SQLite copy for optuna-dashboard is written from our store.
            searcher = OptunaSearch(metric="objective", mode=mode, study_name=study.name, sampler=sampler,
                                    points_to_evaluate=[dict(p) for p in study.start_points] or None)
            scheduler = None
            if spec.tuning.asha:
                from ray.tune.schedulers import ASHAScheduler

                n = wl.train_size()
                epochs = spec.budget_epochs(study.optimizer, n)
                scheduler = ASHAScheduler(time_attr="examples", grace_period=int(spec.tuning.asha.grace_epochs * n),
                                          max_t=int(math.ceil(epochs * n)) + study.batch_size,
                                          reduction_factor=spec.tuning.asha.reduction_factor)
            done = self._study_done(study)
            remaining = spec.tuning.trials - len(done)
            if remaining <= 0:
                return None
            if done:  # a study restarted from scratch: tell the searcher what its earlier trials found
                # (OptunaSearch cannot mix evaluated and pending points: start points not yet run are skipped)
                keys = ["peak_lr"] + (["warmup_epochs"] if spec.tuning.search_warmup else [])
                searcher = OptunaSearch(metric="objective", mode=mode, study_name=study.name, sampler=sampler,
                                        points_to_evaluate=[{k: t[k] for k in keys} for t in done],
                                        evaluated_rewards=[stored_objective(t) for t in done])
            searcher = StudyBudget(searcher, study.name, spec.tuning.trials)
            space = {"study": study.name, "trial": study.trial, **self._worker_resources(),
                     "peak_lr": tune.loguniform(*study.lr_range)}
            if by_steps:
                space["objective_steps_budget"] = study.budget_steps
            if spec.tuning.search_warmup:
                space["warmup_epochs"] = tune.loguniform(*spec.tuning.warmup_epochs_range)
            else:
                space["warmup_epochs"] = study.warmup_epochs
            trainable, tune_config, run_config = self._tune_common(
                study.name, num_samples=remaining, search_alg=searcher, scheduler=scheduler,
                metric="objective", mode=mode)
            return tune.Tuner(trainable, param_space=space, tune_config=tune_config, run_config=run_config)

        self._fit(study.name, build, lambda: len(self._study_done(study)) < spec.tuning.trials, searcher=True)
        rows = [t for t in self.store.trial_rows() if t.get("study") == study.name]
        export_optuna_study(study, rows, self.store.measurement_rows(), mode, storage_url,
                            spec.tuning.search_warmup and spec.tuning.warmup_epochs_range)
        scored = [t for t in rows if t["status"] == "complete" and t["final_metric"] is not None]
        best = best_trial(scored, wl.higher_is_better, by_steps)
        studies = dict(self.store.read_meta().get("studies", {}))
        studies[study.name] = {
            "status": "finished", "optimizer": study.optimizer, "batch_size": study.batch_size, "seed": study.seed,
            "trials": len(rows), "lr_range": list(study.lr_range), "storage": storage_url,
            "best_peak_lr": best["peak_lr"] if best else None, "best_metric": best["final_metric"] if best else None,
            "best_trial_id": best["trial_id"] if best else None,
            "selects_on": "steps_to_target" if by_steps else "final_metric",
            "best_steps_to_target": best.get("steps_to_target") if best else None,
        }
        self.store.update_meta(studies=studies)

    def _study_done(self, study: Study) -> list[dict[str, Any]]:
        """The study's trials that count against its budget: finished, or stopped early by ASHA."""
        return [t for t in self.store.trial_rows() if t.get("study") == study.name
                and (t["status"] in FINAL or "stopped_by" in json.loads(t.get("extra") or "{}"))]

    def _mark_unfinished_incomplete(self) -> None:
        """Trials that started but did not finish stay visible as ``incomplete`` until resumed."""
        done = self.finished_ids()
        for trial_id, (cfg_meta, last) in list(_DRIVER.get("running", {}).items()):
            if trial_id not in done and last:
                summary = {"steps": last.get("step"), "examples_seen": last.get("examples")}
                self.store.record(trial_row(cfg_meta, "incomplete", summary),
                                  json.loads(last.get("measurements") or "[]"))


def export_optuna_study(study: Study, rows: list[dict], measurements: list[dict], mode: str, storage_url: str,
                        warmup_range) -> None:
    """Write a finished study to SQLite (``optuna-dashboard sqlite:///.../optuna.db``)."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    try:
        optuna.delete_study(study_name=study.name, storage=storage_url)
    except KeyError:
        pass
    st = optuna.create_study(study_name=study.name, storage=storage_url,
                             direction="maximize" if mode == "max" else "minimize")
    dists = {"peak_lr": FloatDistribution(*study.lr_range, log=True)}
    if warmup_range:
        dists["warmup_epochs"] = FloatDistribution(*warmup_range, log=True)
    curves: dict[str, dict[int, float]] = {}
    for m in measurements:
        if m["metric"] == m["metric"]:
            curves.setdefault(m["trial_id"], {})[int(m["examples"])] = m["metric"]
    states = {"complete": TrialState.COMPLETE, "incomplete": TrialState.PRUNED}
    by_steps = study.objective == "steps"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for t in rows:  # in the order they finished
        state = states.get(t["status"], TrialState.FAIL)
        curve = curves.get(t["trial_id"], {})
        st.add_trial(optuna.trial.create_trial(
            params={k: t[k] for k in dists}, distributions=dists,
            intermediate_values={} if by_steps else curve,  # the metric's curve, not the objective's
            value=(steps_objective(t, study.budget_steps) if by_steps else t["final_metric"])
            if state == TrialState.COMPLETE else None, state=state,
            user_attrs={"trial_id": t["trial_id"], "status": t["status"], "batch_size": t["batch_size"]}))


def _restorable(path: str, *, searcher: bool) -> bool:
    """Whether the Tune experiment at ``path`` has a whole state to restore.

    Tune saves its experiment state and then its search algorithm's (``basic-variant-state`` for
    the grid; ``search_gen_state`` and the searcher's pickle for a study), each named by session,
    and copies them to storage file by file. A driver killed on the way leaves any subset: only
    ``tuner.pkl`` (its searcher has no search space yet), or an experiment state without the
    searcher's (OptunaSearch then has no search space, or forgets trials). Restore only when the
    newest experiment state and its own session's search state are all there and readable.
    """
    import fnmatch

    from pyarrow.fs import FileSelector, FileSystem, LocalFileSystem
    from ray import cloudpickle

    try:
        fs, root = FileSystem.from_uri(path) if "://" in path else (LocalFileSystem(), path)
        names = {i.base_name for i in fs.get_file_info(FileSelector(root))}
    except OSError:
        return False
    states = sorted(fnmatch.filter(names, "experiment_state-*.json"))
    if not states:
        return False
    session = states[-1][len("experiment_state-"):-len(".json")]
    needed = [states[-1], *([f"search_gen_state-{session}.json", f"searcher-state-{session}.pkl"] if searcher
                            else [f"basic-variant-state-{session}.json"])]

    def readable(name: str) -> bool:  # the experiment state is JSON; the search states are (cloud)pickles
        try:
            with fs.open_input_stream(f"{root.rstrip('/')}/{name}") as f:
                data = f.readall()
            json.loads(data) if name == states[-1] else cloudpickle.loads(data)  # noqa: S301 - Tune's own files
            return True
        except Exception:  # noqa: BLE001 - cut short or unreadable: not restorable
            return False

    return all(name in names and readable(name) for name in needed)


def _trial_dirname(trial) -> str:
    return str(trial.trial_id)

