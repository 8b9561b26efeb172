"""How a trial's model computes on its device: ``precision`` (float32, or bf16 autocast), the
``channels_last`` memory format for convolutional models, and an optional ``torch.compile``.

* ``bf16``: the forward pass runs under ``torch.autocast(dtype=torch.bfloat16)`` (matrix products
  and convolutions in bfloat16, reductions and normalisations in float32, as autocast's op lists
  decide), and the model's output is cast back to float32 so that every loss is computed in
  float32. The weights, gradients and optimizer state stay float32: bf16 has float32's exponent
  range, so no loss scaling is needed (unlike float16). Micikevicius et al. 2018 for mixed
  precision; bf16 as TPUs and Ampere GPUs run it.
* ``channels_last``: the model's 4-D weights and its 4-D inputs in NHWC order, the layout cuDNN's
  fastest convolution kernels want (and oneDNN's on a CPU).
* ``compile``: ``torch.compile`` of the forward pass (TorchInductor by default), which removes
  Python overhead and fuses elementwise operations; the first steps pay the compilation.

``Precise`` wraps the model (its state-dict keys gain the prefix ``inner.``); a float32 model
without channels-last or compilation is returned as it is, so checkpoints of such trials are
unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class Precise(nn.Module):
    """``inner`` under bf16 autocast, in channels-last order and/or compiled; float32 outputs."""

    def __init__(self, inner: nn.Module, device_type: str, bf16: bool, channels_last: bool, compile: bool):
        super().__init__()
        self.inner, self.device_type, self.bf16, self.channels_last = inner, device_type, bf16, channels_last
        if channels_last:
            inner.to(memory_format=torch.channels_last)
        # not a registered submodule: the state dict stays ``inner.*``; a deep copy (ConAdv's
        # snapshot of the weights) compiles its own copy of ``inner``
        object.__setattr__(self, "_run", torch.compile(inner) if compile else inner)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.bf16:
            return self._run(x, *args, **kwargs)
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self._run(x, *args, **kwargs)
        return _to_float32(out)


def _to_float32(out):
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, tuple):
        return tuple(_to_float32(o) for o in out)
    return out


def for_device(model: nn.Module, precision: str, channels_last: bool, compile: bool,
               device: torch.device) -> nn.Module:
    """The model as the trial runs it (see the module's docstring)."""
    if precision == "float32" and not channels_last and not compile:
        return model
    return Precise(model, device.type, precision == "bf16", channels_last, compile)
