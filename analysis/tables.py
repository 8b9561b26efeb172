"""Tables in the LEGW paper's shape: rows = batch sizes, columns = methods (x optimizers).

Each table is written as Markdown, CSV (numbers) and LaTeX. The best cell of each row is marked
(bold); diverged cells say so; a target never reached says "not reached" with how many seeds did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.aggregate import Results, cell_label


@dataclass
class Table:
    name: str
    title: str
    display: pd.DataFrame  # strings
    numbers: pd.DataFrame  # the values behind them (CSV)
    best: pd.DataFrame  # bool mask of the best cell of each row
    note: str = ""  # a paragraph under the title: how to read the table


def _columns(res: Results, agg: pd.DataFrame):
    """(batch sizes, [(column label, that column's cells indexed by batch size)]) in the spec's order."""
    spec = res.meta["spec_resolved"]
    optimizers = spec["axes"].get("optimizers") or sorted(agg.optimizer.unique())
    present = set(zip(agg.optimizer, agg.method))
    cols = [(o, m) for o in optimizers for m in spec["axes"]["methods"] if (o, m) in present]
    shown = sorted({o for o, _ in cols})
    batches = sorted(agg.batch_size.unique())
    return batches, [(cell_label(o, m, shown), agg[(agg.optimizer == o) & (agg.method == m)].set_index("batch_size"))
                     for o, m in cols]


def _fmt_metric(row, digits: int | str) -> str:
    """``digits``: decimals (accuracy: 4), or a format such as ``.3g`` for metrics of any scale."""
    if row.seeds == row.errors:
        return "error"
    if row.complete == 0 and row.diverged:
        return "diverged"
    if math.isnan(row.final_mean):
        return "n/a"
    fmt = digits if isinstance(digits, str) else f".{digits}f"
    text = f"{row.final_mean:{fmt}}"
    if not math.isnan(row.final_std):
        text += f" ± {row.final_std:{fmt}}"
    if row.diverged:
        text += f" ({row.diverged}/{row.seeds} diverged)"
    return text


def accuracy_table(res: Results, agg: pd.DataFrame) -> Table:
    digits = 4 if res.higher_is_better else ".3g"  # accuracy in points; losses, perplexities at any scale
    batches, columns = _columns(res, agg)
    display = pd.DataFrame(index=pd.Index(batches, name="batch size"))
    numbers = pd.DataFrame(index=display.index)
    for label, sub in columns:
        display[label] = [_fmt_metric(sub.loc[b], digits) if b in sub.index else "" for b in batches]
        numbers[label] = [sub.loc[b, "final_mean"] if b in sub.index and sub.loc[b, "complete"] else math.nan
                          for b in batches]
    best = _best_mask(numbers, res.higher_is_better)
    title = f"Final {res.metric} ({'higher' if res.higher_is_better else 'lower'} is better), mean ± std over seeds"
    note = ("Under the steps-to-result protocol trials stop at the target, so a complete cell's final value is where "
            "it stopped (at or past the target): read the steps to the target, not this table, to compare rules."
            if res.protocol["kind"] == "steps_to_result" else "")
    return Table("accuracy", title, display, numbers, best, note)


def _best_mask(numbers: pd.DataFrame, higher: bool) -> pd.DataFrame:
    mask = pd.DataFrame(False, index=numbers.index, columns=numbers.columns)
    for b, row in numbers.iterrows():
        vals = row.dropna()
        if len(vals):
            top = vals.max() if higher else vals.min()
            mask.loc[b, vals[vals == top].index] = True
    return mask


def time_to_target_table(res: Results, agg: pd.DataFrame) -> Table | None:
    target = res.target
    if not target:
        return None
    batches, columns = _columns(res, agg)
    display = pd.DataFrame(index=pd.Index(batches, name="batch size"))
    numbers = pd.DataFrame(index=display.index)
    for label, sub in columns:
        cells, steps, secs = [], [], []
        for b in batches:
            if b not in sub.index:
                cells.append("")
                steps.append(math.nan)
                secs.append(math.nan)
                continue
            r = sub.loc[b]
            if not math.isfinite(r.steps_to_target):
                cells.append(f"not reached ({r.reached}/{r.seeds})")
                steps.append(math.nan)
                secs.append(math.nan)
                continue
            text = f"{r.steps_to_target:.0f} steps"
            if math.isfinite(r.speedup_steps):
                text += f" ({r.speedup_steps:.1f}x)"
            text += f", {r.seconds_to_target:.1f} s"
            if math.isfinite(r.speedup_time):
                text += f" ({r.speedup_time:.1f}x)"
            if r.reached < r.seeds:
                text += f" [{r.reached}/{r.seeds} reached]"
            cells.append(text)
            steps.append(r.steps_to_target)
            secs.append(r.seconds_to_target)
        display[label] = cells
        numbers[f"{label} steps"] = steps
        numbers[f"{label} seconds"] = secs
    step_cols = numbers[[c for c in numbers.columns if c.endswith(" steps")]]
    best = _best_mask(step_cols.rename(columns=lambda c: c[: -len(" steps")]), higher=False)
    title = (f"Time to {res.metric} {'>=' if res.higher_is_better else '<='} {target['value']}: optimizer steps "
             f"and training seconds (median over seeds), speedup over B={res.base_batch_size} of the same method")
    return Table("time_to_target", title, display, numbers, best)


def _marked(table: Table, bold) -> pd.DataFrame:
    out = table.display.copy()
    for col in out.columns:
        if col in table.best.columns:
            out[col] = [bold(v) if table.best.loc[b, col] and v else v for b, v in zip(out.index, out[col])]
    return out


def to_markdown(table: Table) -> str:
    note = " (best of each row in bold)" if table.best.to_numpy().any() else ""
    text = f"**{table.title}**{note}\n\n" + (f"{table.note}\n\n" if table.note else "")
    return text + _marked(table, lambda v: f"**{v}**").to_markdown(disable_numparse=True) + "\n"


def to_latex(table: Table) -> str:
    def esc(v: str) -> str:
        return v.replace("±", r"$\pm$").replace("%", r"\%").replace("_", r"\_")

    marked = _marked(table, lambda v: f"BOLD{{{v}}}").map(esc)
    marked.columns = [esc(c) for c in marked.columns]
    latex = marked.to_latex(escape=False, caption=esc(table.title), label=f"tab:{table.name}")
    return latex.replace("BOLD{", r"\textbf{")


def write_table(table: Table, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{table.name}.md", folder / f"{table.name}.csv", folder / f"{table.name}.tex"]
    paths[0].write_text(to_markdown(table))
    table.numbers.to_csv(paths[1])
    paths[2].write_text(to_latex(table))
    return paths


PROTOCOLS = {"fixed_epochs": "fixed epochs: the same epoch budget at every batch size, no retuning (You et al. 2019; "
                             "Goyal et al. 2017)",
             "steps_to_result": "steps to result: a step budget per batch size, trials stop at the target, the tuned "
                                "arm selects on steps (Shallue et al. 2018)"}


def protocol_table(res: Results, agg: pd.DataFrame) -> Table | None:
    """Per batch size: the budget the protocol gave, whether it could reach the target at all, the
    evaluation grid, and the resolution the steps to the target got (interval / fewest steps)."""
    pr = res.protocol
    budgets = pr.get("budgets") or []
    if not budgets:
        return None
    optimizers = sorted({r["optimizer"] for r in budgets})
    rows = []
    for r in budgets:
        cells = agg[(agg.optimizer == r["optimizer"]) & (agg.batch_size == r["batch_size"])]
        reached = cells[cells.steps_to_target.apply(math.isfinite)]
        fewest = float(reached.steps_to_target.min()) if len(reached) else math.nan
        label = r["batch_size"] if len(optimizers) == 1 else f"{r['optimizer']} {r['batch_size']}"
        verdict = {True: "yes", False: "NO: budget too small", None: "not checked"}[r.get("feasible")]
        if r.get("feasible") is False and not math.isnan(fewest):
            verdict = "yes: reached, though below the predicted need"
        rows.append((label, {
            "S(B) predicted": "" if r.get("steps_predicted") is None else f"{r['steps_predicted']:.0f}",
            "budget (steps)": f"{r['budget_steps']}", "budget (epochs)": f"{r['budget_epochs']:.3g}",
            "evaluated every (steps)": f"{r['eval_every_steps']}",
            "fewest steps to target": "not reached" if math.isnan(fewest) else f"{fewest:.0f}",
            "resolution": "" if math.isnan(fewest) else ("exact (every step)" if r["eval_every_steps"] == 1 else
                                                          f"{(r['eval_every_steps'] - 1) / fewest:.1%}"),
            "rules measurable": verdict}))
    display = pd.DataFrame([v for _, v in rows], index=pd.Index([k for k, _ in rows], name="batch size"))
    est = pr.get("estimates") or {}
    parts = []
    for o, e in est.items():
        src = (f"pilot at B0={e['pilot']['batch_size']}: {e['pilot']['steps_to_target']} steps to the target"
               if e["source"] == "pilot" else "given")
        parts.append(f"{o}: S_min = {e['s_min']:.1f}, B_crit = {e['b_crit']:.0f} ({src})")
    margin = pr.get("margin")
    kind, _, source = PROTOCOLS.get(pr["kind"], pr["kind"]).partition(": ")
    title = f"Protocol: {kind}"
    note = (f"{source[0].upper()}{source[1:]}. Each batch size's budget is {margin:g} x S(B), "
            f"S(B) = S_min (1 + B_crit/B) the steps the best rule needs at least ({'; '.join(parts) if parts else 'not checked: no pilot'}). "
            f"A batch size whose budget is below that cannot tell the rules apart: its verdicts are not measurable. "
            f"Steps to the target are read at evaluations every k steps, at most k - 1 steps late: resolution = "
            f"(k - 1) / fewest steps (docs/protocols.md).")
    after = pr.get("checked_after_run")
    if after:
        note += (f" This sweep ran before its budgets were checked; they were checked afterwards, by the same "
                 f"pilot, on {after['at'][:10]} ({after['by']}).")
    return Table("protocol", title, display, display.copy(),
                 pd.DataFrame(False, index=display.index, columns=display.columns), note)


def all_tables(res: Results, agg: pd.DataFrame) -> list[Table]:
    tables = [t for t in (protocol_table(res, agg),) if t is not None] + [accuracy_table(res, agg)]
    ttt = time_to_target_table(res, agg)
    if ttt is not None:
        tables.append(ttt)
    return tables
