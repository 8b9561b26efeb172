"""The IDX format of MNIST and Fashion-MNIST (LeCun et al.), optionally gzip-compressed.

Header: two zero bytes, a type code, the number of dimensions, then each dimension as a
big-endian uint32; then the values, big-endian.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from harness.errors import BatchscaleError

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
          np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def _open(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    path = Path(path)
    with _open(path) as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise BatchscaleError(f"{path}: not an IDX file (magic bytes {raw[:4].hex() or 'missing'}; "
                              "expected 0000 + type code 08/09/0b/0c/0d/0e + dimensions)")
    dtype, ndim = np.dtype(_TYPES[raw[2]]), raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(body) != expected:
        raise BatchscaleError(f"{path}: IDX body has {len(body)} bytes, header {shape} needs {expected}")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx_shape(path: str | Path) -> tuple[int, ...]:
    """The dimensions in an IDX header, without reading the values."""
    with _open(Path(path)) as f:
        head = f.read(4)
        if len(head) < 4 or head[0] or head[1] or head[2] not in _TYPES:
            raise BatchscaleError(f"{path}: not an IDX file (magic bytes {head.hex() or 'missing'})")
        return struct.unpack(f">{head[3]}I", f.read(4 * head[3]))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as IDX (gzip when the name ends in .gz): fixtures and exports."""
    arr = np.asarray(array)
    dtype = arr.dtype if arr.dtype.itemsize == 1 else arr.dtype.newbyteorder(">")
    if dtype not in _CODES:
        raise ValueError(f"IDX cannot hold dtype {arr.dtype}")
    header = bytes([0, 0, _CODES[dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(dtype).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)
