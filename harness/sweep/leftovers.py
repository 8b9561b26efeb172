"""The processes an embedded Ray leaves behind when its driver is killed, and their removal.

A driver killed with SIGKILL cannot stop its embedded Ray. Most of Ray's node processes notice
and exit; ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` do not: they are re-parented to
init and ignore SIGTERM. So the driver writes down, in its session's entry of ``sweep.json``, the
processes its Ray started (pid and start time, read from ``/proc``), and the next run of the same
sweep ends those of an earlier session that never ended, and no other process: a pid counts only
while its start time is the recorded one (pids are reused), and only the recorded pids are
touched. Linux only (``/proc``); elsewhere nothing is recorded and nothing is ended.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[19])


def identity(pid: int) -> list[int] | None:
    """[pid, start time] of a live process (what ``alive`` checks against), or None."""
    st = _stat(pid)
    return [pid, st[1]] if st else None


def started_by(root: int) -> list[list[int]]:
    """[pid, start time] of every live descendant of process ``root``."""
    if not Path("/proc").is_dir():
        return []
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))):
            parents[int(name)] = st
    found, frontier = [], {root}
    while frontier:
        children = {pid for pid, (ppid, _) in parents.items() if ppid in frontier}
        found += [[pid, parents[pid][1]] for pid in children]
        frontier = children
    return found


def alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start


def end(processes: list[list[int]], grace: float = 1.0) -> list[int]:
    """End the recorded processes still alive with their recorded start time (SIGTERM, then
    SIGKILL after ``grace`` seconds); returns the pids ended."""
    targets = [(pid, start) for pid, start in processes if alive(pid, start)]
    for pid, _ in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p, s) for p, s in targets):
        time.sleep(0.1)
    for pid, start in targets:
        if alive(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return [pid for pid, _ in targets]


def end_abandoned(sessions: list[dict]) -> list[int]:
    """End what earlier sessions of a sweep left: those that never ended and whose driver is gone."""
    ended = []
    for s in sessions:
        ray = s.get("ray") or {}
        driver = ray.get("driver")
        if s.get("ended_at") or not ray.get("processes") or (driver and alive(*driver)):
            continue
        ended += end(ray["processes"])
    return ended
