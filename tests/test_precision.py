"""``precision: bf16``, ``channels_last`` and ``compile`` (harness.trial.precision): each changes how the
model computes, not what the trial is; each is recorded and resumes exactly."""

from __future__ import annotations

import shutil

import pytest
import torch

from harness.errors import SpecError
from harness.trial.precision import Precise
from harness.spec import load_spec
from harness.trial.loop import Trial
from tests.test_arms import MLP, resumed, same_row, trial_spec
from tests.test_cifar import cifar_dir, spec  # noqa: F401 (a fixture)


#: bf16 autocast on a CPU without bf16 instructions is ~9x float32 (a ResNet-20 step of 64 images 6.7 s,
#: an evaluation of the 100 test images 6.8 s on the 2-core VM): three steps of 32, evaluated at 64 and 96
SHORT = {"batch_size": 32, "budget": {"examples": 96}, "eval": {"every_examples": 64}}


# slow (~25 s on the 2-core VM): ResNet-20 CIFAR trial run to completion in bf16 autocast on CPU
@pytest.mark.slow
def test_bf16_runs_the_convolutions_in_bfloat16_and_keeps_weights_and_losses_in_float32(cifar_dir):  # noqa: F811
    plain, bf16 = Trial(spec(cifar_dir, **SHORT)), Trial(spec(cifar_dir, precision="bf16", **SHORT))
    seen = []
    bf16.model.inner.stem[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    assert isinstance(bf16.model, Precise) and not isinstance(plain.model, Precise)
    a, b = plain._train_step(), bf16._train_step()
    assert seen and set(seen) == {torch.bfloat16} and isinstance(b, float)
    assert all(p.dtype == torch.float32 for p in bf16.params)
    assert b == pytest.approx(a, rel=2e-2) and b != a  # bf16's 8-bit mantissa: close, not equal
    result = bf16.run()
    assert result.summary["precision"] == "bf16" and result.status == "complete"


# slow (~40 s on the 2-core VM): bf16 channels_last ResNet-20 steps on CPU, whole and resumed at step 2
@pytest.mark.slow
def test_a_bf16_channels_last_trial_resumes_exactly_and_channels_last_alone_changes_nothing(cifar_dir):  # noqa: F811
    s = spec(cifar_dir, precision="bf16", channels_last=True, **SHORT)
    whole = Trial(s).run().measurements
    assert same_row(resumed(s, 2).run().measurements[-1], whole[-1])
    last = Trial(spec(cifar_dir, channels_last=True))
    assert last.model.inner.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    losses = [last._train_step() for _ in range(2)]
    plain = Trial(spec(cifar_dir))  # after: each Trial reseeds the augmentation's RNG
    assert losses == pytest.approx([plain._train_step() for _ in range(2)], rel=1e-4)


# slow (~67 s on the 2-core VM): torch.compile (Inductor builds C++ on CPU) of an MLP trial, vs the eager run
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's CPU backend needs a C compiler")
def test_a_compiled_trial_equals_the_eager_one():
    eager = Trial(trial_spec(noise_scale=False)).run().measurements
    compiled = Trial(trial_spec(noise_scale=False, compile=True))
    assert list(compiled.model.state_dict()) == [f"inner.{k}" for k in Trial(trial_spec()).model.state_dict()]
    for a, b in zip(eager, compiled.run().measurements):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["metric"] == pytest.approx(a["metric"], abs=1e-9)


def test_channels_last_is_refused_with_simulated_or_decentralized_workers():
    with pytest.raises(SpecError, match=r"channels_last.*allowed: false with data_parallel.algorithm dmsgd") as e:
        load_spec(data={**MLP, "batch_size": 256, "channels_last": True,
                        "data_parallel": {"workers": 4, "algorithm": "dmsgd"}}, kind="trial")
    assert "\n" not in str(e.value)
    with pytest.raises(SpecError, match=r"precision.*fp8"):
        load_spec(data={**MLP, "precision": "fp8"}, kind="trial")
