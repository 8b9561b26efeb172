"""The results store: ``results/<sweep-name>/``, readable without Ray.

* ``sweep.json``: schema version, the spec as given and as resolved, the trial list, versions,
  git commit, host, CPU/GPU, start and end times, the sweep's status;
* ``trials.parquet``: one row per trial (``TRIAL_SCHEMA``);
* ``measurements.parquet``: one row per evaluation per trial (``MEASUREMENT_SCHEMA``);
* ``records/``: while a sweep runs, each trial's own record as it ends (its row and its
  measurements, two small files), so that recording costs the same at trial 1000 as at trial 10;
  the driver folds them into the two tables when its run ends (``consolidate``), and every reader
  (``load``, ``trial_rows``) sees the tables with the records in place, whether folded or not.

Every write goes to a temporary file in the same folder and is renamed over the old one, so a
crash at any moment leaves the previous complete version.
Readers check ``schema_version``; a newer major version is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from harness.errors import BatchscaleError
from harness.results.schema import Measurement, TrialRecord, arrow_schema

SCHEMA_VERSION = 1
_UMASK = os.umask(0)
os.umask(_UMASK)


class Status(StrEnum):
    """A trial's recorded status (a ``str``: it compares and serialises as its value). The trial
    loop ends ``complete`` or ``diverged``; the driver records ``error`` (it raised, retries spent)
    and ``incomplete`` (stopped early by ASHA, or unfinished when the driver stopped). analysis.outcome
    adds ``failed`` for complete runs that learned nothing."""

    COMPLETE = "complete"
    DIVERGED = "diverged"
    ERROR = "error"
    INCOMPLETE = "incomplete"


STATUSES = tuple(Status)
#: statuses a rerun does not run again
FINAL = (Status.COMPLETE, Status.DIVERGED, Status.ERROR)
#: statuses of trials that ran their loop to its end (a result, good or bad)
RAN_TO_END = [Status.COMPLETE, Status.DIVERGED]

TRIAL_SCHEMA = arrow_schema(TrialRecord)
MEASUREMENT_SCHEMA = arrow_schema(Measurement)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are for everyone who may read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """One parquet file, read whole through a single open; empty if absent.

    A sweep replaces its files while others read them (its own driver, a report, a notebook), and
    ``pq.read_table(path)`` opens the file more than once, so it could mix two versions of it. The
    read also stays off Arrow's dataset scan and thread pools (an Arrow-allocated buffer, one
    thread): a resumed sweep driver once aborted (SIGABRT) in CI with a backtrace through the
    scan's (acero) pool threads, when it read a Python-owned buffer that way.
    """
    try:
        with pa.OSFile(str(path)) as f:
            buffer = f.read_buffer()
    except FileNotFoundError:
        return schema.empty_table()
    return _parse(path, buffer)


def _parse(path: Path, buffer) -> pa.Table:
    try:
        return pq.ParquetFile(pa.BufferReader(buffer)).read(use_threads=False)
    except (pa.ArrowInvalid, OSError) as e:
        raise BatchscaleError(f"{path}: not a readable parquet file ({str(e).splitlines()[0][:120]}); restore it "
                              "from a copy, or delete the sweep's folder and run it again") from None


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns and types (files written by other tools, e.g.
    pandas, may order or type them differently; a missing column is all null)."""
    if table.schema.remove_metadata().equals(schema):
        return table
    return pa.table({f.name: (table[f.name].cast(f.type) if f.name in table.column_names
                              else pa.nulls(len(table), f.type)) for f in schema}, schema=schema)


def _read_whole(path: Path, schema: pa.Schema) -> pa.Table:
    """Like ``read_table``, but a missing file is an error (a record that vanished mid-read)."""
    with pa.OSFile(str(path)) as f:
        buffer = f.read_buffer()
    return _conform(_parse(path, buffer), schema)


def write_json_atomic(path: Path, obj: Any) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")

    _atomic_write(Path(path), write)


@contextlib.contextmanager
def replaced_whole(final: Path) -> Iterator[Path]:
    """A folder written beside ``final`` and swapped in whole when the block ends without an error;
    on an error the old ``final`` stays as it was, and nothing half-written is left."""
    final = Path(final)
    staging, old = (final.with_name(f".{final.name}.{what}-{os.getpid()}") for what in ("partial", "old"))
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
    except OSError as e:
        raise BatchscaleError(f"{final.parent}: cannot write {final.name}/ there ({e.strerror or e}); copy the "
                              "folder somewhere writable and run the command on the copy") from None
    try:
        yield staging
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def to_table(rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> pa.Table:
    if schema is None:
        return pa.Table.from_pylist(rows)
    names = set(schema.names)
    clean = []
    for row in rows:
        extra = {k: v for k, v in row.items() if k not in names}
        out = {k: row.get(k) for k in schema.names}
        if "extra" in names and extra:
            out["extra"] = json.dumps(extra, default=_json_default)
        for k, v in out.items():
            if isinstance(v, float) and v != v and schema.field(k).type != pa.float64():
                out[k] = None
            elif isinstance(v, (list, tuple)) and schema.field(k).type == pa.string():
                out[k] = "; ".join(map(str, v))
        clean.append(out)
    return pa.Table.from_pylist(clean, schema=schema)


def write_table(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> None:
    table = to_table(rows, schema)
    _atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def environment() -> dict[str, Any]:
    """Versions and machine of this process (the driver)."""
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    info = {"python": platform.python_version(), "platform": platform.platform(), "host": socket.gethostname(),
            "cpu": cpu_name(), "cpu_count": os.cpu_count(),
            **{pkg: v(pkg) for pkg in ("batchscale", "torch", "ray", "optuna", "pandas", "pyarrow", "numpy")},
            "git_commit": _git_commit()}
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - informative only
        info["gpu"] = None
    return info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ResultsStore:
    """One sweep's folder. The driver writes; analysis reads (``load``), without Ray."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.meta_path = self.root / "sweep.json"
        self.trials_path = self.root / "trials.parquet"
        self.measurements_path = self.root / "measurements.parquet"
        self.records = self.root / "records"  # one trial's record per pair of files while a sweep runs

    def exists(self) -> bool:
        return self.meta_path.is_file()

    # -- metadata ---------------------------------------------------------------------------------
    def read_meta(self) -> dict[str, Any]:
        if not self.exists():
            raise BatchscaleError(f"no results store at {self.root} (sweep.json missing); run 'batchscale sweep' first")
        try:
            meta = json.loads(self.meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BatchscaleError(f"{self.meta_path}: not valid JSON ({e}); restore it from a copy, or delete the "
                                  "sweep's folder and run it again") from None
        if not isinstance(meta, dict):
            raise BatchscaleError(f"{self.meta_path}: not a sweep's metadata (a JSON object is expected)")
        version = meta.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise BatchscaleError(f"{self.meta_path}: schema_version {version!r} is newer than this batchscale "
                                  f"reads ({SCHEMA_VERSION}); upgrade batchscale")
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        write_json_atomic(self.meta_path, {"schema_version": SCHEMA_VERSION, **meta})

    def update_meta(self, **fields) -> dict[str, Any]:
        meta = self.read_meta()
        meta.update(fields)
        self.write_meta({k: v for k, v in meta.items() if k != "schema_version"})
        return meta

    # -- trials and measurements --------------------------------------------------------------------
    def _record_paths(self, trial_id: str) -> tuple[Path, Path]:
        stem = quote(trial_id, safe="-_.")
        return self.records / f"{stem}.trial.parquet", self.records / f"{stem}.measurements.parquet"

    def record(self, trial: dict[str, Any], measurements: list[dict[str, Any]]) -> None:
        """Insert or replace one trial and its measurements: its own record, two small atomic
        writes (measurements first: a trial record present means its measurements are whole), so
        recording trial 1000 costs what recording trial 10 costs."""
        tid = trial["trial_id"]
        if trial.get("status") not in STATUSES:
            raise ValueError(f"trial status {trial.get('status')!r} is not one of {', '.join(STATUSES)}")
        trial_path, measurements_path = self._record_paths(tid)
        write_table(measurements_path, [{**m, "trial_id": tid} for m in measurements], MEASUREMENT_SCHEMA)
        write_table(trial_path, [trial], TRIAL_SCHEMA)

    def _tables(self) -> tuple[pa.Table, pa.Table, list[Path]]:
        """(trials, measurements, the record files read): the consolidated tables with each
        trial's own record in place of its consolidated rows (a record is newer). Retried when a
        record vanishes under the read (the driver consolidating at the end of its run)."""
        for attempt in range(5):
            paths = sorted(self.records.glob("*.trial.parquet"), key=lambda q: (q.stat().st_mtime_ns, q.name)) \
                if self.records.is_dir() else []
            try:
                record_trials = [_read_whole(q, TRIAL_SCHEMA) for q in paths]
                record_measurements = [_read_whole(q.with_name(q.name.replace(".trial.", ".measurements.")),
                                                   MEASUREMENT_SCHEMA) for q in paths]
            except FileNotFoundError:
                if attempt == 4:
                    raise
                continue
            # conformed to today's schemas: a store written before a column existed reads it as null
            trials = _conform(read_table(self.trials_path, TRIAL_SCHEMA), TRIAL_SCHEMA)
            measurements = _conform(read_table(self.measurements_path, MEASUREMENT_SCHEMA), MEASUREMENT_SCHEMA)
            if paths:
                newer = pa.array([t["trial_id"][0].as_py() for t in record_trials], pa.string())
                trials = trials.filter(pc.invert(pc.is_in(trials["trial_id"], value_set=newer)))
                measurements = measurements.filter(pc.invert(pc.is_in(measurements["trial_id"], value_set=newer)))
                trials = pa.concat_tables([trials, *record_trials])
                measurements = pa.concat_tables([measurements, *record_measurements])
            return trials, measurements, paths
        raise AssertionError("unreachable")

    def trial_rows(self) -> list[dict[str, Any]]:
        return self._tables()[0].to_pylist()

    def measurement_rows(self) -> list[dict[str, Any]]:
        return self._tables()[1].to_pylist()

    def consolidate(self) -> None:
        """Fold the per-trial records into trials.parquet and measurements.parquet (the reader's
        interface), then remove them. Safe to interrupt: until a record is removed, it wins."""
        trials, measurements, paths = self._tables()
        if not paths:
            return
        _atomic_write(self.measurements_path, lambda tmp: pq.write_table(measurements, tmp))
        _atomic_write(self.trials_path, lambda tmp: pq.write_table(trials, tmp))
        for q in paths:
            q.unlink(missing_ok=True)
            q.with_name(q.name.replace(".trial.", ".measurements.")).unlink(missing_ok=True)

    def load(self):
        """``(meta, trials DataFrame, measurements DataFrame)`` for analysis (records included)."""
        meta = self.read_meta()
        trials, measurements, _ = self._tables()
        return meta, trials.to_pandas(), measurements.to_pandas()
