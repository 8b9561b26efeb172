"""The report as its reader sees it: outcomes (failed beside diverged), one colour per method in
every plot, fits only over what they were fitted on, every tuned trial shown, tables with one header
row and an explicit status per cell, summary.json, model-only timing, the cost model's sources, and
the HTML page rendered in headless Chromium."""

from __future__ import annotations

import json
import math
import re
import shutil

import matplotlib
import pandas as pd
import pytest

from analysis.aggregate import aggregate, load_results, timing_source
from analysis.outcome import CHANCE_FRACTION
from analysis.report import build_report, studies_frame
from analysis.style import METHOD_STYLES, OKABE_ITO, series_styles
from tests.handmade import write_handmade_store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def store(tmp_path):
    return write_handmade_store(tmp_path / "handmade")


@pytest.fixture(scope="module")
def failing(tmp_path_factory):
    """The hand-made store plus a method (``none``) whose every seed ends at chance at B=2048."""
    return write_handmade_store(tmp_path_factory.mktemp("failing") / "failing", failed_cell=True)


@pytest.fixture(scope="module")
def built(failing):
    """Its report, built once for the tests that only read it."""
    return build_report(failing.root)


def test_a_run_at_chance_or_with_its_loss_above_its_start_is_failed_and_says_why(failing):
    res = load_results(failing.root)
    t = res.trials.set_index("trial_id")
    at_chance = t.loc["momentum-tuned-b2048-s0-t3"]
    assert at_chance.outcome == "failed" and at_chance.failed_because.startswith("ends at chance")
    rising = t.loc["momentum-tuned-b2048-s0-t4"]
    assert rising.outcome == "failed" and rising.failed_because == "loss ends above its start: 4 > 1"
    assert (t.loc[[f"momentum-none-b2048-s{s}" for s in range(3)], "outcome"] == "failed").all()
    # 0.5 is halfway from chance to the best (0.9): a poor run, not a failed one
    assert t.loc["momentum-tuned-b2048-s0-t0", "outcome"] == "complete"
    # the threshold: 10% of the way from chance (0.1) to the sweep's best final accuracy (0.9)
    assert CHANCE_FRACTION == 0.1 and (t.final_metric.max() - 0.1) * CHANCE_FRACTION + 0.1 == pytest.approx(0.18)
    agg = aggregate(res).set_index(["method", "batch_size"])
    cell = agg.loc[("none", 2048)]
    assert (cell.complete, cell.failed, cell.diverged, cell.failure_rate) == (0, 3, 0, 1.0)
    assert agg.loc[("none", 128), "complete"] == 3


def test_failed_cells_read_failed_in_the_tables_csv_and_claims(built, failing):
    out = built
    acc = pd.read_csv(out["folder"] / "tables" / "accuracy.csv", index_col=0)
    assert acc.loc[2048, "none status"] == "failed" and acc.loc[2048, "goyal status"] == "diverged"
    assert acc.loc[512, "goyal status"] == "mixed: 2 complete, 1 diverged"
    assert acc.loc[128, "legw status"] == "complete" and math.isnan(acc.loc[2048, "none"])  # no clean number
    ttt = pd.read_csv(out["folder"] / "tables" / "time_to_target.csv", index_col=0)
    assert ttt.loc[2048, "legw status"] == "not reached" and ttt.loc[128, "legw status"] == "reached"
    assert ttt.loc[512, "legw status"] == "reached by 2/3"
    shown = next(t for t in out["tables"] if t.name == "accuracy").display
    assert shown.loc[2048, "none"].startswith("failed: 0.1020")
    page = out["html"].read_text()
    assert "failed 5" in page  # 3 none seeds + 2 tuned trials, in the trial counts under the title


def test_divergence_map_counts_every_trial_of_every_study(failing):
    from analysis.plots import divergence_counts

    res = load_results(failing.root)
    counts = divergence_counts(res, [128, 512, 2048]).set_index(["series", "batch_size"])
    assert counts.loc[("tuned", 128)].to_dict() == {"trials": 3, "diverged": 1, "failed": 0}
    assert counts.loc[("tuned", 2048)].to_dict() == {"trials": 5, "diverged": 0, "failed": 2}
    assert counts.loc[("goyal", 512)].to_dict() == {"trials": 3, "diverged": 1, "failed": 0}
    assert counts.loc[("none", 2048)].to_dict() == {"trials": 3, "diverged": 0, "failed": 3}


def test_each_method_keeps_one_colour_in_every_plot_and_no_titles_overlap(built, failing):
    out = built
    res = load_results(failing.root)
    styles = series_styles(res)
    # each method's own colour (analysis.style.METHOD_STYLES), whatever the spec's order: goyal, legw, tuned, none
    assert [s.color for s in styles.values()] == [METHOD_STYLES[m][0] for m in ("goyal", "legw", "tuned", "none")]
    assert set(METHOD_STYLES[m][0] for m in METHOD_STYLES) <= set(OKABE_ITO)
    seen: dict[str, set[str]] = {}
    for p in out["plots"]:
        assert p.overlaps == [], f"{p.stem}: {p.overlaps}"
        assert p.legend or p.stem == "divergence_map", f"{p.stem} has no legend"  # the map has a colour bar
        for label, color in p.legend.items():
            seen.setdefault(label, set()).add(color)
    for label, style in styles.items():
        assert seen.get(label) == {matplotlib.colors.to_hex(style.color)}, (label, seen.get(label))
    legends = {p.stem: p.legend for p in out["plots"]}
    assert "every seed diverged (at the axis edge)" in legends["metric_vs_batch"]
    assert "some seeds diverged or failed" in legends["metric_vs_batch"]
    assert "not reached within the budget (top edge)" in legends["steps_to_target"]
    assert {"diverged here", "failed run ends here"} <= set(legends["training_curves"])


def test_the_critical_batch_fit_is_solid_only_over_the_batch_sizes_it_was_fitted_on(store):
    import matplotlib.pyplot as plt

    from analysis.beyond import critical_extra

    def draw(agg):
        draw_fit, summary = critical_extra(res, agg)
        fig, ax = plt.subplots()
        ax.set_xscale("log", base=2)
        handles = draw_fit(ax)
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        plt.close(fig)
        return summary, handles, lines

    res = load_results(store.root)
    agg = aggregate(res)
    summary, handles, lines = draw(agg)
    fit_line = next(ln for label, ln in lines.items() if label.startswith("fit S_min"))
    assert fit_line.get_linestyle() == "-"
    xs = fit_line.get_xdata()
    assert (min(xs), max(xs)) == pytest.approx((128, 2048))
    assert not any("extrapolated" in h.get_label() for h in handles)
    # a larger batch size that nothing reached: the fit is dotted out to it, and labelled so
    missed = agg[agg.batch_size == 2048].assign(batch_size=8192, steps_to_target=math.inf, reached=0)
    summary, handles, lines = draw(pd.concat([agg, missed], ignore_index=True))
    assert any(h.get_label() == "fit, extrapolated (not fitted there)" for h in handles)
    fit_line = next(ln for label, ln in lines.items() if label.startswith("fit S_min"))
    assert max(fit_line.get_xdata()) == pytest.approx(2048)
    dotted = [ln for ln in lines.values() if ln.get_linestyle() == ":" and max(ln.get_xdata()) > 2048]
    assert dotted and max(dotted[0].get_xdata()) == pytest.approx(8192)
    labels = [h.get_label() for h in handles]
    assert any(lbl.startswith("B_crit (fit) = ") for lbl in labels)
    # B_simple at the target per batch size (a band over their medians), never a mean over batch sizes
    assert any(lbl == "B_simple at the target: 100 (B=128) to 1,600 (B=2048)" for lbl in labels)
    assert not any("mean" in lbl for lbl in labels)


def test_every_tuned_trial_is_drawn_and_a_best_lr_at_the_range_edge_is_flagged(tmp_path):
    store = write_handmade_store(tmp_path / "edge", failed_cell=True, lr_range=(0.01, 0.62))
    out = build_report(store.root)
    tuned = next(p for p in out["plots"] if p.stem == "tuned_lr")
    assert tuned.caption.startswith("Every one of the 8 searched trials (5 complete, 2 failed, 1 diverged")
    assert {"complete trial", "failed trial", "diverged trial", "best LR at the edge of its search range"} <= set(
        tuned.legend)
    studies = studies_frame(load_results(store.root))
    assert studies.loc["momentum-tuned-b2048-s0", "at range edge"].startswith("YES (top)")
    assert studies.loc["momentum-tuned-b128-s0", "at range edge"] == "no"
    assert studies.loc["momentum-tuned-b2048-s0", "diverged / failed"] == "0 / 2"


def _latex_cells(line: str) -> int:
    return len(re.split(r"(?<!\\)&", line))


def test_latex_tables_have_one_header_row_and_the_same_columns_in_every_row(built, failing):
    out = built
    texs = sorted((out["folder"] / "tables").glob("*.tex"))
    assert {p.stem for p in texs} >= {"accuracy", "time_to_target", "protocol", "critical_batch", "projected_time"} - {
        "protocol"}
    for path in texs:
        tex = path.read_text()
        assert tex.count(r"\begin{tabular}") == 1 and tex.count(r"\end{tabular}") == 1, path.name
        spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1)
        head = tex.split(r"\toprule")[1].split(r"\midrule")[0].strip().splitlines()
        assert len(head) == 1, f"{path.name}: header rows {head}"
        body = tex.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
        for line in [*head, *body]:
            assert line.endswith(r"\\") and _latex_cells(line) == len(spec), (path.name, line)
        assert tex.count("{") - tex.count(r"\{") == tex.count("}") - tex.count(r"\}"), path.name
        body_text = "\n".join(line for line in tex.splitlines() if not line.startswith(r"\label"))
        assert "±" not in tex and "_" not in body_text.replace(r"\_", ""), path.name


def test_html_tables_have_one_header_row(built, failing):
    out = built
    page = out["html"].read_text()
    for table in re.findall(r"<table.*?</table>", page, flags=re.S):
        head = re.search(r"<thead>(.*?)</thead>", table, flags=re.S)
        assert head and head.group(1).count("<tr") == 1, table[:300]


def test_summary_json_carries_every_figure_of_the_tables(built, failing):
    out = built
    summary = json.loads((out["folder"] / "summary.json").read_text())
    agg = out["aggregate"]
    assert len(summary["cells"]) == len(agg)
    cells = {(c["method"], c["batch_size"]): c for c in summary["cells"]}
    legw = cells[("legw", 512)]
    assert legw["metric"]["final_mean"] == pytest.approx(0.885) and legw["seeds"] == 3
    assert legw["target"]["steps"] == 110 and legw["target"]["reached_by"] == 2
    assert cells[("none", 2048)]["status"] == "failed" and cells[("none", 2048)]["counts"]["failed"] == 3
    assert cells[("goyal", 2048)]["target"]["steps"] is None  # not reached: null, never Infinity
    assert summary["critical_batch"]["fit"]["fitted_batch_sizes"] == [128, 512, 2048]
    assert {c["id"] for c in summary["claims"]} >= {"legw-flat", "goyal-breaks"}
    assert summary["trial_outcomes"]["failed"] == 5 and len(summary["failed_trials"]) == 5
    for t in out["tables"]:  # every table, as shown and as numbers
        s = summary["tables"][t.name]
        assert s["columns"][1:] == list(t.display.columns)
        assert [r[1:] for r in s["rows"]] == [[str(v) for v in row] for row in t.display.to_numpy()]
    def refuse(name):
        raise ValueError(f"summary.json holds {name}: not JSON")

    json.loads((out["folder"] / "summary.json").read_text(), parse_constant=refuse)  # no NaN or Infinity


def test_seconds_to_target_use_the_model_only_pace_where_trials_measured_it(tmp_path):
    old = load_results(write_handmade_store(tmp_path / "old").root)
    assert "predates" in timing_source(old)
    assert aggregate(old).set_index(["method", "batch_size"]).loc[("legw", 128), "seconds_to_target"] == 4.0
    new = load_results(write_handmade_store(tmp_path / "new", model_step_seconds=0.002).root)
    assert "exclude evaluation and the noise-scale measurement" in timing_source(new)
    a = aggregate(new).set_index(["method", "batch_size"])
    assert a.loc[("legw", 128), "seconds_to_target"] == pytest.approx(400 * 0.002)  # median steps x step time
    assert a.loc[("legw", 128), "throughput"] == pytest.approx(128 / 0.002)


def test_cost_model_reads_the_measured_pace_per_batch_and_marks_starved_devices(store):
    from analysis.costmodel import CostModel, build_model, project

    m = CostModel(throughput=4000, parameters=10, bandwidth_gbps=100, latency_us=0, overhead_ms=0,
                  curve={256: 1000.0, 1024: 4000.0}, efficient_batch=256)
    assert m.device_throughput(512) == pytest.approx(2000)  # log-log between the measured points
    assert m.device_throughput(4096) == pytest.approx(4000) and m.device_throughput(64) == pytest.approx(1000)
    res = load_results(store.root)
    model, info = build_model(res)
    assert model.efficient_batch == 128 and info["throughput source"].startswith("measured: this sweep's trials")
    proj, _ = project(res, aggregate(res))
    legw = proj[proj.method == "legw"].set_index("devices")
    assert legw.loc[256, "below_efficient"] and legw.loc[256, "per_device_batch"] < 128
    assert not legw.loc[1, "below_efficient"]


def test_an_accelerator_profile_gives_throughput_and_efficient_batch(tmp_path, monkeypatch):
    from analysis.costmodel import build_model, project

    profiles = tmp_path / "acc.yaml"
    profiles.write_text("gpu-x:\n  description: a test GPU\n  throughput: {fmnist_lstm: 50000}\n"
                        "  efficient_batch: {fmnist_lstm: 512}\n")
    monkeypatch.setenv("BATCHSCALE_ACCELERATORS", str(profiles))
    store = write_handmade_store(tmp_path / "acc")
    meta = json.loads((store.root / "sweep.json").read_text())
    meta["spec_resolved"]["projection"] = {"accelerator": "gpu-x", "devices": [1, 4, 16]}
    (store.root / "sweep.json").write_text(json.dumps(meta))
    res = load_results(store.root)
    model, info = build_model(res)
    assert (model.throughput, model.efficient_batch) == (50000, 512)
    assert info["throughput source"] == "accelerator profile 'gpu-x': a test GPU"
    proj, _ = project(res, aggregate(res))
    for r in proj[proj.best_batch.notna()].itertuples():
        assert r.below_efficient == (r.per_device_batch < 512)
    assert proj.below_efficient.any() and not proj.below_efficient.all()


def rendered(html_path, screenshot=None) -> dict:
    """Open the page in headless Chromium and read back what it shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(html_path.as_uri(), wait_until="load")
        seen = page.evaluate("""() => {
            const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
            const heads = Array.from(document.querySelectorAll('h1, h2, figcaption, table'));
            const overlaps = [];
            for (let i = 0; i < heads.length; i++) for (let j = i + 1; j < heads.length; j++) {
                const a = box(heads[i]), b = box(heads[j]);
                if (Math.min(a[2], b[2]) - Math.max(a[0], b[0]) > 1 && Math.min(a[3], b[3]) - Math.max(a[1], b[1]) > 1)
                    overlaps.push([heads[i].tagName + ':' + heads[i].innerText.slice(0, 40),
                                   heads[j].tagName + ':' + heads[j].innerText.slice(0, 40)]);
            }
            return {
                images: Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0, i.width]),
                captions: Array.from(document.querySelectorAll('figure')).map(f => !!f.querySelector('figcaption')),
                header_rows: Array.from(document.querySelectorAll('table')).map(t => t.tHead ? t.tHead.rows.length : 0),
                bad_cells: Array.from(document.querySelectorAll('td.bad')).map(td => td.innerText),
                text: document.body.innerText, overlaps: overlaps,
            };
        }""")
        if screenshot:
            page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return seen


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
def test_html_report_in_chromium_shows_every_figure_legend_and_marker(built, failing, tmp_path):
    out = built
    seen = rendered(out["html"], tmp_path / "page.png")
    assert len(seen["images"]) == len(out["plots"]) and all(ok and w > 300 for _, ok, w in seen["images"])
    assert all(seen["captions"]) and set(seen["header_rows"]) == {1}
    assert seen["overlaps"] == []
    # the page states the rules that marked runs (the markers' legends are in the images, test above)
    assert "Failed: completed, but its final accuracy covered less than 10% of the way from chance" in seen["text"]
    bad = " | ".join(seen["bad_cells"])
    assert "diverged" in bad and "failed: 0.1020" in bad and "not reached" in bad
    assert (tmp_path / "page.png").stat().st_size > 50_000


def test_a_projected_speedup_is_judged_only_on_devices_the_batch_can_fill(store):
    from analysis.reproduce import HOLDS, UNMEASURABLE, judge

    res = load_results(store.root)
    agg = aggregate(res)

    def claim(devices):
        return judge(res, agg, {"id": "p", "text": "projected", "kind": "speedup",
                                "params": {"method": "legw", "min": 1.0, "kind": "projected", "devices": devices}})

    # 4 devices: B=512 puts 128 examples on each, the smallest batch measured (the efficient batch)
    four = claim(4)
    assert four.verdict == HOLDS and four.measured.startswith("projected: B=512 on 4 devices")
    # 64 devices: every batch that reached the target (128, 512) would put 2-8 examples on a device
    sixty_four = claim(64)
    assert sixty_four.verdict == UNMEASURABLE
    assert "no batch that reached the target fills 64 devices" in sixty_four.measured


def test_the_throughput_can_come_from_another_sweep_of_the_workload(tmp_path):
    from analysis.costmodel import build_model
    from harness.errors import BatchscaleError

    gpu = write_handmade_store(tmp_path / "gpu", model_step_seconds=0.001)  # e.g. the same study on a GPU
    store = write_handmade_store(tmp_path / "cpu")
    meta = json.loads((store.root / "sweep.json").read_text())
    meta["spec_resolved"]["projection"] = {"accelerator": "measured", "throughput_from": str(gpu.root)}
    (store.root / "sweep.json").write_text(json.dumps(meta))
    model, info = build_model(load_results(store.root))
    for method in ("goyal", "legw"):  # each series its own pace: B / 1 ms at each batch it ran
        assert model.for_series("momentum", method).curve == {128: 128_000.0, 512: 512_000.0, 2048: 2_048_000.0}
    assert model.for_series("momentum", "tuned").curve == {128: 128_000.0, 2048: 2_048_000.0}  # its studies' sizes
    # the other sweep is named by a path relative to the report folder, never an absolute one
    assert info["throughput source"].startswith("measured: the trials of the sweep ../../gpu (a path relative to "
                                                "this report)")
    other = json.loads((gpu.root / "sweep.json").read_text())
    other["workload"]["name"] = "mnist1d_mlp"
    (gpu.root / "sweep.json").write_text(json.dumps(other))
    with pytest.raises(BatchscaleError, match="projection.throughput_from: .* ran workload 'mnist1d_mlp'"):
        build_model(load_results(store.root))
