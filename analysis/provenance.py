"""What a report says ran, before the spec file's own words: the overrides given on the command
line (with the spec file's values beside them), the budget the trials ran under, and the cells a
claims-only study left out."""

from __future__ import annotations

import json
from pathlib import Path

from analysis.aggregate import Results


def _given(spec: dict, key: str):
    """The value at a dotted key of the spec file (``budget.epochs``), or ``_UNSET``."""
    node = spec
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _UNSET
        node = node[part]
    return node


_UNSET = object()


def _budget_that_ran(res: Results) -> str:
    """The budget the trials ran under, from the resolved spec (and the protocol's budget table)."""
    budget = res.meta["spec_resolved"].get("budget") or {}
    kind = res.protocol["kind"]
    if budget.get("epochs"):
        text = f"{budget['epochs']:g} epochs at every batch size"
    elif budget.get("examples"):
        text = f"{budget['examples']:,} examples at every batch size"
    else:
        text = "the workload's base recipe's epochs"
    steps = [r.get("budget_steps") for r in res.protocol.get("budgets") or [] if r.get("budget_steps")]
    if kind == "steps_to_result":
        text = "a step budget per batch size (the protocol table)" + (
            f", {min(steps):,}-{max(steps):,} steps" if steps else "")
    return f"{text} ({kind.replace('_', ' ')} protocol)"


def _left_out(res: Results) -> str:
    """``claims_only``: the cells no claim reads, which did not run (harness.spec.claims)."""
    cells: dict[str, list[int]] = {}
    for arm, b in res.meta.get("claims_left_out") or []:
        cells.setdefault(arm, []).append(b)
    return ("; claims only, left out: " + "; ".join(f"{a} at B = {', '.join(map(str, bs))}" for a, bs in cells.items())
            if cells else "")


def ran_with(res: Results) -> str:
    """What actually ran, before the spec file's words: the overrides given on the command line (with
    the spec file's own values beside them) and the budget from the resolved spec."""
    given = res.meta.get("spec_given") or {}
    overrides = [o for o in given.get("overrides") or [] if not o.startswith("data_dir=")]
    spec_file = given.get("spec") or {}
    budget = f"budget {_budget_that_ran(res)}" + _left_out(res)
    if not overrides:  # the file's name only: an absolute path names the machine it ran on
        name = Path(given["file"]).name if given.get("file") else ""
        return f"the spec as written{' (' + name + ')' if name else ''}, no overrides; {budget}."
    defaults = []
    for o in overrides:
        key = o.partition("=")[0].strip()
        value = _given(spec_file, key)
        shown = json.dumps(value) if isinstance(value, bool) else value  # true/false, as --set writes them
        defaults.append(f"{key} not set" if value is _UNSET else f"{key}={shown}")
    return (f"{', '.join(overrides)} (the spec file's: {', '.join(defaults)}); {budget}. The spec's description "
            f"below is the spec file's, written for its own settings.")
