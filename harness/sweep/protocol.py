"""Study protocols: give every batch size a budget that can answer the question.

A study compares rules at each batch size B. If no rule *could* reach the target at B within its
budget, the comparison there says nothing about the rules, and a "does not hold" at B is an
artefact of the budget. McCandlish et al. 2018 (arXiv 1812.06162) give the size of what is needed:
steps to a fixed target fall as

    S(B) = S_min (1 + B_crit / B),     examples E(B) = B S(B) = E_min (1 + B / B_crit)

with B_crit close to the gradient noise scale B_simple near the target. A **pilot** measures both
at the base batch B0, before any trial runs: the base recipe trained to the target (steps S0), and
B_simple at the weights that reached it, from 64 micro-batches of B0 or more with the weights held
(harness.trial.noise.noise_scale_at), beside the in-trial moving average (which spans a window over
which the gradient shrinks, and is dominated by its start). B_crit is the *smaller* of the two:
S(B)/S0 = (1 + B_crit/B)/(1 + B_crit/B0) falls as B_crit grows, so an overestimate would cut the
large batches' budgets, and B_simple overestimates B_crit when the Hessian is ill-conditioned
(McCandlish et al.'s B_noise = tr(H Sigma)/G'HG is then smaller); ``S_min = S0 / (1 + B_crit/B0)``.
Both may instead be given (``protocol.s_min``, ``protocol.b_crit``). S(B) is a lower bound (the best
LR at B, a decay that ends after the target), so a budget must hold ``margin`` times it (default 2:
in this project's first default study, 4K and 8K had 1.8x and 1.1x of it and no arm reached it).

Two protocols (``protocol.kind``):

* ``fixed_epochs``: the LEGW paper's and Goyal et al.'s: the same epoch budget E at every B, no
  retuning. Batch B is feasible when ``ceil(E N / B) >= margin * S(B)``; a study with an infeasible
  batch size is refused (one line naming the batch size and the epochs it needs) unless
  ``allow_infeasible``, which runs it and marks its verdicts "not measurable".
* ``steps_to_result``: Shallue et al. 2018 (arXiv 1811.03600): each B gets its own step budget,
  ``margin * S(B)`` (or ``step_budgets``), trials stop at the target, and the tuned arm selects the
  trial with the fewest steps to the target.

In both, evaluation is dense enough to resolve steps-to-target to ``eval_resolution`` (5%): every
``floor(resolution * S(B) / 2)`` steps (at least 1; the 2 because S(B) may overestimate the steps
of the best rule by up to that much when B_simple underestimates B_crit). Read every k steps, the
first evaluation at the target is at most k - 1 steps late: the resolution is (k - 1) / steps (0
when every step is evaluated). The report states the resolution each cell got. Past the target,
a trial goes back to the spec's grid (``eval.per_epoch``, or ``eval.every_examples``): in a
fixed-epoch study the target comes early at small B (B0 reaches it in a few percent of its budget),
and evaluating densely for the rest of the budget cost as much as a third of the trial.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from harness.errors import BatchscaleError, SpecError
from harness.rules.scaling import GOYAL_WARMUP_FRACTION, epochs_to_steps
from harness.spec import SweepSpec, TrialSpec
from harness.trial.noise import noise_scale_at

#: The pilot's noise-scale probe at the target: this many micro-batches of B0, at least this many
#: examples (|G|^2 is resolved when the probe's examples exceed B_simple).
PROBE_MICRO_BATCHES = 64
PROBE_MIN_EXAMPLES = 32_768


@dataclass(frozen=True)
class Estimate:
    """S(B) = s_min (1 + b_crit / B) for one optimizer's base recipe, and where it came from."""

    optimizer: str
    s_min: float
    b_crit: float
    source: str  # "pilot" or "given"
    pilot: dict[str, Any] | None = None

    def steps(self, batch: int) -> float:
        return self.s_min * (1 + self.b_crit / batch)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Estimate":
        return cls(**d)


def needs_estimate(spec: SweepSpec) -> bool:
    p = spec.protocol
    return spec.target is not None and (p.s_min is not None or p.pilot)


def run_pilot(spec: SweepSpec, optimizer: str, dataset_size: int) -> Estimate:
    """The base recipe at B0 to the target, evaluated densely; B_simple where it reached it. Its
    budget: ``protocol.pilot_epochs``, else the larger of the study's and the recipe's epochs."""
    from harness.trial.loop import Trial

    base = spec.base_recipe(optimizer)
    b0 = base.base_batch_size
    # at least the recipe's own budget: a study budget too small for B0 is the feasibility check's to report
    epochs = spec.protocol.pilot_epochs or max(spec.budget_epochs(optimizer, dataset_size), base.epochs)
    steps = epochs_to_steps(epochs, dataset_size, b0)
    every = max(1, steps // 400)  # S0 resolved to 0.25% of the pilot's budget
    trial_spec = spec.trial_spec(optimizer, "none", b0, spec.axes.seeds[0], budget={"epochs": epochs},
                                 eval={**spec.eval.model_dump(), "every_examples": every * b0},
                                 target={**spec.target.model_dump(), "stop": True}, noise_scale=True,
                                 threads=spec.resources.cpus, **PLAIN)
    trial = Trial(trial_spec)
    result = trial.run()
    s = result.summary
    where = f"protocol: the pilot (base recipe of {optimizer} at B0={b0}, {epochs:g} epochs = {steps} steps)"
    if not s["target_reached"]:
        best = s["best_metric"]
        raise SpecError(
            "protocol.pilot_epochs", epochs,
            f"{where} did not reach {spec.target.metric} {spec.target.value:g} (best "
            f"{'n/a' if best is None else f'{best:.4g}'}, status {result.status}), so no batch size can be judged; "
            f"allowed: more pilot epochs, an easier target, or protocol.s_min and protocol.b_crit")
    s0 = s["steps_to_target"]
    # B_simple at the weights that reached the target, from many micro-batches (harness.trial.noise)
    probe = probe_noise_scale_at_target(trial, dataset_size, seed=spec.axes.seeds[0])
    in_trial = next((r["noise_scale"] for r in result.measurements if r["step"] == s0), None)
    candidates = [v for v in (probe["b_simple"], in_trial) if v is not None and math.isfinite(v) and v > 0]
    if not candidates:
        raise BatchscaleError(f"{where} measured no usable gradient noise scale at the target (probe of "
                              f"{probe['examples']} examples: {probe['b_simple']:g}); give protocol.s_min and "
                              "protocol.b_crit")
    # The smaller estimate sizes the budgets: a larger B_crit predicts fewer steps at large B, and an
    # overestimate would cut their budgets below what they need (the artefact this module prevents).
    b_crit = min(candidates)
    s_min = s0 / (1 + b_crit / b0)
    pilot = {"batch_size": b0, "epochs": epochs, "steps_to_target": s0, "eval_every_steps": every,
             "b_simple_probe": probe["b_simple"], "b_simple_probe_examples": probe["examples"],
             "b_simple_moving_average": in_trial, "train_seconds": s["train_seconds"], "threads": s["threads"]}
    return Estimate(optimizer, s_min, b_crit, "pilot", pilot)


def probe_noise_scale_at_target(trial, dataset_size: int, seed: int = 0) -> dict[str, float]:
    """B_simple at the trial's current weights: micro-batches of the trial's size, at least
    PROBE_MICRO_BATCHES of them and PROBE_MIN_EXAMPLES examples, grown fourfold until the probe holds
    four times the B_simple it measures (or the whole training set)."""
    micro = trial.micro_batch_size
    examples = min(dataset_size, max(PROBE_MICRO_BATCHES * trial.recipe.batch_size, PROBE_MIN_EXAMPLES))
    while True:
        probe = noise_scale_at(trial.model, trial.workload.loss, trial.data.train, micro, examples // micro, seed)
        b = probe["b_simple"]
        if examples >= dataset_size or (math.isfinite(b) and 0 < b and probe["examples"] >= 4 * b):
            return probe
        examples = min(dataset_size, examples * 4)


def estimates(spec: SweepSpec, dataset_size: int, stored: dict[str, Any] | None = None) -> dict[str, Estimate]:
    """Per optimizer: given in the spec, stored by an earlier run of this sweep, or piloted now."""
    if not needs_estimate(spec):
        return {}
    p, out = spec.protocol, {}
    for optimizer in spec.optimizers():
        if p.s_min is not None:
            out[optimizer] = Estimate(optimizer, p.s_min, p.b_crit, "given")
        elif stored and optimizer in stored:
            out[optimizer] = Estimate.from_json(stored[optimizer])
        else:
            out[optimizer] = run_pilot(spec, optimizer, dataset_size)
    return out


def budget_table(spec: SweepSpec, dataset_size: int, est: dict[str, Estimate]) -> list[dict[str, Any]]:
    """One row per (optimizer, batch size): predicted steps, budget, feasibility, evaluation grid."""
    p, n = spec.protocol, dataset_size
    rows = []
    for optimizer in spec.optimizers():
        e = est.get(optimizer)
        epochs = spec.budget_epochs(optimizer, n)
        for b in spec.axes.batch_sizes:
            row: dict[str, Any] = {"optimizer": optimizer, "batch_size": b, "protocol": p.kind, "dataset_size": n}
            predicted = needed = None
            if e is not None:
                predicted = e.steps(b)
                needed = math.ceil(p.margin * predicted)
            if p.kind == "steps_to_result":
                budget_steps = p.step_budgets.get(b) or needed or epochs_to_steps(epochs, n, b)
            else:
                budget_steps = epochs_to_steps(epochs, n, b)
            per_epoch_every = max(1, math.ceil(n / spec.eval.per_epoch / b)) if not spec.eval.every_examples else \
                max(1, spec.eval.every_examples // b)
            every = per_epoch_every
            if predicted is not None:
                every = max(1, min(every, math.floor(p.eval_resolution * predicted / 2)))
            row.update(
                steps_predicted=predicted, steps_needed=needed,
                epochs_needed=None if needed is None else needed * b / n,
                budget_steps=budget_steps, budget_epochs=budget_steps * b / n,
                feasible=None if needed is None else budget_steps >= needed,
                eval_every_steps=every,
                # past the target (fixed epochs: the rest of the budget) the spec's grid again
                eval_after_target_steps=per_epoch_every if p.kind == "fixed_epochs" else every,
                # the first evaluation at or past the target is at most every - 1 steps late
                resolution_predicted=None if predicted is None else (every - 1) / predicted,
            )
            rows.append(row)
    return rows


def refuse_infeasible(spec: SweepSpec, rows: list[dict[str, Any]]) -> None:
    """One line for the first (largest) batch size the budget cannot serve, unless allowed."""
    bad = [r for r in rows if r["feasible"] is False]
    if not bad or spec.protocol.allow_infeasible:
        return
    r = max(bad, key=lambda r: r["batch_size"])
    others = sorted({x["batch_size"] for x in bad} - {r["batch_size"]})
    also = f" (also B={', '.join(map(str, others))})" if others else ""
    if spec.protocol.kind == "steps_to_result":
        raise SpecError(f"protocol.step_budgets.{r['batch_size']}", r["budget_steps"],
                        f"batch size {r['batch_size']} needs {r['steps_needed']} steps ({spec.protocol.margin:g} x "
                        f"S(B) = {r['steps_predicted']:.0f}) to reach the target{also}; allowed: at least that, or "
                        f"protocol.allow_infeasible: true to run it with its verdicts marked not measurable")
    raise SpecError("budget.epochs", round(spec.budget_epochs(r["optimizer"], r["dataset_size"]), 4),
                    f"batch size {r['batch_size']} needs {r['epochs_needed']:.3g} epochs ({r['steps_needed']} steps = "
                    f"{spec.protocol.margin:g} x S(B) = {r['steps_predicted']:.0f}) to reach the target{also}, "
                    f"whatever its rule; allowed: at least {math.ceil(r['epochs_needed'] * 100) / 100:g} epochs, "
                    f"dropping that batch size, or protocol.allow_infeasible: true to run it with its verdicts "
                    f"marked not measurable")


#: The pilot and the throughput probe measure the problem itself: one process, no augmentation
#: (the noise scale is not measured across decentralized workers; harness.trial.gossip).
PLAIN = {"augment": {"kind": "none"}, "data_parallel": {"workers": 1}}


def trial_settings(spec: SweepSpec, row: dict[str, Any], dataset_size: int) -> dict[str, Any]:
    """TrialSpec fields that the protocol sets for one batch size: budget, evaluation grid, target
    stop; and, for steps_to_result, the fixed warmup pinned to the study's epoch budget (Goyal's
    5/90 of it) so that it is the same number of epochs at every batch size."""
    b = row["batch_size"]
    out: dict[str, Any] = {}
    if row["steps_predicted"] is not None:  # dense enough to resolve the predicted steps; else the spec's grid
        out["eval"] = {**spec.eval.model_dump(), "every_examples": row["eval_every_steps"] * b}
        if row.get("eval_after_target_steps", 0) > row["eval_every_steps"]:  # the per-epoch grid, past the target
            out["eval"]["after_target_every_examples"] = row["eval_after_target_steps"] * b
    if spec.protocol.kind == "steps_to_result":
        out["budget"] = {"epochs": None, "examples": row["budget_steps"] * b}
        out["target"] = {**spec.target.model_dump(), "stop": True}
        base = spec.base_recipe(row["optimizer"])
        if base.fixed_warmup_epochs is None:
            out["fixed_warmup_epochs"] = GOYAL_WARMUP_FRACTION * spec.budget_epochs(row["optimizer"], dataset_size)
    return out


def format_table(rows: list[dict[str, Any]], est: dict[str, Estimate], metric: str) -> list[str]:
    """The feasibility table as text lines (``batchscale plan``, the sweep's start)."""
    lines = []
    for optimizer, e in est.items():
        if e.source == "pilot":
            avg = e.pilot["b_simple_moving_average"]
            src = (f"pilot at B0={e.pilot['batch_size']}: target reached in {e.pilot['steps_to_target']} steps; "
                   f"B_simple there {e.pilot['b_simple_probe']:.0f} (probe of {e.pilot['b_simple_probe_examples']} "
                   f"examples), moving average {'n/a' if avg is None else f'{avg:.0f}'}; the smaller is used")
        else:
            src = "given in the spec"
        lines.append(f"{optimizer}: S(B) = S_min (1 + B_crit/B), S_min = {e.s_min:.1f} steps, B_crit = {e.b_crit:.0f} "
                     f"({src})")
    head = (f"{'optimizer':>10} {'batch':>7} {'S(B)':>8} {'needed':>8} {'ep_need':>8} {'budget':>8} {'ep_budget':>9} "
            f"{'eval_every':>10} {'resol':>6}  verdicts")
    lines.append(head)
    for r in rows:
        def num(v, fmt):
            return format(v, fmt) if v is not None else "-"
        verdict = {True: "measurable", False: "NOT MEASURABLE (budget too small)", None: "not checked"}[r["feasible"]]
        lines.append(f"{r['optimizer']:>10} {r['batch_size']:>7} {num(r['steps_predicted'], '8.0f')} "
                     f"{num(r['steps_needed'], '8d')} {num(r['epochs_needed'], '8.3g')} {r['budget_steps']:>8} "
                     f"{r['budget_epochs']:>9.3g} {r['eval_every_steps']:>10} "
                     f"{num(r['resolution_predicted'], '6.1%')}  {verdict}")
    sparse = [r for r in rows if r.get("eval_after_target_steps", 0) > r["eval_every_steps"]]
    if sparse:
        lines.append("past the target, a trial evaluates on the spec's grid again (eval.per_epoch): every "
                     + ", ".join(f"{r['eval_after_target_steps']} steps at B={r['batch_size']}" for r in sparse))
    return lines


def best_trial(rows: list[dict[str, Any]], higher_is_better: bool, by_steps: bool) -> dict[str, Any] | None:
    """A study's best finished trial: fewest steps to the target (then best final metric) when it
    selects on steps, else best final metric. The one rule of the sweep (a study's best LR) and of
    analysis.aggregate (a tuned cell)."""
    if not rows:
        return None
    sign = 1 if higher_is_better else -1

    def key(t):
        steps = t.get("steps_to_target") if t.get("target_reached") else None
        return ((0, -steps) if steps is not None else (-1, 0)) if by_steps else (0, 0), sign * t["final_metric"]

    return max(rows, key=key)


# -- the noise-aware rule's B_noise ----------------------------------------------------------------


def probe_noise_scale(spec: "TrialSpec") -> float:
    """B_noise measured at B0 in a short run of the base recipe (``noise_aware.probe_epochs``)."""
    from harness.trial.loop import Trial

    base = spec.base_recipe()
    probe = spec.model_copy(update={"method": "none", "batch_size": base.base_batch_size, "peak_lr": None,
                                    "warmup_epochs": None, "target": None, "noise_scale": True,
                                    "budget": spec.budget.model_copy(update={
                                        "epochs": spec.noise_aware.probe_epochs, "examples": None})})
    value = Trial(probe).run().summary["noise_scale"]
    if value is None or not math.isfinite(value) or value <= 0:
        raise BatchscaleError(f"noise-aware: the probe at B0={base.base_batch_size} measured no usable noise scale "
                              f"({value}); give noise_aware.b_noise in the spec")
    return value


def with_b_noise(spec: "TrialSpec") -> "TrialSpec":
    """A noise-aware trial spec with its B_noise: as given, or probed now at B0 (the trial itself
    never probes: it needs the number before it resolves its LR)."""
    if spec.method != "noise-aware" or spec.noise_aware.b_noise or spec.peak_lr is not None:
        return spec
    return spec.model_copy(update={"noise_aware": spec.noise_aware.model_copy(
        update={"b_noise": probe_noise_scale(spec)})})

