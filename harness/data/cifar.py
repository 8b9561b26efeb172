"""CIFAR-10 in its "python version" (cifar-10-python.tar.gz from
https://www.cs.toronto.edu/~kriz/cifar.html, extracted): ``data_batch_1`` ... ``data_batch_5`` and
``test_batch``, each a pickle of a dict with ``b"data"`` (N x 3072 uint8: 1024 red, 1024 green,
1024 blue values of a 32 x 32 image, row by row) and ``b"labels"`` (N ints in 0..9).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
FILES = [*TRAIN_FILES, TEST_FILE]


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x 32 x 32 uint8, labels N int64) of one batch file."""
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    try:
        data, labels = d[b"data"], d[b"labels"]
    except (KeyError, TypeError):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a pickled dict with b'data' and b'labels')") from None
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"{path}: data of shape {data.shape} with {len(labels)} labels; expected N x 3072 and N labels")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def write_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a batch file in the same format (tests make tiny CIFAR-10 folders with it)."""
    with open(path, "wb") as f:
        pickle.dump({b"data": images.reshape(len(images), 3072).astype(np.uint8), b"labels": [int(v) for v in labels]},
                    f, protocol=2)
