"""MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package and cached.

``mnist1d.data.make_dataset`` builds any number of samples procedurally (about 4K samples/s on
one core here), so a study can have enough examples for 32K batches to still take many steps per
epoch (1M training examples: 32 steps per epoch at 32K). Never call its ``get_dataset`` with the
default ``download=True``: that reaches the network.

Up to ``PARALLEL_ABOVE`` samples the set is one ``make_dataset`` call, as the package makes it.
Larger sets (a million samples take ~4 minutes on one core) are made in chunks of ``CHUNK``
samples on all cores, each chunk a ``make_dataset`` call with its own seed drawn from the data seed
(training chunks, then test chunks); the package standardizes each call's signals, so chunks are
standardized separately (their means and deviations agree to well under 1% at this size).
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ProcessPoolExecutor
from importlib.metadata import version

import numpy as np

from harness.data import atomic_write_bytes, cache_dir

PARALLEL_ABOVE = 200_000
CHUNK = 100_000


def _make(num_samples: int, train_split: float, seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    # make_dataset draws num_samples // 10 per class: ask for a multiple of 10.
    if num_samples % 10:
        raise ValueError(f"MNIST-1D sizes must be multiples of 10 (got {num_samples})")
    d = make_dataset(args)
    return {k: d[k] for k in ("x", "y", "x_test", "y_test")}


def _chunks(total: int) -> list[int]:
    """Sizes (multiples of 10, at most CHUNK) adding up to ``total``."""
    n = math.ceil(total / CHUNK)
    base = (total // n) // 10 * 10
    sizes = [base] * n
    sizes[-1] += total - base * n
    return sizes


def _generate(n_train: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    if n_train + n_test <= PARALLEL_ABOVE:
        return _make(n_train + n_test, n_train / (n_train + n_test), seed)
    if n_train % 10 or n_test % 10:
        raise ValueError(f"above {PARALLEL_ABOVE} samples, n_train and n_test must each be multiples of 10 "
                         f"(got {n_train} and {n_test})")
    jobs = [(size, 1.0) for size in _chunks(n_train)] + [(size, 0.0) for size in _chunks(n_test)]
    seeds = np.random.SeedSequence(seed).generate_state(len(jobs), np.uint32)
    with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        parts = list(pool.map(_make, [s for s, _ in jobs], [f for _, f in jobs], [int(s) for s in seeds]))
    return {"x": np.concatenate([p["x"] for p in parts if len(p["x"])]),
            "y": np.concatenate([p["y"] for p in parts if len(p["y"])]),
            "x_test": np.concatenate([p["x_test"] for p in parts if len(p["x_test"])]),
            "y_test": np.concatenate([p["y_test"] for p in parts if len(p["y_test"])])}


def load_mnist1d(n_train: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    path = cache_dir() / "mnist1d" / f"mnist1d-v{version('mnist1d')}-train{n_train}-test{n_test}-seed{seed}.npz"
    if not path.is_file():
        d = _generate(n_train, n_test, seed)
        buf = io.BytesIO()
        np.savez(buf, x=d["x"].astype(np.float32), y=d["y"].astype(np.int64),
                 x_test=d["x_test"].astype(np.float32), y_test=d["y_test"].astype(np.int64))
        atomic_write_bytes(path, buf.getvalue())
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
