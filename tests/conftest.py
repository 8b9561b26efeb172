"""Shared fixtures: small datasets written in the real file formats, an isolated cache, one Ray."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest

from harness.data.idx import write_idx


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Generated data goes to a temporary cache, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BATCHSCALE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    # micro-batch caps from the workloads' tables, not measured: the suite's numbers must not depend
    # on this machine's timing (tests/test_trial.py measures the calibration on purpose)
    mp.setenv("BATCHSCALE_CALIBRATE", "0")
    mp.delenv("BATCHSCALE_DATA_DIR", raising=False)
    yield
    mp.undo()


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 uint8 images whose class is a bright vertical band: every row (time step) shows it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.uint8)
    x = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, :, 2 + 2 * label: 5 + 2 * label] = 230
    return x, y


def write_fashion_mnist(folder, n_train: int = 512, n_test: int = 128, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    x, y = make_images(n_train, 0)
    xt, yt = make_images(n_test, 1)
    write_idx(folder / f"train-images-idx3-ubyte{ext}", x)
    write_idx(folder / f"train-labels-idx1-ubyte{ext}", y)
    write_idx(folder / f"t10k-images-idx3-ubyte{ext}", xt)
    write_idx(folder / f"t10k-labels-idx1-ubyte{ext}", yt)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data folder laid out as users lay theirs out: <root>/fashion-mnist, <root>/mnist, <root>/ptb."""
    root = tmp_path_factory.mktemp("data")
    write_fashion_mnist(root / "fashion-mnist")
    write_fashion_mnist(root / "mnist", gz=False)
    write_ptb(root / "ptb")
    return root


PTB_SENTENCES = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on the mat",
    "N cats sat on N mats",
]


def write_ptb(folder) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("valid", 40), ("test", 40)):
        lines = [PTB_SENTENCES[i] for i in rng.integers(0, len(PTB_SENTENCES), n)]
        if split == "test":
            lines.append("an unseen zebra sat")
        (folder / f"ptb.{split}.txt").write_text("".join(f" {line} \n" for line in lines))


def tiny_trial(data_dir, **over) -> dict:
    """A fast fmnist_lstm trial spec (dict) on the fixture data."""
    spec = {"workload": "fmnist_lstm", "data_dir": str(data_dir), "batch_size": 64, "method": "legw",
            "budget": {"epochs": 1}, "threads": 1, "eval": {"per_epoch": 2}}
    for k, v in over.items():
        spec[k] = v
    return spec


def kill_tree_matching(marker: str) -> None:
    """SIGKILL every process whose command line mentions ``marker`` (our own Ray temp folder)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def ray_tmp():
    """A short Ray temp root (Unix socket paths must stay under ~107 characters)."""
    folder = tempfile.mkdtemp(prefix="bst", dir="/tmp")
    yield folder
    kill_tree_matching(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_ray():
    """One embedded Ray for this test process (of each xdist worker), as the CLI starts it: the sweeps
    ``here`` runs join it (``harness.sweep.driver``), so each pays neither a Python start with its
    imports nor a Ray start (~15 s of CPU together, docs/testing.md). A test whose subject is the
    process itself (a killed driver, a cluster by address, declared GPUs, plugins imported by the
    workers) runs ``python -m harness.cli`` instead (``tests.test_sweep.cli``)."""
    import ray

    from harness.sweep.ray_session import tune_defaults

    folder = tempfile.mkdtemp(prefix="bst", dir="/tmp")
    tune_defaults()  # as a sweep's driver sets them
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR",
             _temp_dir=folder)
    try:
        yield folder
    finally:
        ray.shutdown()
        kill_tree_matching(folder)
        shutil.rmtree(folder, ignore_errors=True)


def here(args, env_extra: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    """``batchscale ARGS`` in this process, in ``cwd`` (the checkout unless given), with what
    ``python -m harness.cli ARGS`` would return: its exit code, stdout and stderr. A sweep joins the
    ``shared_ray`` fixture's Ray (request it)."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for key, value in (env_extra or {}).items():
            mp.setenv(key, value)
        mp.chdir(cwd or Path(__file__).resolve().parents[1])
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
