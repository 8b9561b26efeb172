"""What reaches the terminal during a sweep: our progress and our one-line errors, not Ray's.

Ray and Tune write to the driver's stderr from Python (their loggers) and from their C++ core
(e.g. ``Failed to fetch metrics``), often for situations the driver handles. ``ray_output`` sends
the process's file descriptor 2 to ``results/<name>/ray.log`` for the length of the Ray session, so
all of it lands there, and restores it before anything of ours is printed (the progress view writes
to stdout); ``--verbose`` leaves stderr alone and lets Ray log to it. ``check_address`` fails fast
on a cluster address nothing answers at, where Ray itself would retry for minutes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

from harness.errors import BatchscaleError

#: seconds to wait for a TCP answer from a cluster's head node
CONNECT_TIMEOUT_S = 10.0


@contextlib.contextmanager
def ray_output(log: Path, verbose: bool = False):
    """Send stderr (Python's and the C++ core's) to ``log`` unless ``verbose``."""
    if verbose:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log, "ab") as f:
        f.write(f"--- session started by pid {os.getpid()} ---\n".encode())
        f.flush()
        os.dup2(f.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


#: Declare the embedded Ray's GPUs and CPUs (``ray.init(num_gpus=, num_cpus=)``) instead of Ray's
#: detection: for GPUs Ray does not see, and to test GPU packing on a machine without one (the trials
#: then run on the CPU, each seeing the share Ray assigned it in CUDA_VISIBLE_DEVICES).
RAY_GPUS_ENV, RAY_CPUS_ENV = "BATCHSCALE_RAY_GPUS", "BATCHSCALE_RAY_CPUS"


def declared(name: str) -> float | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise BatchscaleError(f"{name}={value!r}: not a number; allowed: a count of GPUs or CPUs") from None


def local_gpus() -> float:
    """GPUs the embedded Ray will have: declared, else those torch sees."""
    import torch

    given = declared(RAY_GPUS_ENV)
    return given if given is not None else float(torch.cuda.device_count())


def declared_resources() -> dict[str, int | float]:
    """``ray.init`` keywords for the embedded Ray's declared GPUs and CPUs (none declared: {})."""
    out = {key: declared(name) for key, name in (("num_gpus", RAY_GPUS_ENV), ("num_cpus", RAY_CPUS_ENV))}
    return {k: (int(v) if k == "num_cpus" else v) for k, v in out.items() if v is not None}


def trials_per_gpu(spec) -> str:
    """How the trials share the GPUs, in words ('' for CPU trials)."""
    g = spec.resources.gpus
    if not g:
        return ""
    return (f"{int(round(1 / g))} trial(s) share each GPU (resources.gpus {g:g})" if g < 1 else
            f"each trial holds {g:g} GPU(s)")


def local_cpus() -> float:
    """CPUs the embedded Ray will have: declared, else this machine's."""
    given = declared(RAY_CPUS_ENV)
    return given if given is not None else float(os.cpu_count() or 1)


def gpu_line(spec) -> str:
    """``plan``'s words on GPU trials: how they share the GPUs, how many run at once here and
    whether the CPUs or the GPUs bind, and what CPU share goes with a trial's GPU share."""
    r, per = spec.resources, max(1, spec.data_parallel.processes)
    gpus, cpus = local_gpus(), local_cpus()
    where = " (on a cluster: its GPUs over a trial's share; Ray packs them)"
    if gpus < per * r.gpus:
        return (f"GPUs: {trials_per_gpu(spec)}; no GPU here for torch or Ray: a sweep on this machine is refused; "
                f"run it on a cluster (--address) or declare the GPUs Ray should use ({RAY_GPUS_ENV})" + where)
    by_gpu, by_cpu = int(gpus // (per * r.gpus)), int(cpus // (per * r.cpus))
    words = f"GPUs: {trials_per_gpu(spec)}; {gpus:g} GPU(s) and {cpus:g} CPU(s) here, so {min(by_gpu, by_cpu)} at once"
    share = int(cpus / gpus * r.gpus)  # the CPUs that come with one trial's share of a GPU
    if by_cpu < by_gpu:
        words += (f": the CPUs bind ({by_cpu} trials of resources.cpus {r.cpus}; the GPUs have room for {by_gpu}; "
                  f"--set resources.cpus={max(1, share)} packs them)")
    elif share > r.cpus:
        words += (f"; a trial's share of a GPU comes with {share} CPUs here and resources.cpus {r.cpus} leaves "
                  f"{share - r.cpus} idle: --set resources.cpus={share} gives each trial them (its threads, and a "
                  f"streamed workload's DataLoader workers)")
    return words + where


def check_local_gpus(spec) -> None:
    """Refuse, before anything is written, a sweep whose trials want more GPUs than this machine has
    (on the embedded Ray, Tune would wait for them for ever)."""
    r, per, have = spec.resources, max(1, spec.data_parallel.processes), local_gpus()
    if r.gpus and have < per * r.gpus:
        raise BatchscaleError(f"resources.gpus {r.gpus:g}: this machine has {have:g} GPU(s) for torch; allowed: 0 here "
                              f"(--set resources.gpus=0), a cluster (--address), or GPUs Ray should use declared in "
                              f"{RAY_GPUS_ENV}")


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise a one-line error when nothing answers at a Ray cluster's address (``host:port`` of the
    head's GCS, default port 6379, or ``ray://host:port`` of its client server, default 10001)."""
    if address in ("auto", "local"):
        return
    client = address.startswith("ray://")
    rest = address.removeprefix("ray://").rstrip("/")
    host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        port = int(port_text) if port_text else (10001 if client else 6379)
    except ValueError:
        raise BatchscaleError(f"--address {address!r}: not HOST:PORT or ray://HOST:PORT") from None
    try:
        with socket.create_connection((host or "127.0.0.1", port), timeout=timeout):
            return
    except OSError as e:
        why = "timed out after {:g} s".format(timeout) if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise BatchscaleError(
            f"--address {address}: no Ray cluster answers at {host}:{port} ({why}); check that the head node "
            f"runs 'ray start --head' with that port{' and its client server' if client else ''}, that this "
            "machine can reach it (firewall, VPN), and RAY_ADDRESS") from None
