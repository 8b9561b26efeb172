"""The sweep driver: plans what the results store lacks, runs it as one Ray Tune run, records.

Ray: an embedded local Ray by default (started for the sweep, stopped after), a Ray this process
already runs, or an existing cluster with ``--address`` / ``RAY_ADDRESS`` (``harness.sweep.ray_session``);
the current Tune API only (``Tuner``, ``tune.report``).

The store is the truth. Each run reads it, skips every finished trial, issues every unfinished
one again from the checkpoint its record names, and runs what is new, all in one Tune run
(``harness.sweep.search``). Tune's experiment state is never restored, so a lost or half-written
Ray folder costs nothing but the progress of trials that had not yet checkpointed. A spec that
would change cells the store holds is refused; one that only adds cells grows the sweep.

Failures: a trial that raises or whose worker dies is retried ``retries`` times from its last
checkpoint (``FailureConfig``), then recorded as ``error`` with its message. Divergence is a
result (``diverged``), reported by the trial loop.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from harness.errors import BatchscaleError, SweepConflict
from harness.results.store import FINAL, ResultsStore, environment, now
from harness.spec import SweepSpec
from harness.spec.claims import left_out as claims_left_out
from harness.sweep import eta, leftovers, protocol
from harness.sweep.console import check_address, check_local_gpus, ray_output
from harness.sweep.lock import check_folder, check_name, interrupts_as_ctrl_c, sweep_lock
from harness.sweep.memory import check_memory
from harness.sweep.plan import (REPORT_ONLY, RUN_ONLY, Plan, b_noise_source, check_fits_the_data, growth, plan,
                                probe_b_noise, spec_hash)
from harness.sweep.ray_session import RaySession, trial_env
from harness.trial.calibrate import sweep_cap


class Sweep:
    def __init__(self, spec: SweepSpec, given: dict[str, Any], results_root: str | Path = "results",
                 name: str | None = None, address: str | None = None, storage: str | None = None,
                 progress=None, verbose: bool = False):
        self.spec, self.verbose, self.given = spec, verbose, given
        self.name = check_name(name or spec.name or "sweep")
        self.store = ResultsStore(Path(results_root) / self.name)
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.storage = storage or str((self.store.root / "ray").resolve())
        self.progress = progress
        self.ray = RaySession(self.address, self.storage, verbose)

    def _say(self, line: str) -> None:
        if self.progress:
            self.progress.console.print(line, highlight=False, markup=False, soft_wrap=True)

    @property
    def mode(self) -> str:
        by_steps = self.spec.protocol.kind == "steps_to_result"
        return "min" if by_steps or not self.spec.workload_obj().higher_is_better else "max"

    # -- bookkeeping ------------------------------------------------------------------------------------
    def _check_existing(self) -> tuple[dict[str, Any] | None, dict[str, list]]:
        """(the stored meta or None, the values this spec adds to it)."""
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

    # -- run --------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run, resume or grow the sweep: its folder checked first, held by this process alone."""
        check_folder(self.store.root)
        with sweep_lock(self.store.root), interrupts_as_ctrl_c():
            return self._run()

    def _run(self) -> dict[str, Any]:
        if self.address:  # before anything is written: a wrong address fails in seconds, not minutes
            check_address(self.address)
        else:  # and GPUs the embedded Ray does not have: Tune would wait for them for ever
            check_local_gpus(self.spec)
        meta, added = self._check_existing()
        if meta and not added:  # what the report does with the results may change without a new sweep
            resolved = {**meta["spec_resolved"], **self.spec.model_dump(mode="json", include=set(REPORT_ONLY + RUN_ONLY))}
            if resolved != meta["spec_resolved"]:
                meta = self.store.update_meta(spec_resolved=resolved)
        if meta and meta.get("status") == "finished" and not added:
            return {"already_finished": True, **self.outcome(meta)}
        if added:
            self._say(f"sweep '{self.name}' grows: " + "; ".join(f"{k if '.' in k else 'axes.' + k} + {v}" for k, v in added.items())
                      + " (only the new cells run; every finished trial stays as it is)")
        if meta and (ended := leftovers.end_abandoned(meta.get("sessions", []))):
            self._say(f"ended {len(ended)} process(es) the killed driver of an earlier run left behind "
                      f"(pids {', '.join(map(str, ended))})")

        wl = self.spec.workload_obj()
        wl.prepare()  # generate/convert data here once, and fail before Ray if a dataset is missing
        dataset_size = wl.train_size()
        check_fits_the_data(self.spec, dataset_size)
        cap, cap_source = sweep_cap(self.spec)
        check_memory(self.spec, cap, self.address)  # before the pilot: what cannot fit is refused now
        stored = (meta or {}).get("protocol", {}).get("estimates")
        if not stored and protocol.needs_estimate(self.spec) and self.spec.protocol.s_min is None:
            self._say(f"protocol {self.spec.protocol.kind}: pilot of the base recipe at B0 to the target"
                      + eta.pilot_line(self.spec, dataset_size) + " ...")
        estimates = protocol.estimates(self.spec, dataset_size, stored)
        budgets = protocol.budget_table(self.spec, dataset_size, estimates)
        if estimates:
            for line in protocol.format_table(budgets, estimates, wl.metric):
                self._say(line)
        protocol.refuse_infeasible(self.spec, budgets)  # before anything is written
        b_noise = probe_b_noise(self.spec, meta, estimates)  # the noise-aware rule's: the pilot's at the target
        b_noise_from = b_noise_source(self.spec, meta, estimates)
        from harness.sweep.tracking import sinks

        self.tracking = sinks(self.spec.tracking, self.store.root, self.name)  # a missing package fails here
        protocol_meta = {"kind": self.spec.protocol.kind, "margin": self.spec.protocol.margin,
                         "checked": bool(estimates), "estimates": {o: e.to_json() for o, e in estimates.items()},
                         "budgets": budgets}
        self._say(f"{self.spec.resources.cpus} thread(s) per trial, micro-batches of at most {cap} ({cap_source})")
        the_plan = plan(self.spec, dataset_size, b_noise, budgets, micro_batch_cap=cap)
        if meta is None and not self.address and (line := eta.sweep_line(self.spec, the_plan, budgets, self.name)):
            self._say(line)  # a new sweep on this machine: how long, before it starts
        session = self.session = {"started_at": now(), "address": self.address or "local",
                                  "micro_batch_cap": {"cap": cap, "source": cap_source},
                                  "threads_per_trial": self.spec.resources.cpus}
        digest = spec_hash(self.spec)
        if meta is None:
            meta = {
                "name": self.name, "status": "running", "spec_hash": digest,
                "spec_given": self.given, "spec_resolved": self.spec.model_dump(mode="json"),
                "workload": {"name": wl.name, "metric": wl.metric, "higher_is_better": wl.higher_is_better,
                             "chance_metric": wl.chance_metric(), "dataset_size": dataset_size, "summary": wl.summary,
                             "base_recipes": {o: self.spec.base_recipe(o).model_dump(mode="json")
                                              for o in self.spec.optimizers()}},
                "trials": the_plan.rows, "studies": {}, "environment": environment(),
                "started_at": session["started_at"], "finished_at": None, "sessions": [],
                "storage": self.storage, "noise_aware": b_noise, "noise_aware_source": b_noise_from,
                "protocol": protocol_meta, "claims_left_out": claims_left_out(self.spec),
            }
            self.store.root.mkdir(parents=True, exist_ok=True)
            self.store.write_meta(meta)
        elif added:  # the plan, the spec and the protocol's budget table now cover the new cells too
            session["grew"] = added
            self.store.update_meta(spec_resolved=self.spec.model_dump(mode="json"), spec_given=self.given,
                                   spec_hash=digest, trials=the_plan.rows, claims_left_out=claims_left_out(self.spec),
                                   protocol={**(meta.get("protocol") or {}), **protocol_meta}, finished_at=None,
                                   **({"noise_aware": b_noise, "noise_aware_source": b_noise_from} if b_noise else {}))
        sessions = self.store.read_meta().get("sessions", [])
        self.store.update_meta(status="running", sessions=[*sessions, session])

        from harness.sweep.records import StoreCallback

        callback = StoreCallback(self.store, self.progress)
        tracker = None
        if self.tracking:
            from harness.sweep.tracking import TrackingCallback

            tracker = TrackingCallback(self.tracking, wl.metric)
        callbacks = [c for c in (callback, tracker) if c is not None]
        started, status, failure = time.monotonic(), "failed", None
        try:
            with ray_output(self.store.root / "ray.log", self.verbose):
                try:
                    if ray_info := self.ray.start():
                        session["ray"] = ray_info
                    if not self.address:
                        self.store.update_meta(sessions=[*sessions, session])
                    if self.progress:
                        self.progress.start(total=len(the_plan.grid) + self._study_trials(the_plan),
                                            done=self.finished_ids())
                    self._run_trials(the_plan, callbacks)
                    status = "finished"
                except KeyboardInterrupt:
                    status = "interrupted"
                finally:
                    if self.progress:
                        self.progress.stop()
                    callback.unfinished()
                    if tracker:
                        tracker.close()
                    self.store.consolidate()  # the trials' records into the two tables readers open
                    self.ray.stop()
        except Exception as e:  # recorded as failed (with why), then raised as it was
            failure = e
            raise
        finally:
            if status == "failed":
                self.store.update_meta(status=status, sessions=[
                    *self.store.read_meta()["sessions"][:-1],
                    {**session, "ended_at": now(), "status": status,
                     **({"error": f"{type(failure).__name__}: {failure}"[:500]} if failure else {})}])
        if status == "finished":
            self._record_studies(the_plan)
        meta = self.store.update_meta(status=status, finished_at=now() if status == "finished" else None,
                                      sessions=[*self.store.read_meta()["sessions"][:-1],
                                                {**session, "ended_at": now(), "status": status}])
        out = self.outcome(meta)
        out["wall_seconds"] = time.monotonic() - started
        if status == "interrupted":
            raise KeyboardInterrupt
        return out

    def _study_trials(self, p: Plan) -> int:
        """The studies' trials for the progress view: the TPE studies' budgets; a bracketing study's
        trials so far and those its search will at least still ask for (it ends when bracketed)."""
        searcher = self._searcher(p)
        return sum(s.left() for s in searcher.studies) + sum(1 for r in self.store.trial_rows() if r.get("study")
                                                             and r["status"] in FINAL)

    def outcome(self, meta) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for t in self.store.trial_rows():
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        return {"name": self.name, "path": str(self.store.root), "status": meta.get("status"), "counts": counts,
                "studies": meta.get("studies", {})}

    # -- the Tune run -----------------------------------------------------------------------------------
    def _searcher(self, p: Plan):
        """What the store lacks, as one searcher: unfinished grid cells and the studies' trials."""
        from harness.sweep.search import BracketStudyRun, StudyRun, SweepSearcher, resume_from

        rows = self.store.trial_rows()
        by_id = {r["trial_id"]: r for r in rows}
        res = {**self._worker_resources(), "env": trial_env(self.storage)}
        cells = []
        for tid, fields in p.grid.items():
            row = by_id.get(tid)
            if row is None or row["status"] not in FINAL:
                cells.append({"trial_id": tid, "trial": fields, **res,
                              **({"resume_from": resume_from(row)} if row and resume_from(row) else {})})
        t = self.spec.tuning
        warmup_range = t.warmup_epochs_range if t.search_warmup else None
        runs = []
        higher = self.spec.workload_obj().higher_is_better
        for s in p.studies:
            base = {"study": s.name, "trial": s.trial, **res,
                    **({"objective_steps_budget": s.budget_steps} if s.objective == "steps" else {})}
            if s.search == "bracket":
                runs.append(BracketStudyRun(s, [r for r in rows if r.get("study") == s.name], higher_is_better=higher,
                                            base_configs={seed: {**base, "trial": fields}
                                                          for seed, fields in s.trials_by_seed.items()}))
                continue
            runs.append(StudyRun(s, [r for r in rows if r.get("study") == s.name], budget=t.trials,
                                 concurrent=t.concurrent_trials, higher_is_better=self.spec.workload_obj().higher_is_better,
                                 sampler_seed=t.sampler_seed, warmup_range=warmup_range, base_config=base))
        return SweepSearcher(cells, [r for r in runs if r.left() > 0], self.mode)

    def _run_trials(self, p: Plan, callbacks: list) -> None:
        from ray import tune

        for attempt in range(2):
            searcher = self._searcher(p)
            if not searcher.total():
                return
            if attempt:
                self._say(f"{searcher.total()} trial(s) still missing from the store after the Tune run; running "
                          "them again")
            trainable, tune_config, run_config = self._tune_common(searcher, callbacks)
            started = time.monotonic()
            try:
                tune.Tuner(trainable, tune_config=tune_config, run_config=run_config).fit()
            finally:  # how well the run kept its slots busy: make bench ARGS="--only packing"
                self.session["tune_seconds"] = self.session.get("tune_seconds", 0.0) + time.monotonic() - started
                self.session["slots"] = self._slots(tune_config.max_concurrent_trials)
        if self._searcher(p).total():
            raise BatchscaleError(f"sweep '{self.name}': trials still missing from the store after two Tune runs; "
                                  f"the Ray folder is kept in {self.storage} (please report this as a bug)")

    def _tune_common(self, searcher, callbacks: list):
        from ray import tune

        spec = self.spec
        concurrent = spec.max_concurrent
        from harness.sweep.trainable import tune_trial

        if spec.data_parallel.processes > 1:
            # The workers hold the CPUs/GPUs; the Tune trial only launches and waits on them (a
            # 1-byte memory request, as Ray refuses an empty one). As many trials at once as the
            # cluster has room for all their workers (Ray Train's advice), unless given.
            trainable = tune.with_resources(tune_trial, {"cpu": 0, "memory": 1})
            concurrent = concurrent or self._slots(None)
        else:
            trainable = tune.with_resources(tune_trial, {"cpu": spec.resources.cpus, "gpu": spec.resources.gpus})
        scheduler = None
        if spec.tuning.asha and searcher.studies:
            from harness.sweep.search import StudyASHA

            studies = {s.study.name: s.study for s in searcher.studies}
            scheduler = StudyASHA(lambda name: self._asha_for(studies[name]))
        tune_config = tune.TuneConfig(num_samples=searcher.total(), search_alg=searcher, scheduler=scheduler,
                                      metric="objective", mode=self.mode, reuse_actors=True,
                                      max_concurrent_trials=concurrent,
                                      trial_dirname_creator=lambda trial: str(trial.config["trial_id"]))
        run_config = tune.RunConfig(
            name="trials", storage_path=self.storage, callbacks=list(callbacks), verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # the store names the one to resume
        )
        return trainable, tune_config, run_config

    def _asha_for(self, study):
        """ASHA for one study: rungs in examples seen, from ``grace_epochs`` to the budget."""
        from ray.tune.schedulers import ASHAScheduler

        spec = self.spec
        n = spec.workload_obj().train_size()
        epochs = spec.budget_epochs(study.optimizer, n)
        return ASHAScheduler(time_attr="examples", metric="objective", mode=self.mode,
                             grace_period=int(spec.tuning.asha.grace_epochs * n),
                             max_t=int(math.ceil(epochs * n)) + study.batch_size,
                             reduction_factor=spec.tuning.asha.reduction_factor)

    def _record_studies(self, p: Plan) -> None:
        from harness.sweep.studies import record_studies

        record_studies(self.store, self.spec, p, self.mode)

    # -- Ray ---------------------------------------------------------------------------------------------
    def _slots(self, limit: int | None) -> int:
        """Trials that can run at once: the cluster's CPUs (GPUs) over a trial's, within any limit."""
        import ray

        have, r = ray.cluster_resources(), self.spec.resources
        per = max(1, self.spec.data_parallel.processes)
        room = [int(have.get("CPU", 0) // (per * r.cpus))] + ([int(have.get("GPU", 0) // (per * r.gpus))] if r.gpus else [])
        return max(1, min(room + ([limit] if limit else [])))

    def _worker_resources(self) -> dict[str, Any]:
        """What a data-parallel trial's config carries for its Ray Train workers."""
        return {"resources": self.spec.resources.model_dump()} if self.spec.data_parallel.processes > 1 else {}

