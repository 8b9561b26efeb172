"""CIFAR-10 ResNets with ghost BatchNorm (issue 13, first part): the CIFAR-10 python format, the
standard augmentation deterministic per seed, BatchNorm groups independent of the micro-batch, a
trial that resumes exactly, and a sweep of a few steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.data.cifar import TEST_FILE, TRAIN_FILES, read_batch, write_batch
from harness.errors import DatasetMissing, SpecError
from harness.trial.ghostbn import GhostBatchNorm2d, set_ghost_batch
from harness.spec import TrialSpec, load_spec
from harness.trial.loop import Trial
from harness.workloads.cifar import crop_and_flip, resnet18, resnet20
from tests.test_arms import resumed, same_row
from tests.conftest import here
from tests.test_sweep import load, write_spec


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """A tiny CIFAR-10 folder in the real format: 5 x 64 training images, 100 test images, each
    class a different mean colour so that a few steps learn something."""
    root = tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.float64) * 0.5 + (y[:, None, None, None] * 12.0)
        return x.clip(0, 255).astype(np.uint8), y

    for name in TRAIN_FILES:
        write_batch(root / name, *make(64))
    write_batch(root / TEST_FILE, *make(100))
    return root.parent


def spec(cifar_dir, **over) -> TrialSpec:
    fields = {"workload": "cifar10_resnet20", "data_dir": str(cifar_dir), "batch_size": 64, "method": "none",
              "budget": {"epochs": 1}, "threads": 1, "eval": {"per_epoch": 2}, "noise_scale": False,
              "micro_batch_cap": 32, "bn_batch_size": 16, **over}
    return TrialSpec(**fields).check()


def test_the_cifar10_python_files_are_read_and_a_missing_folder_says_how_to_get_them(cifar_dir, tmp_path):
    x, y = read_batch(cifar_dir / "cifar-10-batches-py" / "data_batch_1")
    assert x.shape == (64, 3, 32, 32) and x.dtype == np.uint8 and y.dtype == np.int64 and y.max() < 10
    data = spec(cifar_dir).workload_obj().load()
    assert data.train_size == 320 and data.eval_size == 100
    with pytest.raises(DatasetMissing, match=r"CIFAR-10 not found.*cs.toronto.edu/~kriz/cifar.html"):
        TrialSpec(workload="cifar10_resnet20", data_dir=str(tmp_path)).workload_obj().load()


def test_crop_and_flip_is_a_window_of_the_padded_image_and_the_same_for_the_same_seed():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    torch.manual_seed(5)
    a = crop_and_flip(x, pad=2)
    torch.manual_seed(5)
    assert torch.equal(a, crop_and_flip(x, pad=2))
    torch.manual_seed(6)
    assert not torch.equal(a, crop_and_flip(x, pad=2))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output is one of the 5 x 5 windows, flipped or not
        windows = [w for dy in range(5) for dx in range(5) for w in (padded[i, :, dy:dy + 8, dx:dx + 8],
                                                                      padded[i, :, dy:dy + 8, dx:dx + 8].flip(2))]
        assert any(torch.equal(a[i], w) for w in windows)


def test_accumulated_micro_batches_equal_one_pass_split_into_ghost_batches():
    """B = 256 of ResNet-20 in micro-batches of 32 with bn_batch_size 32, against one pass of 256
    split into 8 ghost batches: the same gradient within 1e-5 and the same running statistics (16x16
    images: the equivalence does not depend on the size, and float64 at 32x32 took two minutes)."""
    torch.manual_seed(0)
    x, y = torch.randn(256, 3, 16, 16), torch.randint(0, 10, (256,))
    models = [resnet20().double(), None]
    models[1] = __import__("copy").deepcopy(models[0])
    for m in models:
        assert set_ghost_batch(m, 32) == 19  # the stem's and every block's
    x = x.double()
    loss_fn = torch.nn.functional.cross_entropy
    loss_fn(models[0](x), y).backward()
    for start in range(0, 256, 32):
        (loss_fn(models[1](x[start:start + 32]), y[start:start + 32]) * 32 / 256).backward()
    g0 = torch.cat([p.grad.flatten() for p in models[0].parameters()])
    g1 = torch.cat([p.grad.flatten() for p in models[1].parameters()])
    assert ((g0 - g1).norm() / g0.norm()).item() < 1e-5
    one_batch = __import__("copy").deepcopy(models[0])  # and it is not BatchNorm over the whole batch
    set_ghost_batch(one_batch, 256)
    one_batch.zero_grad()
    loss_fn(one_batch(x), y).backward()
    g2 = torch.cat([p.grad.flatten() for p in one_batch.parameters()])
    assert ((g0 - g2).norm() / g0.norm()).item() > 1e-3
    for a, b in zip(models[0].modules(), models[1].modules()):
        if isinstance(a, GhostBatchNorm2d):
            assert torch.allclose(a.running_mean, b.running_mean) and torch.allclose(a.running_var, b.running_var)
            assert int(a.num_batches_tracked) == int(b.num_batches_tracked) == 8


def test_a_resnet20_trial_records_its_ghost_batch_and_resumes_exactly(cifar_dir):
    s = spec(cifar_dir, budget={"epochs": 1.0})
    whole = Trial(s).run()
    assert whole.summary["bn_batch_size"] == 16 and whole.summary["micro_batch_size"] == 32
    assert same_row(resumed(s, 2).run().measurements[-1], whole.measurements[-1])


def test_resnet18_builds_and_bn_batch_size_is_checked(cifar_dir):
    assert resnet18()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(SpecError, match=r"bn_batch_size.*24.*a divisor of batch_size per worker \(64\)"):
        spec(cifar_dir, bn_batch_size=24)
    with pytest.raises(SpecError, match=r"micro_batch_size.*8.*a multiple of bn_batch_size \(16\)"):
        spec(cifar_dir, micro_batch_size=8)
    with pytest.raises(SpecError, match=r"bn_batch_size.*allowed: none for mnist1d_mlp"):
        load_spec(data={"workload": "mnist1d_mlp", "bn_batch_size": 32}, kind="trial")


# slow (~17 s, Intel 2-core VM): real local Ray sweep of 2 ResNet-20 trials on the tiny CIFAR-10 folder
@pytest.mark.slow
@pytest.mark.ray
def test_a_resnet20_sweep_of_a_few_steps(cifar_dir, tmp_path, shared_ray):
    path = write_spec(tmp_path, {"name": "r20", "workload": "cifar10_resnet20", "data_dir": str(cifar_dir),
                                 "budget": {"examples": 256}, "eval": {"per_epoch": 1}, "bn_batch_size": 32,
                                 "micro_batch_cap": 64, "axes": {"batch_sizes": [64, 128], "methods": ["legw"]}})
    proc = here(["sweep", path, "--results", tmp_path / "results", "--quiet"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _, trials, _ = load(tmp_path / "results" / "r20")
    assert (trials.status == "complete").all() and set(trials.bn_batch_size) == {32}
    assert sorted(trials.steps) == [2, 4]


def test_batchscale_train_runs_resnet20_on_a_cifar_folder(cifar_dir, tmp_path):
    import json

    path = write_spec(tmp_path, json.loads(spec(cifar_dir).model_dump_json(exclude_defaults=True)))
    proc = here(["train", path, "--out", tmp_path / "out", "--quiet"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["bn_batch_size"] == 16 and summary["steps"] == 5
