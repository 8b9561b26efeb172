"""Data-parallel trials: W workers' update equals one process's, in a real gloo process group and
through Ray Train (2 CPU workers)."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import socket

import pytest
import torch

from harness.spec import load_spec
from harness.trial.loop import Trial
from tests.conftest import here, tiny_trial
from tests.test_sweep import load, write_spec


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _spec(data_dir, workers: int, **over):
    fields = dict(batch_size=128, micro_batch_size=32, method="none", threads=1, optimizer="momentum",
                  data_parallel={"workers": workers}, recipe={"warmup_epochs": 0, "peak_lr": 0.5})
    return load_spec(data=tiny_trial(data_dir, **{**fields, **over}), kind="trial")


def _steps(trial: Trial, n: int) -> dict:
    before = flat_params(trial.model)
    losses = [trial._train_step() for _ in range(n)]
    return {"delta": flat_params(trial.model) - before, "losses": losses, "eval": trial.evaluate(),
            "noise": (float(trial.noise.trace_ema), float(trial.noise.g2_ema))}


def _worker(rank: int, world: int, port: int, data_dir: str, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = _steps(Trial(_spec(data_dir, world), world=(rank, world)), 3)
        queue.put((rank, {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_workers_update_equals_one_process(data_dir):
    """Three steps (momentum state included) on 2 gloo workers of 64 examples each, against one
    process taking the same 128 examples as 4 micro-batches: same parameters, losses, evaluation
    and noise-scale sums up to float rounding, and the same on both workers."""
    single = _steps(Trial(_spec(data_dir, 1)), 3)
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(data_dir), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        got = results[rank]
        delta = torch.tensor(got["delta"])
        rel = (delta - single["delta"]).norm() / single["delta"].norm()
        assert single["delta"].norm() > 0 and rel <= 1e-5, f"rank {rank}: relative error {rel:.2e}"
        assert got["losses"] == pytest.approx(single["losses"], rel=1e-5)
        assert got["eval"] == pytest.approx(single["eval"], rel=1e-5)
        assert got["noise"] == pytest.approx(single["noise"], rel=1e-4)
    assert results[0]["delta"] == results[1]["delta"], "workers must hold identical models"


def test_workers_must_divide_the_batch(data_dir):
    with pytest.raises(Exception, match=r"data_parallel.workers.*3.*allowed: a divisor of batch_size \(128\)"):
        _spec(data_dir, 3)
    with pytest.raises(Exception, match=r"micro_batch_size.*48.*batch_size / data_parallel.workers \(64\)"):
        _spec(data_dir, 2, micro_batch_size=48)


# slow (~28 s, Intel 2-core VM): two `batchscale train` runs: 1 worker, then 2 Ray Train gloo workers on real Ray
@pytest.mark.slow
@pytest.mark.ray
def test_data_parallel_trial_through_ray_train(tmp_path, data_dir, shared_ray):
    """`batchscale train` with 2 CPU workers (Ray Train TorchTrainer, gloo) gives the measurements
    of the same trial in one process, up to float rounding, and leaves Ctrl-C to this process (Ray
    Train's fit installs its own SIGINT handler and leaves it)."""
    spec = write_spec(tmp_path, tiny_trial(data_dir, batch_size=128, micro_batch_size=32, threads=1))
    ctrl_c = signal.getsignal(signal.SIGINT)
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        proc = here(["train", spec, "--quiet", "--out", out, "--set", f"data_parallel.workers={workers}"])
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        outs[workers] = json.loads((out / "summary.json").read_text())
    assert "data-parallel: 2 workers (Ray Train, gloo), 64 examples each per step" in proc.stdout
    assert signal.getsignal(signal.SIGINT) is ctrl_c
    one, two = outs[1], outs[2]
    assert two["workers"] == 2 and one["workers"] == 1
    assert two["status"] == one["status"] == "complete" and two["steps"] == one["steps"]
    assert two["final_metric"] == pytest.approx(one["final_metric"], abs=2e-3)
    assert two["noise_scale"] == pytest.approx(one["noise_scale"], rel=1e-3)


# slow (~33 s, Intel 2-core VM): real Ray sweep whose trial starts a 2-worker Ray Train (gloo) run
@pytest.mark.slow
@pytest.mark.ray
def test_sweep_of_data_parallel_trials(tmp_path, shared_ray):
    """A sweep whose trials are 2 Ray Train workers each: Tune gets their reports, the store its rows."""
    spec = write_spec(tmp_path, {
        "name": "dp", "workload": "mnist1d_mlp", "workload_options": {"n_train": 4000, "n_test": 500},
        "budget": {"epochs": 2}, "eval": {"per_epoch": 1}, "data_parallel": {"workers": 2},
        "axes": {"batch_sizes": [256], "methods": ["legw"]}})  # one trial: each costs a Ray Train start (~20 s)
    proc = here(["sweep", spec, "--results", tmp_path / "results", "--no-report", "--quiet"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _, trials, measurements = load(tmp_path / "results" / "dp")
    assert list(trials.method) == ["legw"]
    assert (trials.status == "complete").all() and (trials.workers == 2).all()
    assert (trials.micro_batch_size == 128).all() and (trials.steps == 2 * math.ceil(4000 / 256)).all()
    assert measurements.groupby("trial_id").size().to_dict() == {t: 2 for t in trials.trial_id}
    runs = tmp_path / "results" / "dp" / "ray" / "data-parallel"  # the Train runs' storage ...
    assert runs.is_dir() and not list(runs.iterdir())  # ... each run deleted once it finished


def test_data_parallel_needs_a_whole_gpu_per_worker():
    from tests.test_sweep import SPEC

    with pytest.raises(Exception, match=r"resources.gpus.*0.5.*at least 1 per worker"):
        load_spec(data={**SPEC, "data_parallel": {"workers": 2}, "resources": {"gpus": 0.5}}, kind="sweep")
