"""The report: ``results/<sweep>/report/`` with tables, plots, ``report.html`` and ``report.md``.

``report.html`` is one self-contained page (plots embedded as PNG data, no network), with the
tables, the paper claims when the spec has any, the sweep's metadata and versions, and the spec;
``report.md`` says the same with links to the PNG files beside it.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd
import yaml
from jinja2 import Environment

from analysis import beyond
from analysis.aggregate import Results, aggregate, load_results
from analysis.plots import Plot, all_plots
from analysis.reproduce import judge_all, verdict_table
from analysis.tables import Table, all_tables, to_markdown, write_table

_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>batchscale report: {{ name }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; line-height: 1.4; }
 table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.85em; }
 th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
 th { background: #f3f3f3; } td.best { font-weight: bold; background: #eef7ee; }
 td.bad { color: #a00; } figure { margin: 1.2em 0; } img { max-width: 100%; }
 figcaption { font-size: 0.85em; color: #555; } pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
 .holds { color: #070; font-weight: bold; } .fails { color: #a00; font-weight: bold; } .na { color: #777; }
</style></head><body>
<h1>batchscale report: {{ name }}</h1>
<p>{{ description }}</p>
<p><b>Workload</b> {{ workload }} ({{ metric }}, {{ direction }} is better), {{ dataset_size }} training examples;
status <b>{{ status }}</b>; {{ counts }}; base batch B0 = {{ base }}.</p>
{% for t in tables %}<h2>{{ t.title }}</h2>{% if t.note %}<p>{{ t.note }}</p>{% endif %}{{ t.html }}{% endfor %}
{% if claims %}<h2>Paper claims</h2>{{ claims }}{% endif %}
{% if studies %}<h2>Tuned studies</h2>{{ studies }}{% endif %}
{% if projection %}<h2>Cost model of the projection</h2>{{ projection }}{% endif %}
<h2>Plots</h2>
{% for p in plots %}<figure><img alt="{{ p.title }}" src="data:image/png;base64,{{ p.data }}">
<figcaption><b>{{ p.title }}.</b> {{ p.caption }}</figcaption></figure>{% endfor %}
<h2>Sweep</h2>
{{ meta }}
<h2>Spec</h2><pre>{{ spec }}</pre>
</body></html>
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [table.display.index.name or "", *table.display.columns])
    rows = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for b, row in table.display.iterrows():
        cells = []
        for col, value in row.items():
            cls = "best" if col in table.best.columns and table.best.loc[b, col] and value else (
                "bad" if "diverged" in str(value) or "not reached" in str(value) or value == "error" else "")
            cells.append(f'<td class="{cls}">{html.escape(str(value))}</td>')
        rows.append(f"<tr><th>{b}</th>{''.join(cells)}</tr>")
    return "".join(rows) + "</tbody></table>"


def _frame_html(df: pd.DataFrame) -> str:
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


def studies_frame(res: Results) -> pd.DataFrame:
    studies = res.meta.get("studies", {})
    if not studies:
        return pd.DataFrame()
    return pd.DataFrame([{"study": k, "batch size": v["batch_size"], "optimizer": v["optimizer"],
                          "trials": v["trials"], "LR range": f"{v['lr_range'][0]:.3g} - {v['lr_range'][1]:.3g}",
                          "selects on": v.get("selects_on", "final_metric").replace("_", " "),
                          "best peak LR": v["best_peak_lr"], f"its {res.metric}": v["best_metric"],
                          "its steps to target": v.get("best_steps_to_target")}
                         for k, v in sorted(studies.items(), key=lambda kv: (kv[1]["optimizer"], kv[1]["batch_size"]))
                         ]).set_index("study")


def build_report(root: str | Path) -> dict:
    """Write the report folder; returns paths and the judged claims."""
    res = load_results(root)
    out = res.root / "report"
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
    tables = all_tables(res, agg) + [t for t in (beyond.critical_table(res, critical), beyond.autowu_table(res),
                                                 proj_table) if t is not None]
    for t in tables:
        write_table(t, out / "tables")
    verdicts = judge_all(res, agg)
    claims = verdict_table(verdicts) if verdicts else pd.DataFrame()
    if not claims.empty:
        claims.to_csv(out / "tables" / "claims.csv")
    studies = studies_frame(res)
    spec_text = yaml.safe_dump(res.meta.get("spec_given", {}).get("effective") or res.meta["spec_resolved"],
                               sort_keys=False)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(res.trials.status.value_counts().items()))
    description = res.meta["spec_resolved"].get("description", "")
    overrides = [o for o in (res.meta.get("spec_given") or {}).get("overrides") or [] if not o.startswith("data_dir=")]
    if overrides:  # the description is the spec file's; say what this run changed
        description += f" This run overrode the spec with: {', '.join(overrides)}."
    common = dict(name=res.meta.get("name"), description=description,
                  workload=res.meta["workload"]["name"], metric=res.metric,
                  direction="higher" if res.higher_is_better else "lower",
                  dataset_size=res.meta["workload"]["dataset_size"], status=res.meta.get("status"),
                  counts=counts, base=res.base_batch_size)
    page = Environment(autoescape=False).from_string(_HTML).render(
        **{k: html.escape(str(v)) for k, v in common.items()},
        tables=[{"title": html.escape(t.title), "note": html.escape(t.note), "html": _html_table(t)} for t in tables],
        claims=_verdict_html(claims) if not claims.empty else "",
        studies=_frame_html(studies) if not studies.empty else "",
        projection=_frame_html(pd.DataFrame({"value": proj_info})) if proj_info else "",
        plots=[{"title": html.escape(p.title), "caption": html.escape(p.caption),
                "data": base64.b64encode(p.files[0].read_bytes()).decode()} for p in plots],
        meta=_frame_html(_meta_frame(res)), spec=html.escape(spec_text))
    (out / "report.html").write_text(page)

    md = [f"# batchscale report: {common['name']}", "", common["description"], "",
          f"Workload **{common['workload']}** ({res.metric}, {common['direction']} is better), "
          f"{common['dataset_size']} training examples; status **{common['status']}**; {counts}; "
          f"base batch B0 = {res.base_batch_size}.", ""]
    for t in tables:
        md += [to_markdown(t), ""]
    if not claims.empty:
        md += ["## Paper claims", "", claims.to_markdown(), ""]
    if not studies.empty:
        md += ["## Tuned studies", "", studies.to_markdown(), ""]
    if proj_info:
        md += ["## Cost model of the projection", "", pd.DataFrame({"value": proj_info}).to_markdown(), ""]
    md += ["## Plots", ""]
    for p in plots:
        md += [f"![{p.title}](plots/{p.files[0].name})", "", f"*{p.title}.* {p.caption}", ""]
    md += ["## Sweep", "", _meta_frame(res).to_markdown(), "", "## Spec", "", "```yaml", spec_text.rstrip(), "```", ""]
    (out / "report.md").write_text("\n".join(md))
    (out / "summary.json").write_text(json.dumps({"claims": [v.__dict__ for v in verdicts]}, indent=2))
    return {"folder": out, "html": out / "report.html", "markdown": out / "report.md", "tables": tables,
            "plots": plots, "verdicts": verdicts, "aggregate": agg}
