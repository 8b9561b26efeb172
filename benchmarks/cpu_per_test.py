"""A pytest plugin: the whole machine's CPU time (user + nice + system from /proc/stat, every process
included: Ray's workers, subprocess CLIs) and the wall time while each test ran, setup and teardown
included, most CPU first, in ``CPU_PER_TEST`` (default ``cpu-per-test.tsv``). The per-test CPU
figures of docs/testing.md were taken this way, one test at a time, with nothing else busy:

    python -m pytest -n 0 -p benchmarks.cpu_per_test -m slow
"""

from __future__ import annotations

import os
import time

import pytest

_rows: list[tuple[float, float, str]] = []


def machine_cpu_seconds() -> float:
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return (int(fields[1]) + int(fields[2]) + int(fields[3])) / os.sysconf("SC_CLK_TCK")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, wall = machine_cpu_seconds(), time.monotonic()
    yield
    _rows.append((machine_cpu_seconds() - cpu, time.monotonic() - wall, item.nodeid))


def pytest_sessionfinish(session):
    if not _rows:
        return
    with open(os.environ.get("CPU_PER_TEST", "cpu-per-test.tsv"), "w") as f:
        f.write("cpu_seconds\twall_seconds\ttest\n")
        for cpu, wall, nodeid in sorted(_rows, reverse=True):
            f.write(f"{cpu:.1f}\t{wall:.1f}\t{nodeid}\n")
