"""Sweeps through real Ray: a local embedded Ray started by the CLI, and a cluster started here.

A sweep whose subject is the process (a killed driver and its leftovers, a cluster by address,
declared GPUs, plugins the workers import) runs ``python -m harness.cli`` in a subprocess with its
own Ray temp folder, so its leftovers can be found and stopped without touching any other Ray
processes. The others run the same command in this process (``here``) on the test process's one
Ray (the ``shared_ray`` fixture), as a sweep started from a notebook with Ray running would.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from harness.results.store import ResultsStore
from harness.sweep import leftovers
from tests.conftest import here, kill_tree_matching

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]

SPEC = {
    "name": "grid",
    "workload": "mnist1d_mlp",
    "workload_options": {"n_train": 20000, "n_test": 1000},
    "budget": {"epochs": 3},
    "target": {"metric": "accuracy", "value": 0.55},
    "eval": {"per_epoch": 2},
    "axes": {"batch_sizes": [128, 512], "methods": ["legw", "goyal", "tuned"]},
    "tuning": {"max_extensions": 1},
    "protocol": {"pilot": False},  # these tests are about the machinery; tests/test_protocol.py has the protocols
}


#: The test workloads and rules of tests/plugins.py, for a sweep's driver and its trials.
PLUGINS = {"BATCHSCALE_WORKLOAD_MODULES": "tests.plugins"}


def processes_matching(marker: str) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(pid))
            except OSError:
                pass
    return out


def cli(args, ray_tmp, env_extra=None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600, **kw)


def why(proc: subprocess.CompletedProcess) -> str:
    """A failed command's stderr: its start (a native crash names its cause there) and its end."""
    err = proc.stderr or ""
    return err if len(err) <= 4000 else f"{err[:1500]}\n[...]\n{err[-2500:]}"


def write_spec(tmp_path, spec, name="spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def load(results: Path):
    """(sweep.json, trials, measurements): the tables with any trial records not yet folded in."""
    return ResultsStore(results).load()


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, worker_id, request):
    """One finished sweep (2 batch sizes x 2 methods + a bracketing tuned study per batch size), run
    once per test session: under pytest-xdist the first worker that needs it runs it and the others
    wait for it (a file lock) and read the same folder. So it is read-only: a test that writes to it
    works on its own copy (``own_copy``)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent  # the folder the session's workers share
    tmp = root / "finished-sweep"
    with FileLock(str(root / "finished-sweep.lock")):
        if not (tmp / "proc.json").exists():
            tmp.mkdir(exist_ok=True)
            request.getfixturevalue("shared_ray")
            spec = write_spec(tmp, SPEC)
            proc = here(["sweep", spec, "--results", tmp / "results", "--no-report", "--quiet"])
            (tmp / "proc.json").write_text(json.dumps({"returncode": proc.returncode, "stdout": proc.stdout,
                                                       "stderr": proc.stderr}))
    proc = subprocess.CompletedProcess(["sweep"], **json.loads((tmp / "proc.json").read_text()))
    assert proc.returncode == 0, why(proc)
    return tmp, tmp / "spec.yaml", tmp / "results" / "grid", proc


def own_copy(finished_sweep, folder: Path) -> Path:
    """The finished sweep's results under ``folder``/results (its grid folder returned), to write to."""
    shutil.copytree(finished_sweep[2], folder / "results" / "grid")
    return folder / "results" / "grid"


# slow (~38 s, Intel 2-core VM): fixture finished_sweep, once per session: a real Ray sweep, 4 grid trials + 2 tuned studies
@pytest.mark.slow
def test_grid_sweep_writes_the_three_files_with_right_contents(finished_sweep):
    _, _, results, proc = finished_sweep
    meta, trials, measurements = load(results)
    assert meta["schema_version"] == 1 and meta["status"] == "finished" and meta["finished_at"]
    assert meta["spec_given"]["spec"]["axes"]["methods"] == ["legw", "goyal", "tuned"]
    assert meta["spec_resolved"]["axes"]["batch_sizes"] == [128, 512]
    assert {"python", "torch", "ray", "optuna", "host", "cpu"} <= set(meta["environment"])
    assert "sweep 'grid' finished" in proc.stdout

    grid = trials[trials.method != "tuned"].set_index("trial_id")
    assert sorted(grid.index) == ["momentum-goyal-b128-s0", "momentum-goyal-b512-s0",
                                  "momentum-legw-b128-s0", "momentum-legw-b512-s0"]
    assert (grid.status == "complete").all(), grid[["status", "error"]]
    # the search tries LRs up to twice the linear rule's: some diverge, which is a result
    assert set(trials.status) <= {"complete", "diverged"}, trials[["trial_id", "status", "error"]]
    n, b0 = 18000, 256  # 10% of 20000 held out for the tuned arm's validation; the base recipe has B0 = 256
    base_lr = meta["workload"]["base_recipes"]["momentum"]["peak_lr"]
    for tid, row in grid.iterrows():
        k = row.batch_size / b0
        expected_lr = base_lr * (k if row.method == "goyal" else math.sqrt(k))
        assert row.peak_lr == pytest.approx(expected_lr)
        assert row.total_steps == math.ceil(3 * n / row.batch_size) == row.steps
        # below the MLP's micro-batch cap, so split in two to measure the noise scale
        assert row.micro_batch_size == row.batch_size // 2
        assert 0.1 < row.final_metric <= row.best_metric <= 1.0
        rows = measurements[measurements.trial_id == tid]
        assert rows.noise_scale.notna().any()
        assert len(rows) == 6 and rows.step.is_monotonic_increasing and rows.step.iloc[-1] == row.total_steps
        if row.target_reached:
            first = rows[rows.metric >= 0.55].iloc[0]
            assert (row.steps_to_target, row.examples_to_target) == (first.step, first.examples)
        else:
            assert pd.isna(row.steps_to_target)
    assert set(measurements.trial_id) == set(trials.trial_id)
    # the run folded its trials' records into the two tables
    assert (results / "trials.parquet").exists() and not list((results / "records").glob("*"))
    # the plan in sweep.json and the trials agree on the micro-batch (one place decides it)
    planned = {r.get("trial_id") or r["study"]: r["micro_batch_size"] for r in meta["trials"]}
    for t in trials.itertuples():
        assert t.micro_batch_size == planned[t.trial_id if t.method != "tuned" else t.study], t.trial_id


# slow (~11 s once the fixture ran, Intel 2-core VM): the finished_sweep fixture; headless Chromium renders its report
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
                    reason="Debian's chromium is not installed (make test installs it as root)")
def test_the_report_of_a_real_sweep_reads_right_in_chromium(finished_sweep, tmp_path):
    """The report of this small real sweep, rendered as a reader sees it."""
    import matplotlib.colors

    from analysis.aggregate import load_results
    from analysis.report import build_report
    from analysis.style import series_styles
    from tests.test_report import rendered

    out = build_report(results := own_copy(finished_sweep, tmp_path))
    seen = rendered(out["html"], tmp_path / "page.png")
    assert len(seen["images"]) == len(out["plots"]) >= 6 and all(ok and w > 300 for _, ok, w in seen["images"])
    assert all(seen["captions"]) and set(seen["header_rows"]) == {1} and seen["overlaps"] == []
    assert "Failed: completed, but its final accuracy covered less than 10%" in seen["text"]
    res = load_results(results)
    styles = series_styles(res)
    assert list(styles) == ["legw", "goyal", "tuned"]  # the spec's order
    for p in out["plots"]:
        assert p.overlaps == [], (p.stem, p.overlaps)
        for label, style in styles.items():
            if label in p.legend:
                assert p.legend[label] == matplotlib.colors.to_hex(style.color), (p.stem, label)
    # the markers are there where the data has them
    agg = out["aggregate"]
    bad = " | ".join(seen["bad_cells"])
    if ((agg.complete == 0) & (agg.diverged > 0)).any():
        assert "diverged" in bad
    if ((agg.complete == 0) & (agg.failed > 0)).any():
        assert "failed" in bad
    if (~agg.steps_to_target.apply(math.isfinite)).any():
        assert "not reached" in bad
    tuned = next(p for p in out["plots"] if p.stem == "tuned_lr")
    counts = res.trials[res.trials.method == "tuned"].outcome.value_counts()
    for outcome in ("diverged", "failed"):
        if counts.get(outcome):
            assert f"{outcome} trial" in tuned.legend
    assert tuned.caption.startswith(f"Every one of the {int(counts.sum())} searched trials")


# slow (~38 s, Intel 2-core VM): fixture finished_sweep, once per session: a real Ray sweep, 4 grid trials + 2 tuned studies
@pytest.mark.slow
def test_tuned_studies_bracket_the_lr_on_the_validation_split_and_record_it(finished_sweep):
    _, _, results, _ = finished_sweep
    meta, trials, measurements = load(results)
    tuned = trials[trials.method == "tuned"]
    for batch, rows in tuned.groupby("batch_size"):
        study = meta["studies"][f"momentum-tuned-b{batch}"]
        # the coarse stage spans none/2 .. linear*2 from B0 = 256 (eta0 = 0.4) on the sqrt(2) lattice
        k = batch / 256
        lrs = sorted(rows.peak_lr)
        assert lrs[0] <= min(0.4, 0.4 * k) / 2 * 1.0001 and lrs[-1] >= max(0.4, 0.4 * k) * 2 * 0.9999
        steps = [math.log(lr / 0.2) / math.log(2 ** 0.5) for lr in lrs]
        assert all(abs(x - round(x)) < 1e-6 for x in steps), steps  # every LR on the lattice
        assert len(rows) == study["trials"] == len(study["candidates"]) == rows.peak_lr.nunique()  # 1 seed
        # selected on the validation split, reported on the test split
        extra = [json.loads(e) for e in rows.extra]
        valid = pd.Series([e["valid_final_metric"] for e in extra], index=rows.index)
        best = rows.loc[valid.idxmax()]
        assert study["best_peak_lr"] == pytest.approx(best.peak_lr)
        assert study["selects_on"].startswith("validation final_metric")
        b = study["bracket"]
        if b["bracketed"]:
            assert b["spacing_below"] == b["spacing_above"] == pytest.approx(2 ** 0.5)
        else:
            assert b["edge"] in ("low", "high")
        # the LEGW warmup rule for tuned trials: w0 * k epochs
        assert rows.warmup_epochs.iloc[0] == pytest.approx(0.02 * batch / 256)
        mine = measurements[measurements.trial_id.isin(rows.trial_id)]
        assert (mine.valid_metric.notna() == mine.metric.notna()).all()  # every evaluation, on both splits
        saved = optuna.load_study(study_name=f"momentum-tuned-b{batch}", storage=study["storage"])
        assert len(saved.trials) == len(study["candidates"])
        assert saved.best_value == pytest.approx(-valid.max())


# slow (~38 s, Intel 2-core VM): fixture finished_sweep, once per session: a real Ray sweep, 4 grid trials + 2 tuned studies
@pytest.mark.slow
def test_rerunning_a_finished_sweep_does_nothing(finished_sweep, tmp_path):
    _, spec, _, _ = finished_sweep
    results = own_copy(finished_sweep, tmp_path)
    before = (results / "trials.parquet").read_bytes()
    proc = here(["sweep", spec, "--results", tmp_path / "results", "--no-report", "--quiet"])
    assert proc.returncode == 0 and "already finished" in proc.stdout and "nothing to do" in proc.stdout
    assert (results / "trials.parquet").read_bytes() == before


# slow (~38 s, Intel 2-core VM): fixture finished_sweep, once per session: a real Ray sweep, 4 grid trials + 2 tuned studies
@pytest.mark.slow
def test_a_changed_spec_under_the_same_name_is_refused(finished_sweep, tmp_path):
    _, spec, _, _ = finished_sweep
    results = own_copy(finished_sweep, tmp_path)
    before = (results / "sweep.json").read_text()
    proc = here(["sweep", spec, "--results", tmp_path / "results", "--set", "budget.epochs=4"])
    assert proc.returncode == 4
    assert proc.stderr.strip().count("\n") == 0 and "different spec (changed: budget.epochs)" in proc.stderr
    assert (results / "sweep.json").read_text() == before


# slow (~18 s, Intel 2-core VM): two real Ray sweeps: 1 trial, then grown by a seed, plus 2 refused CLI runs
@pytest.mark.slow
def test_a_finished_sweep_grows_by_a_seed_and_runs_only_the_new_trials(tmp_path, shared_ray):
    small = {**SPEC, "name": "grow", "budget": {"epochs": 1}, "axes": {"batch_sizes": [512], "methods": ["legw"]}}
    spec = write_spec(tmp_path, small)
    results = tmp_path / "results" / "grow"
    first = here(["sweep", spec, "--results", tmp_path / "results", "--no-report", "--quiet"])
    assert first.returncode == 0, why(first)
    _, trials0, measurements0 = load(results)
    assert list(trials0.seed) == [0]
    grown = here(["sweep", spec, "--results", tmp_path / "results", "--set", "axes.seeds=[0, 1]"])
    assert grown.returncode == 0, why(grown)
    assert "grows: axes.seeds + [1]" in grown.stdout
    meta, trials, measurements = load(results)
    assert sorted(trials.seed) == [0, 1] and trials.trial_id.is_unique
    old = trials[trials.seed == 0].drop(columns=["extra"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(old, trials0.drop(columns=["extra"]).reset_index(drop=True))  # untouched
    assert len(measurements[measurements.trial_id == trials0.trial_id[0]]) == len(measurements0)
    assert meta["spec_resolved"]["axes"]["seeds"] == [0, 1] and meta["sessions"][-1]["grew"] == {"seeds": [1]}
    assert {r["seed"] for r in meta["trials"]} == {0, 1}
    report = (results / "report" / "tables" / "aggregate.csv").read_text()
    assert pd.read_csv(results / "report" / "tables" / "aggregate.csv").seeds.tolist() == [2], report
    # a sweep grows, it does not shrink; and a change to what fixes the cells is refused, naming it
    for extra, words in ((["--set", "axes.seeds=[1]"], "axes.seeds drops [0]"),
                         (["--set", "axes.seeds=[0, 1, 2]", "--set", "budget.epochs=2"], "changed: budget.epochs")):
        proc = here(["sweep", spec, "--results", tmp_path / "results", *extra])
        assert proc.returncode == 4 and words in proc.stderr, why(proc)
    assert sorted(load(results)[1].seed) == [0, 1]


def _running(results: Path) -> list[dict]:
    """The store's rows, read whole while the driver writes records."""
    return ResultsStore(results).trial_rows() if (results / "sweep.json").exists() else []


def gated(tmp_path, spec: dict, epochs: int) -> tuple[dict, Path]:
    """``spec`` on the gated MNIST-1D of tests/plugins.py: once a trial has trained on 1.5 x n_train
    examples (past its first evaluations and their checkpoint), the first trial passes its gate and
    the others wait there until the test opens it (``gate / "open"``)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    n = spec["workload_options"]["n_train"]
    options = {**spec["workload_options"], "gate_dir": str(gate), "gate_examples": 3 * n // 2}
    return {**spec, "workload": "gated_mnist1d", "workload_options": options, "budget": {"epochs": epochs}}, gate


def wait_for(driver: subprocess.Popen, ready, what: str, seconds: float = 300) -> None:
    """Wait until ``ready()`` while the driver runs; fail with ``what`` if it ends or time runs out."""
    deadline = time.time() + seconds
    while not ready():
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before {what}"
        assert time.time() < deadline, f"not {what} after {seconds:.0f} s"
        time.sleep(0.5)  # the gate holds the trials: no hurry, and each look reads the store


# slow (~50 s, Intel 2-core VM): SIGKILLs a real Ray sweep driver mid-grid, then reruns it to resume and finish
@pytest.mark.slow
def test_resume_after_sigkill_of_the_driver(tmp_path, ray_tmp, shared_ray):
    """Kill the driver (SIGKILL) while trials of the grid and of a tuned study are running; the
    same command finishes the sweep: finished trials keep their rows, the running ones continue
    from the checkpoints their records name, every planned trial is in the store once, nothing of
    Ray's is printed, and the processes the killed driver's Ray left are ended."""
    # one batch size; the gate holds every trial but the first past a checkpoint: the kill lands
    # among the grid's and the study's running trials on any machine
    fields, gate = gated(tmp_path, {**SPEC, "axes": {**SPEC["axes"], "batch_sizes": [512]}}, epochs=3)
    spec = write_spec(tmp_path, fields)
    results = tmp_path / "results" / "grid"
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, **PLUGINS}
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", str(spec), "--results",
                               str(tmp_path / "results"), "--no-report", "--quiet"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def grid_and_study_wait():
        rows = _running(results)
        live = [r for r in rows if r["status"] == "incomplete" and "resume_from" in (r["extra"] or "")]
        return (any(r["status"] == "complete" for r in rows) and any(r["study"] for r in live)
                and any(not r["study"] for r in live))

    wait_for(driver, grid_and_study_wait, "a trial finished and grid and study trials waited at the gate")
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    (gate / "open").touch()
    meta, before, m_before = load(results)
    running = before[before.status == "incomplete"]
    assert running.study.notna().any() and running.study.isna().any(), "grid and study trials must be running"
    finished = before[before.status == "complete"]
    assert len(finished) == 1, "the first trial at the gate passed it, the others wait there"
    recorded = {p for p, _ in meta["sessions"][-1]["ray"]["processes"]}
    # a process that looks like a leftover agent but was not started by the killed driver's Ray
    bystander = subprocess.Popen(["bash", "-c", "exec -a ray::DashboardAgent sleep 300"])

    # the rerun in this process, on its Ray: what it ends is the killed driver's, not its own Ray's
    proc = here(["sweep", spec, "--results", tmp_path / "results", "--no-report"], PLUGINS)
    alive = bystander.poll() is None
    bystander.kill()
    assert proc.returncode == 0, why(proc)
    assert "Traceback" not in proc.stdout + proc.stderr and "ERROR" not in proc.stdout + proc.stderr, why(proc)
    ended = re.search(r"ended \d+ process\(es\) the killed driver of an earlier run left behind \(pids ([\d, ]+)\)",
                      proc.stdout)
    assert ended, proc.stdout  # DashboardAgent and RuntimeEnvAgent outlive a SIGKILLed driver
    assert {int(p) for p in ended.group(1).split(", ")} <= recorded and alive, "only the recorded processes"
    meta, after, m_after = load(results)
    assert not [p for p, start in meta["sessions"][0]["ray"]["processes"] if leftovers.alive(p, start)]
    assert meta["status"] == "finished" and len(meta["sessions"]) == 2
    (study,) = meta["studies"].values()  # the bracketing study ran to its end, each LR once
    assert study["bracket"]["candidates"] == len(study["candidates"]) == after.study.notna().sum()
    assert len(after) == 2 + len(study["candidates"]) and after.trial_id.is_unique
    assert (after[after.study.isna()].status == "complete").all() and set(after.status) <= {"complete", "diverged"}
    # finished trials were not rerun: their rows, timings included, are unchanged
    kept = after.set_index("trial_id").loc[finished.trial_id]
    assert list(kept.train_seconds) == list(finished.train_seconds)

    def rows_of(m, ids):
        return m[m.trial_id.isin(ids)].sort_values(["trial_id", "step"]).reset_index(drop=True)

    pd.testing.assert_frame_equal(rows_of(m_after, finished.trial_id), rows_of(m_before, finished.trial_id))
    # the running ones continued from their recorded checkpoints, under the same ids and parameters
    for row in running.itertuples():
        done = after.set_index("trial_id").loc[row.trial_id]
        assert json.loads(done.extra)["resumed_from_step"] == row.steps
        assert done.peak_lr == pytest.approx(row.peak_lr)
        curve = rows_of(m_after, [row.trial_id])
        assert list(curve.step[:len(rows_of(m_before, [row.trial_id]))]) == list(rows_of(m_before, [row.trial_id]).step)


# slow (~20 s, Intel 2-core VM): kills a real Ray sweep driver after a checkpoint, reruns it to end the trial
@pytest.mark.slow
def test_an_unfinished_trial_continues_from_its_checkpoint(tmp_path, ray_tmp, shared_ray):
    """After the driver dies, a trial whose record names a checkpoint continues from it, not from
    step 0, and its evaluations join up with no gap or repeat. Tune's experiment state plays no
    part: the Ray folder's experiment state is deleted before the rerun."""
    fields, gate = gated(tmp_path, {
        "name": "long", "workload_options": {"n_train": 20000, "n_test": 1000}, "eval": {"per_epoch": 2},
        "axes": {"batch_sizes": [128], "methods": ["legw"]}}, epochs=3)
    (gate / "first").touch()  # the trial is not the first: it waits at the gate, past its first checkpoint
    spec = write_spec(tmp_path, fields)
    results = tmp_path / "results" / "long"
    cmd = ["sweep", str(spec), "--results", str(tmp_path / "results"), "--no-report", "--quiet"]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, **PLUGINS}
    driver = subprocess.Popen([sys.executable, "-m", "harness.cli", *cmd], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(driver, lambda: "resume_from" in ((_running(results) or [{}])[0].get("extra") or ""),
             "the trial recorded a checkpoint")
    driver.kill()
    driver.wait()
    (gate / "open").touch()
    for state in (results / "ray").rglob("experiment_state-*.json"):
        state.unlink()

    proc = here(cmd, PLUGINS)  # in this process, on its Ray
    assert proc.returncode == 0, why(proc)
    _, trials, measurements = load(results)
    (row,) = trials.itertuples()
    assert row.status == "complete"
    resumed_from = json.loads(row.extra)["resumed_from_step"]
    evals = [math.ceil(10000 * i / 128) for i in range(1, 7)]  # the first step past each half epoch
    assert list(measurements.step) == evals
    assert resumed_from in evals[:-1], resumed_from  # from an evaluation's checkpoint, before the end
    assert not list((results / "ray").rglob("checkpoint_*")), "a finished trial's checkpoints are dropped"


# slow (~33 s, Intel 2-core VM): real Ray sweep with a retried failing trial and TensorBoard/MLflow/W&B tracking
@pytest.mark.slow
def test_a_trial_that_raises_is_retried_then_recorded_as_error(tmp_path, ray_tmp):
    spec = write_spec(tmp_path, {
        "name": "flaky", "workload": "flaky_mnist1d", "workload_options": {"n_train": 2000, "n_test": 500},
        "budget": {"epochs": 1}, "eval": {"per_epoch": 2}, "axes": {"batch_sizes": [256, 512], "methods": ["legw"]},
        "retries": 1, "noise_scale": False,  # one micro-batch per step: the failing size is the batch size
        "tracking": {"tensorboard": True, "mlflow": True, "wandb": True, "wandb_mode": "offline"}})
    # run as a user runs it: the `batchscale` script, in the folder that holds the plugin module, no
    # PYTHONPATH: the module is found there, and the Ray workers find it too
    shutil.copy(REPO / "tests" / "plugins.py", tmp_path / "myplugins.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(Path(sys.executable).with_name("batchscale")), "sweep", str(spec), "--results",
                           str(tmp_path / "results"), "--no-report", "--quiet"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600,
                          env={**env, "RAY_TMPDIR": ray_tmp, "BATCHSCALE_WORKLOAD_MODULES": "myplugins",
                               "WANDB_SILENT": "true"})
    assert proc.returncode == 0, why(proc)
    _, trials, _ = load(tmp_path / "results" / "flaky")
    by_batch = trials.set_index("batch_size")
    assert by_batch.loc[256, "status"] == "complete"
    assert by_batch.loc[512, "status"] == "error"
    assert "injected failure at batch size 512" in by_batch.loc[512, "error"]
    assert "error 1" in proc.stdout
    # tracking: each trial as a run, read back with each tool's own reader
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = tmp_path / "results" / "flaky"
    _, _, measurements = load(results)
    ok = by_batch.loc[256, "trial_id"]
    steps = measurements[measurements.trial_id == ok].step.tolist()
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("flaky").experiment_id])}
    assert set(runs) == set(trials.trial_id)
    assert runs[ok].info.status == "FINISHED" and runs[ok].data.params["batch_size"] == "256"
    # a rule arm's run has the recipe it resolved to, not only the tuned arm's searched LR
    params = runs[ok].data.params
    assert float(params["peak_lr"]) == pytest.approx(by_batch.loc[256, "peak_lr"])
    assert float(params["warmup_epochs"]) == pytest.approx(by_batch.loc[256, "warmup_epochs"])
    assert "realised_peak_lr" in params and params["micro_batch_size"] == "256" and params["method"] == "legw"
    assert [m.step for m in client.get_metric_history(runs[ok].info.run_id, "accuracy")] == steps
    examples = measurements[measurements.trial_id == ok].examples.tolist()
    assert [m.value for m in client.get_metric_history(runs[ok].info.run_id, "examples")] == examples
    assert runs[ok].data.metrics["final_final_metric"] == pytest.approx(by_batch.loc[256, "final_metric"])
    assert runs[by_batch.loc[512, "trial_id"]].info.status == "FAILED"
    events = EventAccumulator(str(results / "tensorboard" / ok))
    events.Reload()
    assert [e.step for e in events.Scalars("accuracy")] == steps
    assert [e.value for e in events.Scalars("accuracy")][-1] == pytest.approx(by_batch.loc[256, "final_metric"])
    assert [e.step for e in events.Scalars("by_examples/accuracy")] == examples  # batch sizes on one axis
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator as PluginEvents

    plugin = PluginEvents(str(results / "tensorboard" / ok))
    plugin.Reload()
    assert "_hparams_/experiment" in plugin.PluginTagToContent("hparams")
    # W&B, offline: a run per trial, its config the resolved recipe, exit 0 when complete, 1 on error
    for trial_id, exit_code in ((ok, 0), (by_batch.loc[512, "trial_id"], 1)):
        run_files = list((results / "wandb" / "wandb").glob(f"offline-run-*-{trial_id}/run-{trial_id}.wandb"))
        assert len(run_files) == 1, list((results / "wandb").rglob("*"))
        records = wandb_records(run_files[0])
        assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [exit_code]
        config = {u.key for u in next(r.run.config for r in records if r.WhichOneof("record_type") == "run").update}
        # the recipe comes with the first evaluation, which the trial in error never reached
        assert {"batch_size", "method"} | ({"peak_lr", "warmup_epochs", "realised_peak_lr"} if exit_code == 0
                                           else set()) <= config, config


def wandb_records(path):
    """The protobuf records of an offline W&B run file (LevelDB log format: 7-byte file header,
    32 KiB blocks of records with a 7-byte header each; FULL or FIRST..LAST pieces)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, out, piece = Path(path).read_bytes(), 7, [], b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the block's zero padding
            pos += left
            continue
        piece, pos = piece + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            out.append(record)
            piece = b""
    return out


# slow (~38 s, Intel 2-core VM): fixture finished_sweep, once per session: a real Ray sweep, 4 grid trials + 2 tuned studies
@pytest.mark.slow
def test_an_unreachable_cluster_address_fails_fast_in_one_line(tmp_path, ray_tmp, finished_sweep):
    """Nothing listens at the address: one line naming it and what to check, within 30 s, before
    anything is written; a stored sweep keeps its status (it is not left 'running')."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = write_spec(tmp_path, SPEC)
    started = time.monotonic()
    proc = cli(["sweep", str(spec), "--results", str(tmp_path / "results"), "--address", f"127.0.0.1:{port}"],
               ray_tmp)
    assert time.monotonic() - started < 30
    err = proc.stderr.strip()
    assert proc.returncode == 1 and "\n" not in err, why(proc)
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers" in err and "ray start --head" in err
    assert not (tmp_path / "results").exists() and not processes_matching(ray_tmp)
    _, _, reference, _ = finished_sweep
    shutil.copytree(reference, tmp_path / "again" / "grid")
    proc = cli(["sweep", str(spec), "--results", str(tmp_path / "again"), "--address", f"127.0.0.1:{port}"],
               ray_tmp)
    assert proc.returncode == 1 and load(tmp_path / "again" / "grid")[0]["status"] == "finished"


def test_sweep_spec_errors_exit_2_before_starting_ray(tmp_path, ray_tmp):
    spec = write_spec(tmp_path, {**SPEC, "axes": {"batch_sizes": [128, 0]}})
    proc = cli(["sweep", str(spec), "--results", str(tmp_path / "results")], ray_tmp)
    assert proc.returncode == 2 and "key 'axes.batch_sizes.1'" in proc.stderr
    assert not (tmp_path / "results").exists() and not processes_matching(ray_tmp)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# slow (~63 s, Intel 2-core VM): `ray start`s a 2-node token-auth cluster of a CPU each, sweeps 4 trials on it
# (2 at a time, one on each node), stops it
@pytest.mark.slow
def test_sweep_on_a_ray_cluster_by_address_with_token_auth(tmp_path):
    """`ray start --head` on 127.0.0.1 with token authentication, a sweep with --address, then
    that cluster stopped (its process group and its own temp folder) and nothing else."""
    cluster_tmp = tempfile.mkdtemp(prefix="bsc", dir="/tmp")
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "ray::bystander-raylet"])
    head = subprocess.Popen([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                             "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats", "--block",
                             "--temp-dir", cluster_tmp], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            status = subprocess.run([ray_bin, "status", "--address", f"127.0.0.1:{port}"], env=env,
                                    capture_output=True, text=True)
            if status.returncode == 0:
                break
            time.sleep(2)  # each `ray status` is a Python start and a Ray import (~1 CPU-s)
        assert status.returncode == 0, status.stderr[-2000:]
        # a second node on the same machine: a two-node loopback cluster
        worker = subprocess.Popen([ray_bin, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address",
                                   "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", "--block"],
                                  env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        while time.time() < deadline:
            status = subprocess.run([ray_bin, "status", "--address", f"127.0.0.1:{port}"], env=env,
                                    capture_output=True, text=True)
            if status.stdout.split("Pending:")[0].count("node_") >= 2:
                break
            time.sleep(2)
        assert status.stdout.split("Pending:")[0].count("node_") >= 2, status.stdout[-2000:]
        spec = write_spec(tmp_path, {**SPEC, "name": "on-cluster", "axes": {
            "batch_sizes": [1024], "methods": ["legw", "adascale", "autowu", "noise-aware"]}})
        proc = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(spec), "--address",
                               f"127.0.0.1:{port}", "--results", str(tmp_path / "results"), "--no-report", "--quiet"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, why(proc)
        shown = proc.stdout + proc.stderr  # Ray's own output went to results/on-cluster/ray.log
        assert not [w for w in ("Traceback", "ERROR", "WARNING", "Warning", "warn(") if w in shown], shown[-3000:]
        meta, trials, measurements = load(tmp_path / "results" / "on-cluster")
        assert len(trials) == 4 and (trials.status == "complete").all(), trials[["trial_id", "status", "error"]]
        assert meta["sessions"][0]["address"] == f"127.0.0.1:{port}"
        # the automatic methods ran as methods of the sweep
        t = trials.set_index("trial_id")
        assert 1.0 <= t.loc["momentum-adascale-b1024-s0", "adascale_mean_gain"] <= 4.0
        assert measurements[measurements.trial_id == "momentum-adascale-b1024-s0"].gain.between(1, 4).all()
        b_noise = meta["noise_aware"]["momentum"]
        assert b_noise > 0 and t.loc["momentum-noise-aware-b1024-s0", "peak_lr"] == pytest.approx(
            0.4 * 4 * (256 + b_noise) / (1024 + b_noise))
        assert measurements.noise_scale.notna().any()
    finally:
        for node in (worker, head):
            if node is None:
                continue
            os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        deadline = time.time() + 20
        while processes_matching(cluster_tmp) and time.time() < deadline:
            time.sleep(0.5)
        leftovers = processes_matching(cluster_tmp)
        kill_tree_matching(cluster_tmp)
        shutil.rmtree(cluster_tmp, ignore_errors=True)
        alive = bystander.poll() is None
        bystander.kill()
    assert alive, "stopping our cluster must not touch other Ray processes"
    assert not leftovers, f"processes of the test cluster still running after stop: {leftovers}"


# slow (~14 s once the fixture ran, Intel 2-core VM): finished_sweep fixture, then a real Ray rerun of a study's missing trials
@pytest.mark.slow
def test_a_study_half_in_the_store_runs_only_its_missing_trials_without_the_ray_folder(tmp_path, finished_sweep):
    """The store is the truth: with all but two of a bracketing study's trials gone from it and the
    whole Ray folder deleted, a rerun keeps the two, rebuilds the study from the store and runs the
    rest; the search is deterministic, so it ends on the same LRs and trial ids as the first run."""
    _, _, reference, _ = finished_sweep
    results = tmp_path / "results" / "grid"
    shutil.copytree(reference, results)
    shutil.rmtree(results / "ray")
    spec = write_spec(tmp_path, SPEC)
    meta, trials, measurements = load(results)
    study = sorted(meta["studies"])[-1]
    ours = trials[trials.study == study].sort_values("trial_id")
    assert len(ours) >= 5  # a bracket: coarse stage and refinement
    kept, dropped = ours.trial_id[:2].tolist(), ours.trial_id[2:].tolist()
    trials[~trials.trial_id.isin(dropped)].to_parquet(results / "trials.parquet", index=False)
    measurements[~measurements.trial_id.isin(dropped)].to_parquet(results / "measurements.parquet", index=False)
    meta["status"] = "interrupted"
    (results / "sweep.json").write_text(json.dumps(meta))

    proc = here(["sweep", spec, "--results", tmp_path / "results", "--no-report"])
    assert proc.returncode == 0, why(proc)
    assert f"{len(trials) - len(dropped)} already finished" in proc.stdout, proc.stdout
    after_meta, after, _ = load(results)
    assert after_meta["status"] == "finished" and after_meta["studies"][study]["trials"] == len(ours)
    rerun = after[after.study == study]
    assert sorted(rerun.trial_id) == sorted(ours.trial_id)  # the same LRs on the same seeds
    assert after_meta["studies"][study]["best_peak_lr"] == meta["studies"][study]["best_peak_lr"]
    old = ours.set_index("trial_id").loc[kept]
    assert list(rerun.set_index("trial_id").loc[kept, "train_seconds"]) == list(old.train_seconds)
    saved = optuna.load_study(study_name=study, storage=after_meta["studies"][study]["storage"])
    assert len(saved.trials) == len(ours)  # one Optuna trial per LR, the kept ones told again


# slow (~13 s, Intel 2-core VM): real Ray sweep of a 6-trial TPE study with ASHA over 9 epochs
@pytest.mark.slow
def test_tuned_study_with_asha_counts_time_in_examples(tmp_path, shared_ray):
    """ASHA stops the worse trials of a tuned study at rungs measured in examples seen; stopped
    trials are recorded as incomplete (stopped by ASHA), the rest complete."""
    spec = write_spec(tmp_path, {
        "name": "asha", "workload": "mnist1d_mlp", "workload_options": {"n_train": 4000, "n_test": 500},
        "budget": {"epochs": 9}, "eval": {"per_epoch": 1}, "noise_scale": False,
        "axes": {"batch_sizes": [256], "methods": ["tuned"]},
        "tuning": {"search": "tpe", "trials": 6, "lr_range_factor": 8,
                   "asha": {"grace_epochs": 1, "reduction_factor": 3}}})
    proc = here(["sweep", spec, "--results", tmp_path / "results", "--no-report", "--quiet"])
    assert proc.returncode == 0, why(proc)
    _, trials, measurements = load(tmp_path / "results" / "asha")
    assert len(trials) == 6 and set(trials.status) <= {"complete", "incomplete"}
    stopped = trials[trials.status == "incomplete"]
    assert len(stopped) >= 1
    for row in stopped.itertuples():
        assert json.loads(row.extra)["stopped_by"] == "asha"
        # stopped at a rung, 1 or 3 epochs of the 3600 examples trained on (10% of 4000 held out for
        # the tuned arm's validation split): the first evaluation past it (steps of 256)
        last = measurements[measurements.trial_id == row.trial_id].examples.max()
        assert any(0 <= last - rung < 256 for rung in (3600, 10800)), last


def test_tuned_studies_start_from_the_rules_predictions():
    """Start points: the none, sqrt and linear LRs, deduplicated, at most `trials`, with the
    warmup clipped into the searched range when warmup is searched too."""
    from harness.spec import load_spec
    from harness.sweep import plan

    def studies(batch, **tuning):
        spec = load_spec(data={**SPEC, "axes": {"batch_sizes": [batch], "methods": ["tuned"]},
                               "tuning": {"search": "tpe", "trials": 4, **tuning}}, kind="sweep")
        return plan(spec, 20000).studies

    (s,) = studies(1024)
    assert [p["peak_lr"] for p in s.start_points] == pytest.approx([0.4, 0.8, 1.6])
    assert s.lr_range == pytest.approx((0.2, 3.2))
    (s,) = studies(256)  # k = 1: the three rules agree
    assert s.start_points == [{"peak_lr": pytest.approx(0.4)}]
    (s,) = studies(1024, trials=2)
    assert len(s.start_points) == 2
    (s,) = studies(32768, search_warmup=True, warmup_epochs_range=[0.01, 1.0])
    assert [p["warmup_epochs"] for p in s.start_points] == [1.0] * 3  # legw: 0.02 * 128 = 2.56, clipped
    (s,) = studies(1024, start_from_rules=False)
    assert s.start_points == []


def _study_rows(study: str, entries) -> list[dict]:
    rows = []
    for i, (status, lr, extra) in enumerate(entries):
        rows.append({"trial_id": f"{study}-t{i}", "study": study, "status": status, "peak_lr": lr,
                     "final_metric": 0.5 + lr / 10 if status == "complete" else None, "extra": json.dumps(extra)})
    return rows


def test_the_searcher_issues_what_the_store_lacks_and_shares_the_slots():
    """Without Ray: a study built from the store tells its finished trials to Optuna, issues its
    unfinished one again (same id, parameters and checkpoint), skips the start points already
    tried, keeps to its budget and concurrency; grid cells and study trials share the slots."""
    from ray.tune.search import Searcher

    from harness.spec import load_spec
    from harness.sweep import plan
    from harness.sweep.search import StudyRun, SweepSearcher

    spec = load_spec(data={**SPEC, "axes": {"batch_sizes": [1024], "methods": ["tuned"]},
                           "tuning": {"search": "tpe", "trials": 5}}, kind="sweep")
    (study,) = plan(spec, 20000).studies  # start points 0.4, 0.8, 1.6
    rows = _study_rows(study.name, [("complete", 0.4, {}),
                                    ("incomplete", 1.6, {"resume_from": "/ckpt/3", "carried": {"peak_lr": 1.6}})])
    run = StudyRun(study, rows, budget=5, concurrent=2, higher_is_better=True, sampler_seed=0, warmup_range=None,
                   base_config={"study": study.name, "trial": study.trial})
    assert [t.value for t in run.optuna.trials] == [pytest.approx(0.54)] and run.left() == 4
    cells = [{"trial_id": f"cell-{i}", "trial": {}} for i in range(2)]
    searcher = SweepSearcher(cells, [run], "max")
    assert searcher.total() == 6
    first = searcher.suggest("a")  # the unfinished trial first, as it was
    assert (first["trial_id"], first["peak_lr"], first["resume_from"]) == (f"{study.name}-t1", 1.6, "/ckpt/3")
    assert searcher.suggest("b")["trial_id"] == "cell-0"  # one study trial running: the grid's turn
    second = searcher.suggest("c")  # the start point not yet tried
    assert (second["trial_id"], second["peak_lr"]) == (f"{study.name}-t2", pytest.approx(0.8))
    assert "resume_from" not in second
    assert searcher.suggest("d")["trial_id"] == "cell-1"  # the study is at its 2 concurrent trials
    assert searcher.suggest("e") is None  # nothing to give until a trial ends
    searcher.on_trial_complete("a", {"objective": 0.7})
    searcher.on_trial_complete("c", error=True)
    third, fourth = searcher.suggest("f"), searcher.suggest("g")  # TPE from here, inside the range
    assert {third["trial_id"], fourth["trial_id"]} == {f"{study.name}-t3", f"{study.name}-t4"}
    assert all(study.lr_range[0] <= c["peak_lr"] <= study.lr_range[1] for c in (third, fourth))
    assert searcher.suggest("h") == Searcher.FINISHED and run.left() == 0  # all issued: Tune waits for them
    searcher.on_trial_complete("f", {"objective": 0.6})
    searcher.on_trial_complete("g", {"objective": float("nan")})
    states = [t.state.name for t in run.optuna.trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "FAIL"]


def test_a_sweep_grows_along_its_axes_and_its_studies_and_never_shrinks():
    from harness.errors import SweepConflict
    from harness.spec import load_spec
    from harness.sweep import growth

    def resolved(**changes):
        data = json.loads(json.dumps(SPEC))
        for key, value in changes.items():
            section, field = key.split("__")
            data[section][field] = value
        return load_spec(data=data, kind="sweep").model_dump(mode="json")

    base = resolved()
    assert growth(base, base) == {}
    assert growth(base, resolved(axes__seeds=[0, 1])) == {"seeds": [1]}
    assert growth(base, resolved(tuning__trials=6)) == {}  # a bracketing search has no trial count
    tpe = resolved(tuning__search="tpe", tuning__trials=4)
    assert growth(tpe, resolved(tuning__search="tpe", tuning__trials=6)) == {"tuning.trials": 2}
    assert growth(base, resolved(tuning__concurrent_trials=4)) == {}  # changes no trial already run
    top = json.loads(json.dumps(base))
    for key, value in (("retries", 3), ("max_concurrent", 1)):  # how it runs, not what
        assert growth(base, {**top, key: value}) == {}, key
    with pytest.raises(SweepConflict, match=r"changed: tuning\.search"):
        growth(base, tpe)
    for changed, words in ((resolved(tuning__search="tpe", tuning__trials=3), "tuning.trials drops from 4 to 3"),
                           (resolved(axes__batch_sizes=[128]), "axes.batch_sizes drops [512]"),
                           (resolved(tuning__lr_range_factor=4), "changed: tuning.lr_range_factor")):
        with pytest.raises(SweepConflict, match=words.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
            growth(tpe if "trials" in words else base, changed)


# slow (~11 s, Intel 2-core VM): real Ray sweep: a pilot, then 4 trials run to the target, then a refused spec
@pytest.mark.slow
def test_steps_to_result_sweep_pilots_budgets_stops_at_the_target_and_refuses_an_infeasible_budget(tmp_path, shared_ray):
    """The protocol end to end on the teacher: the pilot's estimates and the budget table in
    sweep.json, trials stopping at the target within their own step budgets, evaluations dense
    enough to resolve the steps to 5%; then a fixed-epoch budget too small for the largest batch
    is refused before anything is written."""
    spec = {"name": "str", "workload": "teacher_regression",
            "workload_options": {"dim": 16, "condition": 10, "noise_std": 1.0, "n_train": 2**16},
            "recipe": {"peak_lr": 0.1}, "target": {"metric": "excess_risk", "value": 0.02},
            "axes": {"batch_sizes": [256, 4096], "methods": ["sqrt", "none"]},
            "protocol": {"kind": "steps_to_result"}}
    proc = here(["sweep", write_spec(tmp_path, spec), "--results", tmp_path / "results", "--no-report"])
    assert proc.returncode == 0, why(proc)
    assert "S_min" in proc.stdout and "measurable" in proc.stdout
    meta, trials, measurements = load(tmp_path / "results" / "str")
    pr = meta["protocol"]
    assert pr["kind"] == "steps_to_result" and pr["checked"] and pr["estimates"]["sgd"]["source"] == "pilot"
    budgets = {r["batch_size"]: r for r in pr["budgets"]}
    for row in trials.itertuples():
        b = budgets[row.batch_size]
        assert row.total_steps == b["budget_steps"] == b["steps_needed"]
        if row.target_reached:
            assert row.steps == row.steps_to_target <= b["budget_steps"]  # stopped there
            assert (b["eval_every_steps"] - 1) / row.steps_to_target <= 0.05  # at most k - 1 steps late
    sqrt = trials[trials.method == "sqrt"]
    assert sqrt.target_reached.all()
    too_small = write_spec(tmp_path, {**spec, "name": "fixed", "budget": {"epochs": 0.05},
                                      "protocol": {"kind": "fixed_epochs"}}, "fixed.yaml")
    proc = here(["sweep", too_small, "--results", tmp_path / "results", "--quiet"])
    assert proc.returncode == 2, why(proc)
    line = proc.stderr.strip()
    assert "\n" not in line and "batch size 4096 needs" in line and "epochs" in line, line
    assert not (tmp_path / "results" / "fixed").exists()


def test_a_trial_checkpoints_at_its_first_evaluation_then_every_checkpoint_seconds(monkeypatch):
    """Without Ray: the trainable reports every evaluation but saves the trial's state only at the
    first and then every BATCHSCALE_CHECKPOINT_SECONDS (a checkpoint per evaluation made short
    trials' wall time a multiple of their training)."""
    from ray import tune

    from harness.spec import load_spec
    from harness.sweep import plan
    from harness.sweep.trainable import tune_trial

    reports = []
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(checkpoint is not None))
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    spec = load_spec(data={**SPEC, "budget": {"epochs": 2}, "eval": {"per_epoch": 4},
                           "axes": {"batch_sizes": [512], "methods": ["legw"]}}, kind="sweep")
    (fields,) = plan(spec, 20000).grid.values()
    monkeypatch.setenv("BATCHSCALE_CHECKPOINT_SECONDS", "3600")
    tune_trial({"trial_id": "t", "trial": fields})
    assert len(reports) == 8 + 1 and reports[:-1] == [True] + [False] * 7 and reports[-1] is False
    reports.clear()
    monkeypatch.setenv("BATCHSCALE_CHECKPOINT_SECONDS", "0")
    tune_trial({"trial_id": "t", "trial": fields})
    assert reports == [True] * 8 + [False]  # every evaluation, and the final report


# slow (~22 s, Intel 2-core VM): real Ray sweep of 4 plugin-rule trials and its report, then a 2nd report run
@pytest.mark.slow
def test_a_plugin_lr_rule_runs_in_a_sweep_and_its_report_and_a_report_without_it_keeps_the_old_one(
        tmp_path, ray_tmp, shared_ray):
    """LR and warmup rules from a user's module (tests/plugins.py: pow75, half), named as
    <lr>+<warmup>: resolved by the sweep's workers, read by its report; a report run without the
    module is one line that says where the rule comes from, and the report already there stays whole."""
    spec = write_spec(tmp_path, {
        "name": "rules", "workload": "teacher_regression",
        "workload_options": {"dim": 8, "condition": 1, "noise_std": 1.0, "n_train": 8192},
        "recipe": {"peak_lr": 0.1}, "budget": {"epochs": 1}, "noise_scale": False,
        "axes": {"batch_sizes": [256, 1024], "methods": ["pow75+legw", "sqrt+half"]}})
    proc = here(["sweep", spec, "--results", tmp_path / "results", "--quiet"], PLUGINS)
    assert proc.returncode == 0, why(proc)
    results = tmp_path / "results" / "rules"
    meta, trials, _ = load(results)
    at = trials.set_index(["method", "batch_size"])
    base = meta["workload"]["base_recipes"]["sgd"]
    assert at.loc[("pow75+legw", 1024), "peak_lr"] == pytest.approx(0.1 * 4 ** 0.75)
    assert at.loc[("sqrt+half", 1024), "peak_lr"] == pytest.approx(0.1 * 2)
    assert at.loc[("sqrt+half", 1024), "warmup_epochs"] == pytest.approx(0.5 * base["warmup_epochs"] * 4)
    assert set(trials.status) == {"complete"}
    aggregate = pd.read_csv(results / "report" / "tables" / "aggregate.csv")
    assert set(aggregate.method) == {"pow75+legw", "sqrt+half"}
    before = sorted(p.relative_to(results) for p in (results / "report").rglob("*"))

    # a new process: this one imported tests.plugins when the suite was collected
    proc = cli(["report", str(results)], ray_tmp, {"BATCHSCALE_WORKLOAD_MODULES": ""})
    assert proc.returncode == 2, why(proc)
    line = proc.stderr.strip()
    assert "\n" not in line and "'pow75+legw'" in line and "BATCHSCALE_WORKLOAD_MODULES" in line, line
    assert sorted(p.relative_to(results) for p in (results / "report").rglob("*")) == before
    assert not list(results.glob(".report.*"))  # no half-written report left beside it


# slow (~25 s, Intel 2-core VM): a Ray declared with 4 CPUs starts 4 trial actors here, and the barrier holds
# them until all 4 have started (the proof that 4 ran at once, without timing luck)
@pytest.mark.slow
def test_trials_share_gpus_on_a_ray_with_declared_gpus(tmp_path, ray_tmp):
    """``resources.gpus: 0.5`` on an embedded Ray declared with 2 GPUs (BATCHSCALE_RAY_GPUS; this
    machine has none): plan says 2 trials share each GPU (and 4 at 0.25); the sweep runs 4 trials 4
    at a time, 2 on each GPU (the share Ray assigns shows in each trial's CUDA_VISIBLE_DEVICES), each
    on the CPU since torch sees no device; without declared GPUs the sweep refuses in one line (plan,
    which may be made for a cluster, says so)."""
    barrier = tmp_path / "barrier"  # every trial waits until all 4 have started: 4 at once, or none finishes
    barrier.mkdir()
    fields = {"name": "gpus", "workload": "barrier_regression",
              "workload_options": {"dim": 8, "n_train": 4096, "barrier_dir": str(barrier), "parties": 4},
              "recipe": {"peak_lr": 0.1}, "budget": {"examples": 256 * 300}, "eval": {"per_epoch": 1},
              "noise_scale": False, "axes": {"batch_sizes": [256], "methods": ["none"], "seeds": list(range(4))},
              "resources": {"cpus": 1, "gpus": 0.5}}
    spec = write_spec(tmp_path, fields)
    quarter = write_spec(tmp_path, {**fields, "resources": {"cpus": 1, "gpus": 0.25}}, "quarter.yaml")
    declared = {"BATCHSCALE_RAY_GPUS": "2", "BATCHSCALE_RAY_CPUS": "4", **PLUGINS}
    planned = here(["plan", spec, "--probe-seconds", "0.1"], declared)
    assert planned.returncode == 0, why(planned)
    assert ("GPUs: 2 trial(s) share each GPU (resources.gpus 0.5); 2 GPU(s) and 4 CPU(s) here, so 4 at once"
            in planned.stdout)
    planned = here(["plan", quarter, "--probe-seconds", "0.1"], {**declared, "BATCHSCALE_RAY_CPUS": "8"})
    assert "GPUs: 4 trial(s) share each GPU (resources.gpus 0.25); 2 GPU(s) and 8 CPU(s) here, so 8 at once" in planned.stdout
    local = here(["plan", spec, "--probe-seconds", "0.1"], PLUGINS)  # a plan for a cluster is fine
    assert local.returncode == 0 and "no GPU here for torch or Ray: a sweep on this machine is refused" in local.stdout
    refused = here(["sweep", spec, "--results", tmp_path / "none", "--quiet"], PLUGINS)
    assert refused.returncode == 1 and "resources.gpus 0.5: this machine has 0 GPU(s)" in refused.stderr, why(refused)
    assert len(refused.stderr.strip().splitlines()) == 1
    proc = cli(["sweep", str(spec), "--results", str(tmp_path / "r"), "--quiet", "--no-report"], ray_tmp, declared)
    assert proc.returncode == 0, why(proc)
    meta, trials, _ = load(tmp_path / "r" / "gpus")
    assert len(list(barrier.iterdir())) == 4 and set(trials.status) == {"complete"}
    assert meta["sessions"][-1]["slots"] == 4 and len(trials) == 4 and set(trials.device) == {"cpu"}
    visible = trials.extra.map(lambda e: json.loads(e).get("cuda_visible_devices")) if "extra" in trials else \
        trials.cuda_visible_devices
    assert sorted(visible.value_counts().to_dict().items()) == [("0", 2), ("1", 2)], visible.tolist()
