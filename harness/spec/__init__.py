"""Experiment specs: YAML -> validated objects, ``--set`` overrides, one-line errors.

Layers, lowest first (as in init2winit): the workload's defaults (its base recipe per optimizer),
the YAML file, then ``--set a.b=c`` overrides. A spec with an ``axes`` key is a sweep spec
(``batchscale sweep``); without, it describes one trial (``batchscale train``).

Every problem is a ``SpecError``: exit code 2 and one line naming the key, the value and what is
allowed. Nothing is half-applied: a spec is validated whole before anything runs.

The models live in ``common`` (what all share), ``trial`` (one trial) and ``sweep`` (a sweep, and
the workload-free recipe spec); ``loading`` reads YAML and applies overrides. Import from here.
What follows from a spec without running anything lives beside them: ``claims`` (the cells each
claim kind reads, for ``--claims-only``), ``tuning`` (the tuned arm's LR lattice and selection)
and ``catalog`` (the shipped example sweeps and paper studies, by name).

May import: ``harness.rules``, ``harness.errors``, ``harness.plugins`` (and, lazily, a workload's
defaults from ``harness.workloads``); never the trial loop, a sweep or the store.
"""

from harness.spec.common import Strict
from harness.spec.loading import apply_overrides, load_spec, parse_override, read_yaml, yaml_load
from harness.spec.sweep import Asha, Axes, Claim, Projection, Protocol, RecipeSpec, SweepSpec, Tracking, Tuning
from harness.spec.trial import (Augment, AutoWUSpec, Budget, Common, DataParallel, Divergence, EvalSpec, NoiseAwareSpec,
                                Resources, Sharpness, Target, TrialSpec)

__all__ = ["Asha", "Augment", "AutoWUSpec", "Axes", "Budget", "Claim", "Common", "DataParallel", "Divergence", "EvalSpec",
           "NoiseAwareSpec", "Projection", "Protocol", "RecipeSpec", "Resources", "Sharpness", "Strict", "SweepSpec", "Target",
           "TrialSpec", "Tracking", "Tuning", "apply_overrides", "load_spec", "parse_override", "read_yaml", "yaml_load"]
