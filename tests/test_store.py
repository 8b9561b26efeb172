"""The results store: what readers see while a sweep writes it."""

from __future__ import annotations

import threading
import time

from harness.store import ResultsStore


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
