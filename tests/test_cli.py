"""The commands as a user types them (in-process)."""

import io
import math
import json

import pandas as pd

from harness.cli import main


def test_schedule_prints_recipe_comments_then_every_step_as_csv(capsys, tmp_path):
    plot = tmp_path / "lr.png"
    assert main(["schedule", "experiments/paper/legw_imagenet_recipe.yaml", "--batch-size", "32768",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#") and "391" in out.splitlines()[1]
    rows = pd.read_csv(io.StringIO(out), comment="#")
    assert list(rows.columns) == ["method", "batch_size", "step", "epoch", "lr"]
    assert len(rows) == 3519 and rows.step.tolist() == list(range(3519))
    assert rows.lr.max() == rows.lr[390] and abs(rows.lr.max() - 32.0) < 1e-9  # peak 2^5 at warmup's end
    assert plot.stat().st_size > 1000


def test_train_writes_measurements_recipe_and_summary(data_dir, tmp_path, capsys):
    spec = tmp_path / "t.yaml"
    spec.write_text(f"workload: fmnist_lstm\nbatch_size: 64\nmethod: legw\nbudget: {{epochs: 1}}\nthreads: 1\n"
                    f"data_dir: {data_dir}\ntarget: {{metric: accuracy, value: 0.3}}\n")
    out_dir = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(out_dir), "--quiet", "--set", "seed=3"]) == 0
    out = capsys.readouterr().out
    assert f"results in {out_dir}" in out and "legw at B=64" in out
    m = pd.read_parquet(out_dir / "measurements.parquet")
    assert len(m) == 2 and m.step.iloc[-1] == 8 and m.noise_scale.notna().all()
    recipe = json.loads((out_dir / "recipe.json").read_text())
    summary = json.loads((out_dir / "summary.json").read_text())
    assert recipe["batch_size"] == 64 and recipe["method"] == "legw" and summary["steps"] == recipe["total_steps"]
    assert json.loads((out_dir / "spec.json").read_text())["seed"] == 3
    said = (f"target reached at step {summary['steps_to_target']}" if summary["target_reached"]
            else f"target missed (best accuracy {summary['best_metric']:.4f} < 0.3)")
    assert said in out, out


def test_sweep_lines_say_whether_the_target_was_reached_and_a_log_gets_an_eta():
    from rich.console import Console

    from harness.sweep.progress import SweepProgress

    buf = io.StringIO()
    progress = SweepProgress("s", "accuracy", Console(file=buf, force_terminal=False, width=200), target=0.85)
    progress.start(20, set())
    progress.finished("a", "complete", {"final_metric": 0.77, "best_metric": 0.7746, "higher_is_better": True,
                                        "target_reached": False, "steps": 147, "train_seconds": 1.0})
    progress.finished("b", "complete", {"final_metric": 0.86, "best_metric": 0.86, "target_reached": True,
                                        "steps_to_target": 91, "steps": 91, "train_seconds": 1.0})
    progress.finished("c", "diverged", {"steps": 3, "train_seconds": 0.1})
    lines = buf.getvalue().splitlines()
    assert lines[1].endswith("; target missed (best accuracy 0.7746 < 0.85)"), lines
    assert lines[2].endswith("; target reached at step 91") and "target" not in lines[-1].split("diverged")[-1]
    assert lines[3] == "sweep s: 2/20 finished, under a minute left (at most 20 trials)", lines


def test_list_names_every_workload_method_and_optimizer(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("fmnist_lstm", "mnist1d_mlp", "kjv_lstm_lm", "legw", "goyal", "adascale", "autowu", "lars", "lamb"):
        assert name in out
    sweeps, trials = out.split("example sweeps")[1].split("example trials")
    assert "fmnist_lstm_legw_4k" in trials and "fmnist_lstm_legw_4k" not in sweeps and "default" in sweeps


def test_report_of_a_missing_folder_is_one_line(capsys, tmp_path):
    assert main(["report", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sweep.json missing" in err


def test_plan_prints_counts_budgets_recipes_and_a_time_estimate_then_refuses_an_infeasible_budget(capsys, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: p\nworkload: teacher_regression\n"
                    "workload_options: {dim: 16, condition: 10, noise_std: 1.0, n_train: 65536}\n"
                    "recipe: {peak_lr: 0.1}\ntarget: {metric: excess_risk, value: 0.02}\n"
                    "axes: {batch_sizes: [256, 8192], methods: [goyal, legw, tuned], seeds: [0, 1]}\n"
                    "protocol: {kind: steps_to_result}\n")
    assert main(["plan", str(spec), "--probe-seconds", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "protocol steps_to_result" in out and "Shallue et al. 2018" in out
    # the bracketing tuned arm: coarse stage + 2 refinement rounds, x 2 seeds (256: 3 LRs; 8192: 6 LRs)
    assert ("trials: about 44 = goyal 4, legw 4, tuned 36 (about: 2 bracketing studies, every LR x 2 seed(s); "
            "at least 20, at most 68") in out
    assert "S_min" in out and "B_crit" in out and out.count("measurable") >= 2
    assert "realised" in out and "examples/s" in out and "estimated wall time" in out
    assert main(["plan", str(spec), "--probe-seconds", "0.2", "--set", "protocol.kind=fixed_epochs",
                 "--set", "budget.epochs=0.05", "--set", "protocol.pilot_epochs=1"]) == 2
    captured = capsys.readouterr()
    assert "NOT MEASURABLE" in captured.out
    err = captured.err.strip()
    assert err.count("\n") == 0 and "batch size 8192 needs" in err and "budget.epochs" in err


def test_check_budgets_refuses_a_sweep_that_ran_under_its_pilot(capsys, tmp_path):
    from harness.results.store import ResultsStore

    store = ResultsStore(tmp_path / "s")
    store.root.mkdir()
    store.write_meta({"name": "s", "protocol": {"kind": "fixed_epochs", "checked": True, "budgets": []},
                      "spec_resolved": {}, "workload": {}})
    assert main(["report", str(store.root), "--check-budgets"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already" in err


def test_shipped_specs_and_studies_are_found_from_any_folder(tmp_path):
    """From a folder that is not the checkout: through the installed `batchscale` script, `list`
    names the paper studies and examples; and (in this process, from that folder) `reproduce NAME`
    and `schedule NAME` find them, and an unknown name lists what exists."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import here

    script = str(Path(sys.executable).with_name("batchscale"))
    listed = subprocess.run([script, "list"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})

    def run(*args):
        return here(args, cwd=tmp_path)

    assert listed.returncode == 0 and "mnist_lstm" in listed.stdout and "default" in listed.stdout
    assert "legw_imagenet_recipe" not in listed.stdout.split("paper studies")[1].split("example sweeps")[0]
    sched = run("schedule", "default", "--recipe-only")
    assert sched.returncode == 0 and "warmup_ep" in sched.stdout, sched.stderr
    planned = run("plan", "default", "--probe-seconds", "0.2")
    assert planned.returncode == 0 and "trials: about " in planned.stdout and "goyal 24, linear-legw 24, linear+none 24, sqrt 24, legw 24, sqrt+none 24, none 24, tuned " in planned.stdout and "estimated wall time" in planned.stdout, \
        planned.stderr
    # the study is found and validated (a bad override names its key), nothing runs
    bad = run("reproduce", "mnist_lstm", "--set", "budget.epochs=-1", "--results", str(tmp_path / "r"))
    assert bad.returncode == 2 and "key 'budget.epochs'" in bad.stderr, bad.stderr
    unknown = run("reproduce", "mnist_lstn")
    assert unknown.returncode == 1 and "no study 'mnist_lstn'" in unknown.stderr and "mnist_lstm" in unknown.stderr
    assert not (tmp_path / "r").exists()


def test_every_shipped_spec_loads_and_checks():
    """Every YAML under experiments/ is a valid spec (the cluster studies too, without their data)."""
    from pathlib import Path

    from harness.spec import load_spec

    paths = sorted((Path(__file__).resolve().parents[1] / "experiments").rglob("*.yaml"))
    assert len(paths) >= 15
    for path in paths:
        load_spec(str(path))


TINY_SWEEP = ("name: lk\nworkload: teacher_regression\nworkload_options: {dim: 8, n_train: 4096}\n"
              "recipe: {peak_lr: 0.1}\nbudget: {epochs: 1}\naxes: {batch_sizes: [256], methods: [none]}\n")


def test_a_second_sweep_of_the_same_folder_is_refused_naming_the_process_that_holds_it(capsys, tmp_path):
    """Two sweeps of one folder: the second (here in-process, before any Ray) refuses in one line
    while another process holds the folder's lock, and runs once that process has ended."""
    import subprocess
    import sys

    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SWEEP)
    results = tmp_path / "results"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from harness.sweep.lock import sweep_lock\n"
         f"with sweep_lock(Path({str(results / 'lk')!r})):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["sweep", str(spec), "--results", str(results), "--quiet"]) == 5
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"in use by process {holder.pid} (batchscale sweep of " in err, err
        assert not (results / "lk").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()


def test_folder_problems_are_one_line_before_anything_runs(capsys, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SWEEP)
    afile = tmp_path / "afile"
    afile.write_text("")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "lk").write_text("not a folder")
    for args, words in ((["--results", str(afile)], f"{afile} is a file, not a folder"),
                        (["--results", str(tmp_path / "results")], f"{tmp_path / 'results' / 'lk'} is a file"),
                        (["--results", str(tmp_path / "r2"), "--name", "../escaped"], "--name '../escaped' is not allowed")):
        assert main(["sweep", str(spec), "--quiet", *args]) == 5, args
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and words in err, err
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "r2").exists()


def test_a_batch_larger_than_the_training_set_is_refused_before_any_pilot(capsys, tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SWEEP)
    for command in (["plan", str(spec)], ["sweep", str(spec), "--results", str(tmp_path / "results"), "--quiet"]):
        assert main([*command, "--set", "axes.batch_sizes=[256, 8192]"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "value 8192 is not allowed; allowed: at most the 4,096 training examples" in err, err
    assert not (tmp_path / "results" / "lk").exists()


def test_what_cannot_fit_in_a_trials_memory_is_refused_before_any_pilot(capsys, tmp_path):
    """The estimate (harness.sweep.memory): the data set, the model and one micro-batch's activations,
    measured from the tensors autograd saves, against the memory a trial has; refused in one line
    that says what would fit, by plan and by sweep, before anything runs or is written."""
    from harness.sweep.memory import GB, estimate
    from harness.workloads import get_workload

    mlp = estimate(get_workload("teacher_mlp", {"n_train": 4096, "n_eval": 512}))
    # per example: its 17 floats (16 inputs, the label) and, for backward, each hidden layer's output
    # (2 x 32 floats; at most their pre-activations too) and the loss's terms
    hidden_floats = (mlp.per_example - 4 * 17) / 1.2 / 4
    assert 64 <= hidden_floats <= 132, mlp
    assert mlp.data == 4 * (4096 * 17 + 2 * 512 * 17) and mlp.model == 4 * 4 * 1633
    spec = tmp_path / "s.yaml"
    spec.write_text(TINY_SWEEP)
    est = estimate(get_workload("teacher_regression", {"dim": 8, "n_train": 4096}))
    fixed = est.data + est.model + 8 * 4096
    room = fixed + est.per_example * 2048  # half of a 4096-example micro-batch fits
    for command in (["plan", str(spec)], ["sweep", str(spec), "--results", str(tmp_path / "results"), "--quiet"]):
        over = ["--set", "axes.batch_sizes=[4096]", "--set", "micro_batch_size=4096"]
        assert main([*command, *over, "--set", f"resources.memory_gb={room / GB!r}"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "key 'micro_batch_size': value 4096 is not allowed; allowed: what fits in the " in err
        assert "a trial has (resources.memory_gb): at B=4096 a trial needs" in err, err
        assert "a micro-batch of at most 2048 examples would fit" in err or "at most 2047 examples" in err, err
        assert main([*command, *over, "--set", f"resources.memory_gb={est.data / 2 / GB!r}"]) == 2
        assert "key 'resources.memory_gb'" in (err := capsys.readouterr().err) and "no micro-batch makes that fit" in err
    assert not (tmp_path / "results" / "lk").exists()


def test_schedule_of_a_steps_to_result_sweep_shows_the_step_budgets_the_sweep_runs(capsys, tmp_path):
    """Each batch size's total steps are its protocol budget, 2 x S_min (1 + B_crit/B) (the plan's
    table), not the spec's epochs; the fixed warmup is the same epochs at every batch size."""
    spec = tmp_path / "s.yaml"
    spec.write_text("name: str\nworkload: teacher_regression\nworkload_options: {dim: 8, n_train: 65536}\n"
                    "recipe: {peak_lr: 0.1}\ntarget: {metric: excess_risk, value: 0.02}\n"
                    "axes: {batch_sizes: [256, 4096], methods: [goyal, legw]}\n"
                    "protocol: {kind: steps_to_result, s_min: 30, b_crit: 1000}\n")
    assert main(["schedule", str(spec), "--recipe-only"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:] if line.strip()]
    totals = {(r[0], int(r[1])): int(r[8]) for r in rows}
    budget = {b: math.ceil(2 * 30 * (1 + 1000 / b)) for b in (256, 4096)}  # 2 x S(B), margin 2
    assert totals == {(m, b): budget[b] for m in ("goyal", "legw") for b in (256, 4096)}, totals
    goyal = [r for r in rows if r[0] == "goyal"]
    assert goyal[0][6] == goyal[1][6]  # fixed warmup: the same epochs at both batch sizes


def test_sighup_and_sigterm_end_a_sweep_as_ctrl_c_does():
    """In the sweep's driver SIGHUP (the terminal closed) and SIGTERM raise KeyboardInterrupt, the
    path that records the session as interrupted with its end time; the handlers are put back."""
    import os
    import signal

    import pytest

    from harness.sweep.lock import interrupts_as_ctrl_c

    before = signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)
    for sig in (signal.SIGHUP, signal.SIGTERM):
        with pytest.raises(KeyboardInterrupt, match=sig.name):
            with interrupts_as_ctrl_c():
                os.kill(os.getpid(), sig)
    assert (signal.getsignal(signal.SIGHUP), signal.getsignal(signal.SIGTERM)) == before


def test_a_sweep_and_its_pilot_say_how_long_they_will_take_before_they_start(monkeypatch):
    """The estimate before the pilot (its whole budget at the probed pace) and before the trials
    (harness.sweep.eta); past an hour it says that stopping now loses nothing."""
    from harness.sweep import protocol
    from harness.spec import load_spec
    from harness.sweep import eta
    from harness.sweep.plan import plan

    spec = load_spec(data={"name": "long", "workload": "teacher_regression",
                           "workload_options": {"dim": 8, "n_train": 4096}, "recipe": {"peak_lr": 0.1},
                           "target": {"metric": "excess_risk", "value": 0.02},
                           "axes": {"batch_sizes": [256, 1024], "methods": ["goyal", "legw"], "seeds": [0, 1]},
                           "protocol": {"kind": "steps_to_result", "s_min": 30, "b_crit": 1000}}, kind="sweep")
    budgets = protocol.budget_table(spec, 4096, protocol.estimates(spec, 4096))
    the_plan = plan(spec, 4096, {}, budgets)
    monkeypatch.setattr(eta, "local_slots", lambda spec: 2)
    monkeypatch.setattr(eta, "_probe", lambda spec, batches: {b: 1000.0 for b in batches})  # 1,000 examples/s
    # 2 x 30 (1 + 1000/B) steps of B examples at 1,000/s: 4 trials per batch size, 2 at a time, + 1 s each
    full = sum(4 * (math.ceil(2 * 30 * (1 + 1000 / b)) * b / 1000 + 1) for b in (256, 1024)) / 2
    line = eta.sweep_line(spec, the_plan, budgets, "long")
    assert line.startswith("estimated: ") and f" - {full / 60:.1f} min on 2 slot(s)" in line, (line, full)
    assert "more than an hour" not in line
    monkeypatch.setattr(eta, "_probe", lambda spec, batches: {b: 10.0 for b in batches})
    slow = eta.sweep_line(spec, the_plan, budgets, "long")
    assert " h on 2 slot(s)" in slow and "stopping now (Ctrl-C) loses nothing, and the same command resumes " \
           "results/long later" in slow, slow
    pilot = eta.pilot_line(spec.model_copy(update={"protocol": spec.protocol.model_copy(update={"pilot_epochs": 3.0})}),
                           4096)
    assert pilot == " (at most ~20.5 min: 3 epoch(s) of 4,096 examples at ~10/s; it stops at the target)", pilot


def test_the_pace_probe_counts_the_examples_it_ran_not_the_batch_it_stands_for(monkeypatch, data_dir):
    """Above 8 micro-batches the probe runs a trial of 8 micro-batches (they run one after another:
    B's pace is theirs); its examples per second are that trial's. A fake clock (1 s per step) makes
    the arithmetic exact: counting B per step had the LSTM study's 8K look 16x faster than it trains."""
    from harness.spec import load_spec
    from harness.sweep import eta
    from harness.trial.loop import Trial

    spec = load_spec(data={"name": "pace", "workload": "fmnist_lstm", "data_dir": str(data_dir), "micro_batch_cap": 16,
                           "axes": {"batch_sizes": [64, 1024], "methods": ["legw"], "seeds": [0]},
                           "noise_scale": False}, kind="sweep")
    clock = {"t": 0.0}
    monkeypatch.setattr(eta.time, "perf_counter", lambda: clock["t"])
    ran = []

    def step(self, measure=True):
        clock["t"] += 1.0
        ran.append(self.recipe.batch_size)
        return 0.0

    monkeypatch.setattr(Trial, "_train_step", step)
    pace = eta.throughput_probe(spec, "momentum", [64, 1024], seconds=5.0)
    assert set(ran) == {64, 128}  # 64 ran itself; 1024 ran as 8 micro-batches of 16
    assert pace == {64: 64.0, 1024: 128.0}, pace
    ran.clear()  # a step longer than the probe's time is its own measurement: the warm-up and one timed step
    assert eta.throughput_probe(spec, "momentum", [64], seconds=0.5) == {64: 64.0} and ran == [64, 64]


def test_plan_says_how_gpu_shares_pack_and_which_of_cpus_or_gpus_binds(monkeypatch):
    """A quarter of a GPU per trial on 1 GPU and 16 CPUs: 4 at once; at 1 CPU per trial 3 of the 4
    CPUs of each share sit idle, at 8 per trial the CPUs bind; without GPUs a sweep here is refused."""
    from harness.spec import load_spec
    from harness.sweep.console import gpu_line

    def line(cpus: int, gpus: float = 0.25) -> str:
        return gpu_line(load_spec(data={"name": "g", "workload": "mnist1d_mlp", "axes": {"batch_sizes": [128]},
                                        "resources": {"cpus": cpus, "gpus": gpus}}, kind="sweep"))

    monkeypatch.setenv("BATCHSCALE_RAY_GPUS", "1")
    monkeypatch.setenv("BATCHSCALE_RAY_CPUS", "16")
    assert ("4 trial(s) share each GPU (resources.gpus 0.25); 1 GPU(s) and 16 CPU(s) here, so 4 at once; a trial's "
            "share of a GPU comes with 4 CPUs here and resources.cpus 1 leaves 3 idle: --set resources.cpus=4") in line(1)
    assert "so 4 at once (on a cluster" in line(4)  # its share exactly: nothing to say
    assert ("so 2 at once: the CPUs bind (2 trials of resources.cpus 8; the GPUs have room for 4; "
            "--set resources.cpus=4 packs them)") in line(8)
    assert "each trial holds 1 GPU(s); 1 GPU(s) and 16 CPU(s) here, so 1 at once; a trial's share" in line(1, 1)
    monkeypatch.setenv("BATCHSCALE_RAY_GPUS", "0")
    assert "no GPU here for torch or Ray: a sweep on this machine is refused" in line(1)
