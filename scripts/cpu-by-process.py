#!/usr/bin/env python3
"""Run a command and print the CPU time of every process that ran meanwhile, by kind: the command
itself, Ray's trial actors and workers, Ray's own services, CLI subprocesses, Chromium. Linux only
(/proc, polled every 0.2 s, so a process shorter than that may be missed); run it with nothing else
busy. For example, the whole suite in one process:

    scripts/cpu-by-process.py .venv/bin/python -m pytest -q -n 0

(The breakdown in docs/testing.md came from a first version of this script, sorted by these kinds.)
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
#: (substring of the command line, kind), first match wins
KINDS = [
    ("/raylet/raylet", "Ray: raylet"), ("/gcs/gcs_server", "Ray: GCS server"),
    ("setup_worker.py", "Ray: worker with a runtime env (trial actors, Ray Train)"),
    ("default_worker.py", "Ray: worker (tasks, actors)"),
    ("dashboard/agent.py", "Ray: services (dashboard, agents, monitors)"),
    ("dashboard/dashboard.py", "Ray: services (dashboard, agents, monitors)"),
    ("runtime_env/agent", "Ray: services (dashboard, agents, monitors)"),
    ("autoscaler/_private/monitor.py", "Ray: services (dashboard, agents, monitors)"),
    ("log_monitor.py", "Ray: log monitor"),
    ("bin/ray ", "`ray start` / `ray status`"),
    ("-m harness.cli", "`python -m harness.cli` subprocesses"), ("bin/batchscale", "`batchscale` script subprocesses"),
    ("chromium", "Chromium and Playwright"), ("playwright", "Chromium and Playwright"),
    ("multiprocessing", "multiprocessing children"),
]


def kind(cmd: str, top: int, pid: int) -> str:
    if pid == top:
        return "the command"
    return next((k for key, k in KINDS if key in cmd), "other")


def cpu(pid: str) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit(__doc__)
    seen: dict[str, list] = {}  # pid -> [command line, CPU at first sight, CPU last seen]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if (c := cpu(pid)) is not None:
            seen[pid] = ["", c, c]
    start = time.monotonic()
    proc = subprocess.Popen(argv)
    while proc.poll() is None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            c = cpu(pid)
            if c is None:
                continue
            if pid not in seen:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                seen[pid] = [cmd, 0.0, c]
            seen[pid][2] = c
        time.sleep(0.2)
    total, count = collections.Counter(), collections.Counter()
    for pid, (cmd, first, last) in seen.items():
        if last - first > 0.05:
            k = kind(cmd, proc.pid, int(pid))
            total[k] += last - first
            count[k] += 1
    print(f"cpu-by-process: exit {proc.returncode}, wall {time.monotonic() - start:.1f} s", file=sys.stderr)
    for k, v in total.most_common():
        print(f"{v:8.1f} CPU-s  {count[k]:4d} processes  {k}", file=sys.stderr)
    print(f"{sum(total.values()):8.1f} CPU-s  in all", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
