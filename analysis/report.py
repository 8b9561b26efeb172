"""The report: ``results/<sweep>/report/`` with tables, plots, ``report.html`` and ``report.md``.

``report.html`` is one self-contained page (plots embedded as PNG data, no network), with the
tables, the paper claims when the spec has any, the sweep's metadata and versions, and the spec;
``report.md`` says the same with links to the PNG files beside it.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from jinja2 import Environment

from analysis import arms, beyond
from analysis.aggregate import Results, aggregate, is_tuned, load_results, timing_source
from analysis.answer import answer_note, answer_table
from analysis.outcome import CHANCE_FRACTION, chance_metric
from analysis.plots import Plot, all_plots, range_edge
from analysis.provenance import ran_with
from analysis.reproduce import judge_all, verdict_table
from analysis.tables import Table, all_tables, cell_status, to_csv, to_html, to_markdown, write_table
from analysis.tuning import bracket_frame, bracket_sentence, lr_scaling, lr_scaling_sentence
from harness.results.store import replaced_whole

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>batchscale report: {{ name }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; line-height: 1.4; }
 table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
 th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
 th { background: #f3f3f3; } td.best { font-weight: bold; background: #eef7ee; }
 td.bad { color: #a00; font-style: italic; } table.table td:first-child { font-weight: bold; background: #f3f3f3; } figure { margin: 1.2em 0; } img { max-width: 100%; }
 figcaption { font-size: 0.85em; color: #555; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
 .ran { background: #f3f6fa; padding: 0.4em 0.7em; border-left: 3px solid #0072B2; }
 .small { font-size: 0.85em; color: #444; } .holds { color: #070; font-weight: bold; } .fails { color: #a00; font-weight: bold; } .na { color: #777; }
</style></head><body>
<h1>batchscale report: {{ name }}</h1>
<p class="ran"><b>Ran with</b>: {{ ran_with }}</p>
<p>{{ description }}</p>
<p><b>Workload</b> {{ workload }} ({{ metric }}, {{ direction }} is better), {{ dataset_size }} training examples;
status <b>{{ status }}</b>; trials: {{ counts }}; base batch B0 = {{ base }}.</p>
<p class="small">{{ outcome_rule }} Timing: {{ timing }}.</p>
{% for s in sections %}<h2>{{ s.title }}</h2>{% if s.note %}<p>{{ s.note }}</p>{% endif %}{{ s.html }}{% endfor %}
<h2>Plots</h2>
{% for p in plots %}<figure id="plot-{{ p.stem }}"><img alt="{{ p.title }}" src="data:image/png;base64,{{ p.data }}">
<figcaption><b>{{ p.title }}.</b> {{ p.caption }}</figcaption></figure>{% endfor %}
{% for s in closing %}<h2>{{ s.title }}</h2>{{ s.html }}{% endfor %}
</body></html>
"""


@dataclass
class Section:
    """One section of the report, in both of its forms."""

    title: str
    html: str
    markdown: str
    note: str = ""

    def escaped(self) -> dict[str, str]:
        return {"title": html.escape(self.title), "note": html.escape(self.note), "html": self.html}


def _frame_html(df: pd.DataFrame) -> str:
    """One header row: a named index becomes the first column."""
    if df.index.name:
        df = df.reset_index()
        return df.to_html(escape=True, border=0, na_rep="—", index=False)
    return df.to_html(escape=True, border=0, na_rep="—")


def _verdict_html(df: pd.DataFrame) -> str:
    out = _frame_html(df)
    for word, cls in (("does not hold", "fails"), ("holds", "holds"), ("not measurable", "na")):
        out = out.replace(f"<td>{word}</td>", f'<td class="{cls}">{word}</td>')
    return out


def _meta_frame(res: Results) -> pd.DataFrame:
    m = res.meta
    env = m.get("environment", {})
    rows = {
        "name": m.get("name"), "status": m.get("status"), "started": m.get("started_at"),
        "finished": m.get("finished_at"), "sessions": len(m.get("sessions", [])),
        "ray address": ", ".join(sorted({s.get("address", "") for s in m.get("sessions", [])})),
        "host": env.get("host"), "cpu": f"{env.get('cpu')} x{env.get('cpu_count')}", "gpu": env.get("gpu") or "none",
        "python": env.get("python"), "torch": env.get("torch"), "ray": env.get("ray"), "optuna": env.get("optuna"),
        "batchscale": env.get("batchscale"), "git commit": env.get("git_commit") or "unknown",
    }
    return pd.DataFrame({"value": rows})


def _lattice_step(res: Results) -> float:
    return float((res.meta["spec_resolved"].get("tuning") or {}).get("lattice_step", 2**0.5))


def studies_frame(res: Results) -> pd.DataFrame:
    """The per-seed TPE studies (tuning.search tpe, and older stores); bracketing studies are
    analysis.tuning.bracket_frame's."""
    studies = {k: v for k, v in res.meta.get("studies", {}).items() if v.get("search") != "bracket"}
    if not studies:
        return pd.DataFrame()
    t = res.trials[is_tuned(res.trials.method)]
    rows = []
    for k, v in sorted(studies.items(), key=lambda kv: (kv[1]["optimizer"], kv[1]["batch_size"], kv[0])):
        mine = t[t.study == k]
        edge = range_edge(v.get("best_peak_lr"), *v["lr_range"])
        rows.append({"study": k, "batch size": v["batch_size"], "optimizer": v["optimizer"], "trials": v["trials"],
                     "diverged / failed": f"{int((mine.outcome == 'diverged').sum())} / "
                                          f"{int((mine.outcome == 'failed').sum())}",
                     "LR range": f"{v['lr_range'][0]:.3g} - {v['lr_range'][1]:.3g}",
                     "selects on": v.get("selects_on", "final_metric").replace("_", " "),
                     "best peak LR": f"{v['best_peak_lr']:.4g}" if v.get("best_peak_lr") is not None else "none",
                     "at range edge": f"YES ({edge}): widen the range" if edge else "no",
                     f"its {res.metric}": v["best_metric"], "its steps to target": v.get("best_steps_to_target")})
    return pd.DataFrame(rows).set_index("study")


def _relative(path: str | Path, folder: Path) -> str:
    """``path`` as the report folder's reader reaches it: relative to ``folder`` (the report is
    moved or committed with its sweep, never with the machine it ran on)."""
    return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()


def _tracking_line(res: Results) -> str:
    """Where else the trials were sent (the spec's tracking section), as a sentence, or ''."""
    t = res.meta["spec_resolved"].get("tracking") or {}
    report = res.root / "report"
    mlflow_db = f"sqlite:///mlflow.db, run in the sweep folder ({_relative(res.root, report)} from this report)"
    where = {"tensorboard": f"TensorBoard (tensorboard --logdir {_relative(res.root / 'tensorboard', report)}, "
                            f"relative to this report)",
             "mlflow": f"MLflow ({t.get('mlflow_tracking_uri') or mlflow_db}"
                       f", experiment {t.get('mlflow_experiment') or res.meta.get('name')})",
             "wandb": f"Weights & Biases (project {t.get('wandb_project') or res.meta.get('name')})"}
    on = [text for key, text in where.items() if t.get(key)]
    return f". Every trial was also sent to {'; '.join(on)}" if on else ""


def _outcome_rule(res: Results) -> str:
    chance = chance_metric(res.meta)
    where = (f"its final {res.metric} covered less than {CHANCE_FRACTION:.0%} of the way from chance "
             f"({chance:.4g}) to the sweep's best" if chance is not None else "")
    return ("Diverged: a NaN/inf loss or a loss blow-up. Failed: completed, but " + (where + ", or " if where else "")
            + "its training loss ended above its first step's loss (docs/reports.md).")


def _clean(o):
    """JSON without NaN/inf (null instead) and with plain Python numbers."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, (str, bytes)):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def summary(res: Results, agg: pd.DataFrame, tables: list[Table], critical: dict, verdicts, studies: pd.DataFrame,
            projection_info: dict) -> dict:
    """Every headline figure a script would want, and every table's cells as shown and as numbers."""
    cells = []
    for r in agg.to_dict("records"):
        row = pd.Series(r)
        cells.append({
            "optimizer": r["optimizer"], "method": r["method"], "batch_size": r["batch_size"], "scale": r["scale"],
            "status": cell_status(row),
            "seeds": r["seeds"], "counts": {k: r[c] for k, c in (("complete", "complete"), ("failed", "failed"),
                                                                 ("diverged", "diverged"), ("error", "errors"),
                                                                 ("incomplete", "incomplete"))},
            "metric": {"name": res.metric, "final_mean": r["final_mean"], "final_std": r["final_std"],
                       "final_ci95": r["final_ci95"], "best_mean": r["best_mean"]},
            "target": {"reached_by": r["reached"], "steps": r["steps_to_target"], "examples": r["examples_to_target"],
                       "seconds": r["seconds_to_target"], "speedup_steps": r["speedup_steps"],
                       "speedup_time": r["speedup_time"]} if res.target else None,
            "recipe": {"peak_lr": r["peak_lr"], "warmup_epochs": r["warmup_epochs"], "warmup_steps": r["warmup_steps"],
                       "total_steps": r["total_steps"]},
            "protocol": {"feasible": r["feasible"], "budget_steps": r["budget_steps"],
                         "eval_every_steps": r["eval_every_steps"], "resolution": r["resolution"]},
            "throughput": r["throughput"]})
    fit = critical.get("fit") if critical else None
    env = critical.get("envelope") if critical else None
    out = {
        "name": res.meta.get("name"), "status": res.meta.get("status"),
        "workload": {k: res.meta["workload"].get(k) for k in ("name", "metric", "higher_is_better", "dataset_size")}
        | {"chance_metric": chance_metric(res.meta)},
        "base_batch_size": res.base_batch_size, "target": res.target,
        "protocol": {k: v for k, v in res.protocol.items()},
        "timing": timing_source(res), "outcome_rule": _outcome_rule(res),
        "trial_outcomes": res.trials.outcome.value_counts().to_dict(),
        "failed_trials": [{"trial_id": t.trial_id, "method": t.method, "optimizer": t.optimizer,
                           "batch_size": t.batch_size, "seed": t.seed, "because": t.failed_because}
                          for t in res.trials[res.trials.outcome == "failed"].itertuples()],
        "cells": cells,
        "critical_batch": None if not critical else {
            "fit": None if fit is None else {"s_min": fit.s_min, "e_min": fit.e_min, "b_crit": fit.b_crit,
                                             "points": fit.points,
                                             "fitted_batch_sizes": [int(b) for b in env.batch_size]},
            "envelope": [] if env is None else env.to_dict("records"),
            "b_simple_by_batch": critical["noise"].to_dict("records") if len(critical.get("noise", [])) else []},
        "studies": {} if studies.empty else studies.reset_index().to_dict("records"),
        "projection": projection_info,
        "claims": [v.__dict__ for v in verdicts],
        "tables": {t.name: {"title": t.title, "note": t.note, "columns": [t.display.index.name or "", *t.display.columns],
                            "rows": [[str(i), *map(str, row)] for i, row in zip(t.display.index, t.display.to_numpy())],
                            "numbers": to_csv(t).reset_index().to_dict("records")} for t in tables},
    }
    return _clean(out)


def build_report(root: str | Path) -> dict:
    """Write the report folder; returns paths and the judged claims. Written beside the old one and
    swapped in whole (harness.results.store.replaced_whole): a report that fails leaves the old one as it was."""
    res = load_results(root)
    final = res.root / "report"
    with replaced_whole(final) as staging:
        out = _write_report(res, staging)
    for plot in out["plots"]:
        plot.files = [final / f.relative_to(staging) for f in plot.files]
    return {**out, "folder": final, "html": final / "report.html", "markdown": final / "report.md"}


def _write_report(res: Results, out: Path) -> dict:
    agg = aggregate(res)
    if agg.empty:
        raise ValueError(f"{res.root}: no trials recorded yet")
    (out / "tables").mkdir(parents=True, exist_ok=True)
    agg.to_csv(out / "tables" / "aggregate.csv", index=False)
    draw_critical, critical = beyond.critical_extra(res, agg)
    plots: list[Plot] = all_plots(res, agg, out / "plots", extras={"steps_to_target": draw_critical})
    proj_table, proj_plot, proj_info = beyond.projection(res, agg, out / "plots")
    plots += [p for p in (beyond.noise_curves(res, agg, out / "plots"), beyond.adascale_gain(res, agg, out / "plots"),
                          beyond.autowu_plot(res, agg, out / "plots"), proj_plot) if p is not None]
    plots += arms.arm_plots(res, out / "plots")
    tables = all_tables(res, agg) + [t for t in (beyond.critical_table(res, critical), beyond.autowu_table(res),
                                                 proj_table) if t is not None] + arms.arm_tables(res)
    for t in tables:
        write_table(t, out / "tables")
    verdicts = judge_all(res, agg)
    claims = verdict_table(verdicts) if verdicts else pd.DataFrame()
    if not claims.empty:
        claims.to_csv(out / "tables" / "claims.csv")
    studies = studies_frame(res)
    spec_text = yaml.safe_dump(res.meta.get("spec_given", {}).get("effective") or res.meta["spec_resolved"],
                               sort_keys=False)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(res.trials.outcome.value_counts().items()))
    description = res.meta["spec_resolved"].get("description", "")
    common = dict(name=res.meta.get("name"), ran_with=ran_with(res), description=description,
                  workload=res.meta["workload"]["name"], metric=res.metric,
                  direction="higher" if res.higher_is_better else "lower",
                  dataset_size=res.meta["workload"]["dataset_size"], status=res.meta.get("status"),
                  counts=counts, base=res.base_batch_size, outcome_rule=_outcome_rule(res),
                  timing=timing_source(res) + _tracking_line(res))
    # Every section once, as HTML and as Markdown: the two pages say the same in the same order: the
    # answer first (analysis.answer), the comparisons that judge it, then the evidence.
    fit = critical["fit"]  # beyond.critical_extra's critical_summary, fitted once above
    brackets = bracket_frame(res)
    scaling = lr_scaling_sentence(lr_scaling(res, agg, fit.b_crit if fit else None)) if not brackets.empty else ""
    answer = answer_table(res, agg)
    if answer is not None:
        answer.note = answer_note(res, verdicts, scaling, fit.b_crit if fit else None)
        write_table(answer, out / "tables")
    sections = [Section(t.title, to_html(t), to_markdown(t, title=False), t.note)
                for t in ([answer] if answer is not None else []) + tables]
    if not claims.empty:
        sections.insert(1 if answer is not None else len(sections),
                        Section("Claims", _verdict_html(claims), claims.to_markdown()))
    if not studies.empty:
        db = _relative(res.root / "optuna.db", out)
        note = (f"Every trial of every study is in {db} (relative to this report: the sweep's folder) for "
                "optuna-dashboard: in the sweep's folder, optuna-dashboard sqlite:///optuna.db "
                "(pip install 'batchscale[dashboard]').")
        sections.append(Section("Tuned studies", _frame_html(studies), f"{note}\n\n{studies.to_markdown()}", note))
    if not brackets.empty:
        note = (f"{bracket_sentence(res)} LRs on a lattice of factor {_lattice_step(res):.3g}; bracketed: both "
                "lattice neighbours of the tuned LR were tried and were not better. In parentheses: LRs whose "
                "median over seeds missed the target or diverged." + (f" Sqrt or Linear? {scaling}." if scaling else ""))
        sections.append(Section("Tuned LR search", _frame_html(brackets), f"{note}\n\n{brackets.to_markdown()}", note))
    if proj_info:
        frame = pd.DataFrame({"value": proj_info})
        sections.append(Section("Cost model of the projection", _frame_html(frame), frame.to_markdown()))
    closing = [Section("Sweep", _frame_html(_meta_frame(res)), _meta_frame(res).to_markdown()),
               Section("Spec", f"<pre>{html.escape(spec_text)}</pre>", f"```yaml\n{spec_text.rstrip()}\n```")]
    page = Environment(autoescape=False).from_string(_HTML).render(
        **{k: html.escape(str(v)) for k, v in common.items()},
        sections=[s.escaped() for s in sections], closing=closing,
        plots=[{"title": html.escape(p.title), "caption": html.escape(p.caption), "stem": p.stem,
                "data": base64.b64encode(p.files[0].read_bytes()).decode()} for p in plots])
    (out / "report.html").write_text(page)

    md = [f"# batchscale report: {common['name']}", "", f"**Ran with**: {common['ran_with']}", "",
          common["description"], "",
          f"Workload **{common['workload']}** ({res.metric}, {common['direction']} is better), "
          f"{common['dataset_size']} training examples; status **{common['status']}**; {counts}; "
          f"base batch B0 = {res.base_batch_size}.", "", f"{common['outcome_rule']} Timing: {common['timing']}.", ""]
    for sec in sections:
        md += [f"## {sec.title}", "", sec.markdown, ""]
    md += ["## Plots", ""]
    for p in plots:
        md += [f"![{p.title}](plots/{p.files[0].name})", "", f"*{p.title}.* {p.caption}", ""]
    for sec in closing:
        md += [f"## {sec.title}", "", sec.markdown, ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "summary.json").write_text(json.dumps(summary(res, agg, tables, critical, verdicts, studies, proj_info),
                                                 indent=1, default=str))
    return {"folder": out, "html": out / "report.html", "markdown": out / "report.md", "tables": tables,
            "plots": plots, "verdicts": verdicts, "aggregate": agg}
