"""``batchscale train``: one trial in this process, with a progress bar, written to a folder."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path


def train(spec_path: str, overrides: list[str], out: str | None = None, quiet: bool = False) -> int:
    """``batchscale train``: one trial in this process (data-parallel: its workers on an embedded Ray)."""
    from harness.spec import load_spec
    from harness.sweep.progress import target_words
    from harness.sweep.protocol import with_b_noise
    from harness.trial.loop import Trial

    spec = with_b_noise(load_spec(spec_path, overrides, kind="trial"))
    if spec.threads is None:  # the rule of a sweep's trials (resources.cpus, default 1): comparable timings
        spec = spec.model_copy(update={"threads": 1})
    workers = spec.data_parallel.processes
    trial = Trial(spec, world=(0, workers))
    r = trial.recipe
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(out or f"results/train/{spec.workload}-{r.method}-b{r.batch_size}-s{spec.seed}-{stamp}")
    print(f"{spec.workload}: {r.method} at B={r.batch_size} (k={r.scale:g}): peak LR {r.peak_lr:.4g}, warmup "
          f"{r.warmup_steps} steps ({r.warmup_epochs:g} epochs), {r.total_steps} steps, micro-batch "
          f"{trial.micro_batch_size}, {trial.device}")
    print(f"{spec.threads} thread(s) (as one trial of a sweep with resources.cpus: {spec.threads}; --set threads=N), "
          f"micro-batches of at most {trial.micro_batch_cap} ({trial.micro_batch_cap_source})")
    for w in r.warnings:
        print(f"warning: {w}")
    if trial.noise_note:
        print(f"note: {trial.noise_note}")
    dp, aug = spec.data_parallel, spec.augment
    if trial.workers is not None:
        print(f"{dp.algorithm}: {dp.workers} {'simulated workers in this process' if dp.simulate else 'Ray Train workers'}"
              f" on {'a ring' if dp.topology == 'ring' else 'an exponential graph'}, "
              f"{trial.local_batch // (dp.workers if dp.simulate else 1)}"
              f" examples each per step" + ("" if dp.shards == "shared" else f", each from its own shard ({dp.shards})"))
    if aug.kind != "none":
        print(f"augment: {aug.kind}, eps {aug.eps:g} ({aug.norm}), losses combined by {aug.combine}")
    result = _train_data_parallel(spec, trial) if workers > 1 else _train_here(trial, quiet)
    _write_train(out, spec, result)

    s, metric = result.summary, trial.workload.metric
    best = f"{s['best_metric']:.4f}" if s["best_metric"] is not None else "n/a"
    print(f"{result.status}: {s['steps']} steps, {s['train_seconds']:.1f} s training "
          f"({s['throughput']:.0f} examples/s), best {metric} {best}"
          + (f", diverged at step {s['diverged_step']}" if s["diverged_step"] else "")
          + (f"; {said}" if (said := target_words(s, metric, spec.target.value if spec.target else None)) else "")
          + (f"; noise scale B_simple {s['noise_scale']:.0f}" if s.get("noise_scale") else ""))
    print(f"results in {out}")
    return 0


def _train_here(trial, quiet: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    metric = trial.workload.metric
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=quiet) as bar:
        task = bar.add_task("train", total=trial.recipe.total_steps, info="")
        last = [0.0]

        def on_step(t):
            now = time.monotonic()
            if now - last[0] > 0.2:
                bar.update(task, completed=t.step)
                last[0] = now

        def on_eval(t, row):
            bar.update(task, completed=t.step, info=f"epoch {row['epoch']:.2f} loss {row['train_loss']:.4f} "
                                                     f"{metric} {row['metric']:.4f}")

        return trial.run(on_eval=on_eval, on_step=on_step)


def _train_data_parallel(spec, trial):
    """A data-parallel trial: its workers through Ray Train on an embedded Ray."""
    import tempfile

    from harness.trial.distributed import run_standalone
    from harness.trial.loop import TrialResult

    workers, gpu = spec.data_parallel.workers, trial.device.type == "cuda"
    print(f"data-parallel: {workers} workers (Ray Train, {'nccl' if gpu else 'gloo'}), {trial.local_batch} examples "
          f"each per step")
    with tempfile.TemporaryDirectory(prefix="batchscale-train-") as storage:
        res = run_standalone(spec.model_dump(mode="json"), workers, spec.threads or 1, 1.0 if gpu else 0.0, storage)
    return TrialResult(res["summary"]["status"], trial.recipe, res["measurements"], res["summary"])


def _write_train(out: Path, spec, result) -> None:
    from harness.results.store import write_json_atomic, write_table

    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "measurements.parquet", result.measurements)
    write_json_atomic(out / "recipe.json", result.recipe.model_dump(mode="json"))
    write_json_atomic(out / "summary.json", result.summary)
    write_json_atomic(out / "spec.json", spec.model_dump(mode="json"))
