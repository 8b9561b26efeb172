"""Tables in the LEGW paper's shape: rows = batch sizes, columns = methods (x optimizers).

Each table is written as Markdown, LaTeX and HTML through pandas' Styler (one header row: the
batch size is the first column; the best clean cell of each row bold, never one where a seed
diverged, failed, errored or is unfinished; diverged, failed and never-reached cells italic and
saying so in words), and as CSV: the numbers, and beside each series a status column (complete,
diverged, failed, not reached, reached by k/n, mixed: ...), so that a script never has to guess
what an empty cell means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.aggregate import Results, eval_grid, series_order, timing_source


@dataclass
class Table:
    name: str
    title: str
    display: pd.DataFrame  # strings
    numbers: pd.DataFrame  # the values behind them (CSV)
    best: pd.DataFrame  # bool mask of the best cell of each row
    note: str = ""  # a paragraph under the title: how to read the table
    status: pd.DataFrame | None = None  # per cell: complete, diverged, failed, not reached, ... (CSV, styling)


BAD = ("diverged", "failed", "not reached", "error")


def _columns(res: Results, agg: pd.DataFrame):
    """(batch sizes, [(column label, that column's cells indexed by batch size)]) in the spec's order."""
    batches = sorted(agg.batch_size.unique())
    return batches, [(label, agg[(agg.optimizer == o) & (agg.method == m)].set_index("batch_size"))
                     for label, o, m in series_order(res) if ((agg.optimizer == o) & (agg.method == m)).any()]


def clean_cell(row) -> bool:
    """Every seed of the cell completed cleanly: none diverged, failed, errored or is unfinished. Only
    such a cell can be bolded as the best of its row."""
    seeds = int(row.get("seeds", 0) or 0)
    return seeds > 0 and int(row.get("complete", 0) or 0) == seeds


def _clean_mask(res: Results, agg: pd.DataFrame, index) -> pd.DataFrame:
    """Per (batch size, series label): whether the cell is clean (``clean_cell``)."""
    _, columns = _columns(res, agg)
    return pd.DataFrame({label: [b in sub.index and clean_cell(sub.loc[b]) for b in index] for label, sub in columns},
                        index=index)


def _seed_counts(row) -> str:
    """', 1 diverged, 1 failed' style note of the seeds that did not end cleanly."""
    parts = [f"{int(row[k])} {k}" for k in ("diverged", "failed", "errors") if row.get(k, 0)]
    return ", ".join(parts).replace("errors", "error")


def cell_status(row) -> str:
    """One word (or a mix) for a cell of seeds: complete, diverged, failed, error, or e.g.
    'mixed: 2 complete, 1 diverged'."""
    counts = {k: int(row.get(c, 0) or 0) for k, c in (("complete", "complete"), ("diverged", "diverged"),
                                                      ("failed", "failed"), ("error", "errors"),
                                                      ("incomplete", "incomplete"))}
    present = {k: v for k, v in counts.items() if v}
    if len(present) == 1:
        return next(iter(present))
    return "mixed: " + ", ".join(f"{v} {k}" for k, v in present.items()) if present else "missing"


def _fmt_metric(row, digits: int | str) -> str:
    """``digits``: decimals (accuracy: 4), or a format such as ``.3g`` for metrics of any scale."""
    if row.seeds == row.errors:
        return "error"
    if row.complete == 0 and row.get("failed", 0) == 0 and row.diverged:
        return "diverged"
    if math.isnan(row.final_mean):
        return "n/a"
    fmt = digits if isinstance(digits, str) else f".{digits}f"
    text = f"{row.final_mean:{fmt}}"
    if not math.isnan(row.final_std):
        text += f" ± {row.final_std:{fmt}}"
    if row.complete == 0 and row.get("failed", 0):
        return f"failed: {text}" + (f" ({_seed_counts(row)})" if row.diverged else "")
    bad = [f"{int(row[k])}/{int(row.seeds)} {k.replace('errors', 'error')}" for k in ("diverged", "failed", "errors")
           if row.get(k, 0)]
    if bad:
        text += f" ({', '.join(bad)})"
    return text


def _unmeasurable_note(agg: pd.DataFrame) -> str:
    """A sentence naming the batch sizes whose budget cannot reach the target for any arm."""
    feasible = agg.groupby("batch_size").feasible.apply(lambda v: any(x is not False for x in v))
    bad = [int(b) for b, ok in feasible.items() if not ok]
    return (f" Not measurable: B = {', '.join(map(str, bad))}, where the budget cannot reach the target for any rule "
            f"(protocol table): their numbers cannot tell the rules apart." if bad else "")


def accuracy_table(res: Results, agg: pd.DataFrame) -> Table:
    digits = 4 if res.higher_is_better else ".3g"  # accuracy in points; losses, perplexities at any scale
    batches, columns = _columns(res, agg)
    display = pd.DataFrame(index=pd.Index(batches, name="batch size"))
    numbers = pd.DataFrame(index=display.index)
    status = pd.DataFrame(index=display.index)
    for label, sub in columns:
        display[label] = [_fmt_metric(sub.loc[b], digits) if b in sub.index else "" for b in batches]
        status[label] = [cell_status(sub.loc[b]) if b in sub.index else "missing" for b in batches]
        numbers[label] = [sub.loc[b, "final_mean"] if b in sub.index and sub.loc[b, "complete"] else math.nan
                          for b in batches]
        numbers[f"{label} std"] = [sub.loc[b, "final_std"] if b in sub.index and sub.loc[b, "complete"] else math.nan
                                   for b in batches]
    best = _best_mask(numbers[[c for c in numbers.columns if not c.endswith(" std")]], res.higher_is_better,
                      _clean_mask(res, agg, display.index))
    title = f"Final {res.metric} ({'higher' if res.higher_is_better else 'lower'} is better), mean ± std over seeds"
    note = ("A failed seed (it ended at chance or above its starting loss, docs/reports.md) or a diverged one is "
            "counted in brackets; a cell is a clean result only when every seed completed cleanly, and only a clean "
            "cell is bolded as its row's best. ")
    if res.protocol["kind"] == "steps_to_result":
        note += ("Under the steps-to-result protocol trials stop at the target, so a complete cell's final value is "
                 "where it stopped (at or past the target): read the steps to the target, not this table, to compare "
                 "rules.")
    return Table("accuracy", title, display, numbers, best, (note.strip() + _unmeasurable_note(agg)).strip(), status)


def _best_mask(numbers: pd.DataFrame, higher: bool, clean: pd.DataFrame | None = None) -> pd.DataFrame:
    """The best value of each row; with ``clean``, only among the clean cells (``clean_cell``): a cell
    where a seed diverged or failed is never a row's best."""
    mask = pd.DataFrame(False, index=numbers.index, columns=numbers.columns)
    for b, row in numbers.iterrows():
        vals = row.dropna()
        if clean is not None:
            vals = vals[[bool(clean.loc[b, c]) if c in clean.columns else False for c in vals.index]]
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
    status = pd.DataFrame(index=display.index)
    for label, sub in columns:
        cells, steps, secs, states = [], [], [], []
        for b in batches:
            if b not in sub.index:
                cells.append("")
                steps.append(math.nan)
                secs.append(math.nan)
                states.append("missing")
                continue
            r = sub.loc[b]
            if not math.isfinite(r.steps_to_target):
                bad = _seed_counts(r)
                cells.append(f"not reached ({r.reached}/{r.seeds}" + (f"; {bad}" if bad else "") + ")")
                steps.append(math.nan)
                secs.append(math.nan)
                states.append("not reached")
                continue
            text = f"{r.steps_to_target:.0f} steps"
            if math.isfinite(r.speedup_steps):
                text += f" ({r.speedup_steps:.1f}x)"
            text += f", {_fmt_seconds(r.seconds_to_target)} s"
            if math.isfinite(r.speedup_time):
                text += f" ({r.speedup_time:.1f}x)"
            if r.reached < r.seeds:
                text += f" [{r.reached}/{r.seeds} reached]"
            cells.append(text)
            steps.append(r.steps_to_target)
            secs.append(r.seconds_to_target)
            states.append("reached" if r.reached == r.seeds else f"reached by {r.reached}/{r.seeds}")
        display[label] = cells
        status[label] = states
        numbers[f"{label} steps"] = steps
        numbers[f"{label} seconds"] = secs
    step_cols = numbers[[c for c in numbers.columns if c.endswith(" steps")]]
    best = _best_mask(step_cols.rename(columns=lambda c: c[: -len(" steps")]), higher=False,
                      clean=_clean_mask(res, agg, display.index))
    title = (f"Time to {res.metric} {'>=' if res.higher_is_better else '<='} {target['value']}: optimizer steps "
             f"and training seconds (median over seeds), speedup over B={res.base_batch_size} of the same method")
    every = [r.get("eval_every_steps") for r in res.protocol.get("budgets") or []]
    grid = (f"Steps are read at evaluations every {min(every)}-{max(every)} steps (the protocol table gives each batch "
            f"size's interval and resolution); " if every else
            f"Steps are read at the sweep's evaluations ({eval_grid(res)}), so they are late by up to one interval; ")
    note = (grid + "a miss counts as infinitely late in the median, so a cell most seeds missed reads 'not reached'. "
            "Bold: the fewest steps of the row among the cells where no seed diverged or failed. "
            f"Seconds: {timing_source(res)}." + _unmeasurable_note(agg))
    return Table("time_to_target", title, display, numbers, best, note, status)


def _fmt_seconds(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}" if v >= 1 else f"{v:.2g}"


def _frame(table: Table) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(display with the index as its first column, best mask, bad mask) aligned to it."""
    shown = table.display.reset_index()
    first = shown.columns[0]
    best = pd.DataFrame(False, index=shown.index, columns=shown.columns)
    bad = pd.DataFrame(False, index=shown.index, columns=shown.columns)
    for col in table.display.columns:
        if col in table.best.columns:
            best[col] = table.best[col].to_numpy(dtype=bool) & (table.display[col] != "").to_numpy()
        bad[col] = [any(str(v).startswith(w) for w in BAD) for v in table.display[col]]
        if table.status is not None and col in table.status.columns:
            bad[col] |= table.status[col].isin(["diverged", "failed", "not reached", "error"]).to_numpy()
    best[first] = False
    return shown, best, bad


def _styler(table: Table, escape: str):
    shown, best, bad = _frame(table)
    css = pd.DataFrame("", index=shown.index, columns=shown.columns)
    css = css.mask(best, "font-weight: bold;").mask(bad & ~best, "font-style: italic;")
    classes = pd.DataFrame("", index=shown.index, columns=shown.columns).mask(best, "best").mask(bad & ~best, "bad")
    sty = (shown.style.hide(axis="index").format(escape=escape, na_rep="")
           .format_index(escape=escape, axis=1).apply(lambda _: css, axis=None).set_td_classes(classes))
    return sty


def to_markdown(table: Table, title: bool = True) -> str:
    """The table in Markdown, best cells in bold; ``title=False`` leaves the title to the page."""
    bold = table.best.to_numpy().any()
    head = f"**{table.title}**{' (best of each row in bold)' if bold else ''}\n\n" if title else \
        ("Best of each row in bold.\n\n" if bold else "")
    text = head + (f"{table.note}\n\n" if table.note else "")
    shown, best, _ = _frame(table)
    marked = shown.astype(str).mask(best, shown.astype(str).map(lambda v: f"**{v}**"))
    return text + marked.to_markdown(index=False, disable_numparse=True) + "\n"


def to_latex(table: Table) -> str:
    """One header row (the index is a column), best bold, diverged/failed/not reached italic; booktabs rules."""
    sty = _styler(table, "latex")
    ncols = len(table.display.columns) + 1
    latex = sty.to_latex(hrules=True, convert_css=True, column_format="r" * ncols,
                         caption=_latex_escape(table.title), label=f"tab:{table.name}", position="htbp")
    return latex.replace("±", r"$\pm$")


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                 ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(a, b)
    return text.replace("±", r"$\pm$").replace(">=", r"$\geq$").replace("<=", r"$\leq$")


def to_html(table: Table) -> str:
    """One header row, classes ``best`` and ``bad`` on the cells (the report's CSS styles them)."""
    return (_styler(table, "html").set_uuid(table.name).set_table_attributes(f'class="table"')
            .to_html(doctype_html=False))


def to_csv(table: Table) -> pd.DataFrame:
    """The numbers, and beside each series its cells' status in words."""
    out = table.numbers.copy()
    if table.status is not None:
        for col in table.status.columns:
            out[f"{col} status"] = table.status[col]
    return out


def write_table(table: Table, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{table.name}.md", folder / f"{table.name}.csv", folder / f"{table.name}.tex"]
    paths[0].write_text(to_markdown(table))
    to_csv(table).to_csv(paths[1])
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
            "evaluated every (steps)": f"{r['eval_every_steps']}" + (
                f", then {r['eval_after_target_steps']} past the target"
                if r.get("eval_after_target_steps", 0) > r["eval_every_steps"] else ""),
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
