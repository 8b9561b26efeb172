"""MNIST-1D (Greydanus 2020), generated offline by the ``mnist1d`` package and cached.

``mnist1d.data.make_dataset`` builds any number of samples procedurally (about 4K samples/s on
one core here), so a study can have enough examples for 32K batches to still take many steps per
epoch. Never call its ``get_dataset`` with the default ``download=True``: that reaches the network.
"""

from __future__ import annotations

import io
from importlib.metadata import version

import numpy as np

from harness.data import atomic_write_bytes, cache_dir


def load_mnist1d(n_train: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    path = cache_dir() / "mnist1d" / f"mnist1d-v{version('mnist1d')}-train{n_train}-test{n_test}-seed{seed}.npz"
    if not path.is_file():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples = n_train + n_test
        args.train_split = n_train / (n_train + n_test)
        args.seed = seed
        # make_dataset draws num_samples // 10 per class: ask for a multiple of 10.
        if args.num_samples % 10:
            raise ValueError(f"n_train + n_test must be a multiple of 10 (got {args.num_samples})")
        d = make_dataset(args)
        buf = io.BytesIO()
        np.savez(buf, x=d["x"].astype(np.float32), y=d["y"].astype(np.int64),
                 x_test=d["x_test"].astype(np.float32), y_test=d["y_test"].astype(np.int64))
        atomic_write_bytes(path, buf.getvalue())
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
