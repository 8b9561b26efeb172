"""The micro-batch size that runs fastest on the machine at hand: measured on the first use of a
workload on a device (with the thread count a trial will have), then cached.

A large batch runs as micro-batches (harness.trial.loop); which size is fastest depends on the CPU's
caches or the GPU, not on the workload alone: a table measured on one CPU was 10% slow on another.
So ``micro_batch_cap`` scans powers of two, training the workload's model on its own data for a
fraction of a second at each, and takes the smallest size within 3% of the fastest (smaller
micro-batches hold less memory). The result is cached in ``<cache>/micro_batch.json`` (the data
cache, ``BATCHSCALE_CACHE_DIR``), keyed by workload and options, device, CPU or GPU model, threads
and torch version. The spec's ``micro_batch_cap`` (or ``micro_batch_size``) overrides it;
``BATCHSCALE_CALIBRATE=0`` falls back to the workload's table (the test suite does, so that its
numbers do not depend on the machine's timing).
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from typing import Any

import torch

#: "0": use the workload's table cap instead of measuring
ENV = "BATCHSCALE_CALIBRATE"
#: sizes within this fraction of the fastest count as fastest; the smallest of them is chosen
WITHIN = 0.03
#: the scan does not try a micro-batch whose extrapolated peak memory exceeds this share of what is available
MEMORY_SHARE = 0.25


def _key(workload, device: torch.device, threads: int) -> str:
    from harness.results.store import cpu_name

    chip = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    options = json.dumps(workload.options.model_dump(), sort_keys=True)
    return f"{workload.name} {options} | {device.type} {chip} | {threads} thread(s) | torch {torch.__version__}"


def scan(workload, device: torch.device, threads: int, seconds: float = 0.3,
         sizes: list[int] | None = None) -> dict[int, float]:
    """Training examples per second at each micro-batch size (``seconds`` each after a warm-up step;
    stops past the knee: two sizes in a row under 70% of the best; and before a size whose step
    would need more than MEMORY_SHARE of the memory available, extrapolated from the last size's
    peak: a 66M-parameter LSTM at 8192 sequences would otherwise take the machine's memory)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        data = workload.load()
        model = workload.build_model().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        n = data.train_size
        top = 2 ** (13 if device.type == "cpu" else 16)
        sizes = sizes or [m for m in (2 ** k for k in range(3, 17)) if m <= min(n, top)]
        out: dict[int, float] = {}
        slow = 0
        base = _peak_bytes(device)
        for m in sizes:
            if out:
                last = max(out)
                if (_peak_bytes(device) - base) * m / last > MEMORY_SHARE * available_bytes(device):
                    break
            batch = tuple(t[:m].to(device) for t in data.train)

            def step():
                opt.zero_grad(set_to_none=True)
                loss = workload.loss(model, batch)
                loss.backward()
                opt.step()
                return loss.item()  # syncs a GPU, as the trial loop does

            step()
            start, steps = time.perf_counter(), 0
            while steps < 2 or time.perf_counter() - start < seconds:
                step()
                steps += 1
            out[m] = m * steps / (time.perf_counter() - start)
            slow = slow + 1 if out[m] < 0.7 * max(out.values()) else 0
            if slow >= 2:
                break
        return out
    finally:
        torch.set_num_threads(before)


def _peak_bytes(device: torch.device) -> int:
    """The process's peak memory so far (resident set on a CPU, allocated on a GPU)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def available_bytes(device: torch.device) -> float:
    """Free memory of the device (a GPU's, or this machine's MemAvailable)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def choose(throughput: dict[int, float]) -> int:
    best = max(throughput.values())
    return min(m for m, v in throughput.items() if v >= (1 - WITHIN) * best)


def micro_batch_cap(workload, device: torch.device, threads: int) -> tuple[int, str]:
    """(the largest micro-batch to use, where it comes from: measured / cached / table)."""
    table = workload.micro_batch_cap(device.type == "cuda")
    if os.environ.get(ENV, "1") == "0":
        return table, f"the workload's table ({ENV}=0)"
    from harness.data import cache_dir
    from harness.results.store import write_json_atomic

    path = cache_dir() / "micro_batch.json"
    key = _key(workload, device, threads)
    try:
        cache: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    if key in cache:
        return int(cache[key]["cap"]), f"measured on this machine on {cache[key]['measured_at'][:10]} ({path})"
    measured = scan(workload, device, threads)
    cap = choose(measured)
    cache[key] = {"cap": cap, "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "examples_per_second": {str(m): round(v, 1) for m, v in measured.items()}, "table": table}
    write_json_atomic(path, cache)
    return cap, "measured on this machine just now"


def sweep_cap(spec) -> tuple[int, str]:
    """The micro-batch cap a sweep's trials get (its driver measures it, with the threads and device
    of one trial, and writes it into every trial): (cap, where it comes from)."""
    wl = spec.workload_obj()
    if spec.micro_batch_cap:
        return spec.micro_batch_cap, "the spec"
    cuda = spec.resources.gpus > 0 and spec.device != "cpu"
    if cuda and not torch.cuda.is_available():
        return wl.micro_batch_cap(True), "the workload's table (this driver has no GPU to measure on)"
    return micro_batch_cap(wl, torch.device("cuda" if cuda else "cpu"), spec.resources.cpus)
