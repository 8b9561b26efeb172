"""Datasets: one loader per file format, and where to find the files.

Search order for a dataset's folder: the ``data_dir`` of the spec (or ``--data-dir``), then the
``BATCHSCALE_DATA_DIR`` environment variable (each as ``<root>/<name>`` and ``<root>``), then
the install paths of the Debian packages. Generated or converted data (MNIST-1D, the KJV corpus)
is cached under ``BATCHSCALE_CACHE_DIR`` (default ``~/.cache/batchscale``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.errors import DatasetMissing


def cache_dir() -> Path:
    root = os.environ.get("BATCHSCALE_CACHE_DIR") or Path.home() / ".cache" / "batchscale"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def candidate_dirs(name: str, data_dir: str | None, system_dirs: tuple[str, ...] = ()) -> list[Path]:
    roots = [r for r in (data_dir, os.environ.get("BATCHSCALE_DATA_DIR")) if r]
    dirs: list[Path] = []
    for root in roots:
        dirs += [Path(root) / name, Path(root)]
    dirs += [Path(d) for d in system_dirs]
    return list(dict.fromkeys(dirs))


def find_files(title: str, name: str, files: list[str], data_dir: str | None, how: str,
               system_dirs: tuple[str, ...] = (), gz_ok: bool = False) -> dict[str, Path]:
    """The first candidate folder holding every file (or its ``.gz``), else one clear error."""
    dirs = candidate_dirs(name, data_dir, system_dirs)
    for d in dirs:
        found = {}
        for f in files:
            for variant in ([f + ".gz", f] if gz_ok else [f]):
                if (d / variant).is_file():
                    found[f] = d / variant
                    break
        if len(found) == len(files):
            return found
    looked = ", ".join(str(d) for d in dirs) or "(no folder: no data_dir, BATCHSCALE_DATA_DIR unset)"
    raise DatasetMissing(f"{title} not found: looked for {files[0]}{'[.gz]' if gz_ok else ''} in {looked}; {how}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
