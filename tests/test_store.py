"""The results store: what readers see while a sweep writes it."""

from __future__ import annotations

import threading
import time

from harness.results.store import ResultsStore


def test_readers_see_whole_files_while_the_sweep_rewrites_them(tmp_path):
    """A running sweep replaces trials.parquet and measurements.parquet as each trial ends, while
    its progress view, a report or a notebook reads them. Every read must see one whole version:
    reading parquet by path opened the file twice and failed now and then on a half-new file."""
    store = ResultsStore(tmp_path)
    store.write_meta({"name": "s", "status": "running"})
    stop = threading.Event()

    def sweep():
        i = 0
        while not stop.is_set():
            store.record({"trial_id": f"t{i}", "status": "complete", "workload": "w", "final_metric": 0.5},
                         [{"trial_id": f"t{i}", "step": s, "metric": 0.1} for s in range(50)])
            i += 1

    writer = threading.Thread(target=sweep)
    writer.start()
    seen, errors = [], []
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                _, trials, measurements = store.load()
            except Exception as e:  # noqa: BLE001 - counted and shown below
                errors.append(repr(e))
                continue
            seen.append(len(trials))
            # trials are written after their measurements: every trial read has all 50 of its rows
            assert set(trials.trial_id) <= set(measurements.trial_id)
            assert (measurements[measurements.trial_id.isin(trials.trial_id)].groupby("trial_id").size() == 50).all()
    finally:
        stop.set()
        writer.join()
    assert not errors, errors[:3]
    assert seen == sorted(seen) and seen[-1] > seen[0], "the reads overlapped the writes"


def test_each_trial_is_its_own_record_until_the_run_folds_them_in(tmp_path):
    import pandas as pd

    store = ResultsStore(tmp_path)
    store.write_meta({"name": "s", "status": "running"})
    store.record({"trial_id": "a/1", "status": "complete", "final_metric": 0.5}, [{"step": 1, "metric": 0.4}])
    store.consolidate()
    assert not list(store.records.iterdir()) and store.trials_path.exists()
    # later trials are records of their own: the tables are not rewritten
    before = store.trials_path.read_bytes()
    store.record({"trial_id": "b", "status": "diverged"}, [{"step": 1, "metric": 0.1}, {"step": 2, "metric": None}])
    store.record({"trial_id": "a/1", "status": "complete", "final_metric": 0.7}, [{"step": 1, "metric": 0.6}])
    assert store.trials_path.read_bytes() == before
    assert sorted(p.name for p in store.records.iterdir()) == [
        "a%2F1.measurements.parquet", "a%2F1.trial.parquet", "b.measurements.parquet", "b.trial.parquet"]
    _, trials, measurements = store.load()  # a record replaces the consolidated row of its trial
    t = trials.set_index("trial_id")
    assert len(t) == 2 and t.loc["a/1", "final_metric"] == 0.7 and pd.isna(t.loc["b", "final_metric"])
    assert measurements.groupby("trial_id").size().to_dict() == {"a/1": 1, "b": 2}
    store.consolidate()
    assert not list(store.records.iterdir())
    _, folded, folded_m = store.load()
    pd.testing.assert_frame_equal(folded.sort_values("trial_id").reset_index(drop=True),
                                  trials.sort_values("trial_id").reset_index(drop=True))
    assert len(folded_m) == 3
    # a table written by another tool (pandas) still merges with new records
    folded.to_parquet(store.trials_path, index=False)
    store.record({"trial_id": "c", "status": "complete", "final_metric": 0.9}, [])
    assert sorted(t["trial_id"] for t in store.trial_rows()) == ["a/1", "b", "c"]


def test_the_store_schemas_are_derived_from_the_typed_records():
    """A column is declared once, in harness.results.schema: its Arrow type follows its Python type, in order."""
    import dataclasses

    import pyarrow as pa

    from harness.results.schema import Measurement, TrialRecord, arrow_schema
    from harness.results.store import MEASUREMENT_SCHEMA, TRIAL_SCHEMA

    assert TRIAL_SCHEMA.names == [f.name for f in dataclasses.fields(TrialRecord)]
    assert MEASUREMENT_SCHEMA.names == [f.name for f in dataclasses.fields(Measurement)]
    types = {n: TRIAL_SCHEMA.field(n).type for n in ("trial_id", "batch_size", "final_metric", "target_reached")}
    assert types == {"trial_id": pa.string(), "batch_size": pa.int64(), "final_metric": pa.float64(),
                     "target_reached": pa.bool_()}

    @dataclasses.dataclass
    class Grown(Measurement):
        sharpness: float | None = None

    assert arrow_schema(Grown).field("sharpness").type == pa.float64() and arrow_schema(Grown).names[-1] == "sharpness"


def test_a_corrupt_store_file_is_named_in_one_line(tmp_path, capsys):
    from harness.cli import main
    from harness.results.store import ResultsStore

    store = ResultsStore(tmp_path / "s")
    store.root.mkdir()
    store.write_meta({"name": "s", "status": "finished"})
    store.trials_path.write_bytes(b"not parquet")
    assert main(["report", str(store.root)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{store.trials_path}: not a readable parquet file" in err
    store.meta_path.write_text("{cut short")
    assert main(["report", str(store.root)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{store.meta_path}: not valid JSON" in err
