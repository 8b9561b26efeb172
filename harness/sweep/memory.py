"""Will a trial fit in memory? Estimated before anything runs (the pilot included), and refused in
one line when it will not.

A trial holds its data set, the model with its gradients and optimizer state, the index of one
step's examples, and one micro-batch's activations at a time (harness.trial.loop accumulates larger
batches). The activations are measured, not guessed: a forward pass at two small micro-batches
records every tensor autograd saves for the backward pass (``torch.autograd.graph.
saved_tensors_hooks``; parameters left out), and their growth per example, with a margin for the
backward pass's buffers, is scaled to the micro-batch the trial will use. The
memory a trial has is ``resources.memory_gb`` when the spec gives it, else what this machine has
available less what Ray itself takes, shared by the trials that run at once. GPU trials (their
activations live in the device's memory) and sweeps on a cluster (its nodes are not this machine)
are not checked here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from harness.errors import SpecError

#: Ray's own processes (the driver's ``ray.init`` and its helpers), measured here at ~1.25 GB
RAY_RESERVE_BYTES = 1.5 * 2**30
#: over the saved tensors: the backward pass's own buffers. Measured on the 2-core VM (growth of the
#: peak resident memory over one forward and backward of a micro-batch of 8192, 2026-12-05):
#: fmnist_cnn 2.47 GB (estimated 2.45), fmnist_lstm 1.70 GB (estimated 2.22)
ACTIVATION_FACTOR = 1.2
GB = 2**30


@dataclass(frozen=True)
class Estimate:
    data: float  # bytes of the data set's tensors held in the trial's process
    model: float  # weights, gradients and two optimizer buffers
    per_example: float  # per example of a micro-batch: its inputs, and activations saved for backward x ACTIVATION_FACTOR

    def total(self, batch: int, micro: int) -> float:
        return self.data + self.model + 8.0 * batch + self.per_example * micro


def _tensor_bytes(tensors) -> float:
    return float(sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)))


def saved_bytes(workload, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> float:
    """Bytes of the tensors autograd saves for the backward pass of one forward on ``batch``,
    parameters left out (they are the model's, counted once)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}  # storage -> its bytes: views of one storage count once

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and t.device.type != "meta":
            seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        workload.loss(model, batch)
    return float(sum(seen.values()))


def estimate(workload, probe: int = 16) -> Estimate:
    """The trial's memory, from the loaded data set and a forward pass at ``probe`` and 2 x ``probe``."""
    data = workload.load()
    held = [t for part in (data.train, data.eval, data.valid or ()) for t in part]
    torch.manual_seed(0)
    model = workload.build_model()
    n = data.train_size
    small, large = min(probe, n // 2) or 1, min(2 * probe, n)
    # gathered by index as the trial loop does (a streamed column, ImageNet's, reads its files)
    sizes = [saved_bytes(workload, model, tuple(t[torch.arange(m)] for t in data.train)) for m in (small, large)]
    slope = (sizes[1] - sizes[0]) / max(large - small, 1) if large > small else sizes[0] / small
    param_bytes = _tensor_bytes(model.parameters())
    # the micro-batch's own copy of its examples, which the forward pass may not save
    inputs = sum(t[0].numel() * t.element_size() for t in data.train if isinstance(t, torch.Tensor))
    return Estimate(data=_tensor_bytes(held), model=4.0 * param_bytes,
                    per_example=ACTIVATION_FACTOR * max(slope, 0.0) + inputs)


def trial_memory(spec, concurrent: int) -> tuple[float, str]:
    """(bytes one trial may use, where that comes from)."""
    if spec.resources.memory_gb:
        return spec.resources.memory_gb * GB, "resources.memory_gb"
    from harness.trial.calibrate import available_bytes

    share = (available_bytes(torch.device("cpu")) - RAY_RESERVE_BYTES) / max(concurrent, 1)
    return share, f"this machine's available memory less Ray's, shared by {concurrent} trial(s) at once"


def check_memory(spec, cap: int, address: str | None = None) -> None:
    """Refuse, before anything runs, a batch size whose trial would not fit in the memory it has."""
    from harness.trial.placement import micro_batch_sizes

    if address or spec.resources.gpus > 0 or spec.device == "cuda":
        return
    concurrent = max(1, (os.cpu_count() or 1) // spec.resources.cpus)
    room, source = trial_memory(spec, concurrent)
    est = estimate(spec.workload_obj())
    for batch in sorted(spec.axes.batch_sizes, reverse=True):
        trial = spec.trial_spec(spec.optimizers()[0], spec.axes.methods[0], batch, spec.axes.seeds[0])
        micro = max(micro_batch_sizes(trial, batch, spec.micro_batch_cap or cap, spec.data_parallel.workers))
        need = est.total(batch, micro)
        if need <= room:
            continue
        fixed = est.data + est.model + 8.0 * batch  # what no micro-batch size changes
        said = (f"at B={batch} a trial needs ~{need / GB:.2f} GB (data {est.data / GB:.2f}, model {est.model / GB:.3f}, "
                f"step index {8.0 * batch / GB:.2f}, activations {est.per_example * micro / GB:.2f} for a micro-batch "
                f"of {micro}, measured at {est.per_example / 1024:.1f} kB per example)")
        if fixed > room:  # the batch's index or the data set alone
            field, value = (("axes.batch_sizes", batch) if 8.0 * batch > est.data else
                            ("resources.memory_gb", spec.resources.memory_gb) if spec.resources.memory_gb else
                            ("workload", spec.workload))
            raise SpecError(field, value, f"allowed: what fits in the {room / GB:.2f} GB a trial has ({source}): "
                            f"{said}; no micro-batch makes that fit")
        fits = int((room - fixed) / est.per_example) if est.per_example else micro
        field, value = ("micro_batch_size", spec.micro_batch_size) if spec.micro_batch_size else ("micro_batch_cap", micro)
        raise SpecError(field, value, f"allowed: what fits in the {room / GB:.2f} GB a trial has ({source}): {said}; "
                        f"a micro-batch of at most {max(fits, 1)} examples would fit")
