"""Sweeps on Ray Tune: spec -> plan -> one Tune run -> trial loop -> results store.

* ``protocol``: the study protocol: the pilot at B0, each batch size's budget and evaluation grid;
* ``eta`` and ``memory``: how long it will take, and whether a trial fits, said before it starts;
* ``plan``: the pure plan (spec -> grid trials and tuned studies; how a sweep may grow), no Ray;
* ``trainable``: what Tune runs in a worker for every trial (``harness.trial.loop.Trial`` inside);
* ``search``: the searcher that hands Tune what the store lacks, grid cells and Optuna studies
  sharing the slots, and per-study ASHA;
* ``records``: the callback that writes each trial's record to the store as it checkpoints and ends;
* ``driver``: ``Sweep``, which ties them together;
* ``ray_session``: the Ray a sweep runs on (started, joined or a cluster's) and its trials' env;
* ``leftovers``: the processes a killed driver's embedded Ray leaves, ended by the next run;
* ``progress``: the console's view of a running sweep or trial.

Imports flow one way: driver -> search, records, trainable, plan -> trial and below.
"""

from harness.sweep.plan import GROWABLE_AXES, Plan, Study, growth, identity, plan, probe_b_noise, spec_hash

__all__ = ["GROWABLE_AXES", "Plan", "Study", "Sweep", "growth", "identity", "plan", "probe_b_noise", "spec_hash"]


def __getattr__(name):  # the driver imports Ray's stack: only when asked for
    if name == "Sweep":
        from harness.sweep.driver import Sweep

        return Sweep
    raise AttributeError(name)
