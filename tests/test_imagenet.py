"""ImageNet ResNet-50 from an ImageFolder tree, streamed by a DataLoader (issue 13): the folder
format, torchvision's transforms, the loader serving the trial's requests in the stream's order,
augmentations independent of the worker processes, and a trial that resumes exactly, on a tiny
tree of generated JPEGs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from harness.data.imagefolder import (ImageFolderSource, center_crop_box, random_resized_crop_box, resize_shorter,
                                      scan)
from harness.errors import DatasetMissing
from harness.spec import TrialSpec
from harness.trial.loop import Trial
from harness.workloads.imagenet import ResNet50
from tests.conftest import here
from tests.test_arms import resumed, same_row
from tests.test_sweep import load, write_spec


def make_imagefolder(root, classes=3, train=8, val=3, seed=0):
    """train/ and val/ with one folder per class of JPEGs of random sizes, each class tinted."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = int(rng.integers(36, 80)), int(rng.integers(36, 80))
                img = rng.integers(0, 90, (h, w, 3))
                img[..., c % 3] += 160
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:04d}.JPEG", quality=90)
    return root


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("imagenet"))


def spec(data_dir, workers=2, **over) -> TrialSpec:
    fields = {"workload": "imagenet_resnet50", "data_dir": str(data_dir), "batch_size": 12, "micro_batch_size": 6,
              "bn_batch_size": 6, "threads": 1, "method": "none", "budget": {"examples": 72},
              "eval": {"every_examples": 24}, "workload_options": {"image_size": 32, "loader_workers": workers},
              "recipe": {"base_batch_size": 12, "peak_lr": 0.002, "warmup_epochs": 0}, **over}
    return TrialSpec(**fields).check()


def test_the_folder_is_read_in_imagefolder_order_and_a_missing_one_says_how_to_get_it(imagenet_dir, tmp_path):
    classes, samples = scan(imagenet_dir / "train")
    assert classes == ["n00000000", "n00000001", "n00000002"] and len(samples) == 24
    assert [c for _, c in samples] == sorted(c for _, c in samples)  # by class, then by path
    data = spec(imagenet_dir).workload_obj().load()
    assert data.train_size == 24 and data.eval_size == 9 and data.train[1].tolist() == [c for _, c in samples]
    with pytest.raises(DatasetMissing, match=r"ImageNet not found.*train/ and val/.*image-net.org"):
        TrialSpec(workload="imagenet_resnet50", data_dir=str(tmp_path)).workload_obj().load()


def test_the_transforms_follow_torchvision_s_definitions():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(500, 375, gen)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        assert 0.08 * 500 * 375 * 0.9 <= h * w and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # the fallback of a very wide image: a central crop at the largest allowed ratio
    assert random_resized_crop_box(1000, 10, torch.Generator().manual_seed(0), scale=(0.99, 1.0)) == (0, 493, 10, 13)
    assert resize_shorter(500, 375, 256) == (341, 256) and resize_shorter(375, 500, 256) == (256, 341)
    assert center_crop_box(341, 256, 224) == (58, 16, 282, 240)
    try:  # where torchvision imports (it does not beside the CPU torch this project installs)
        from torchvision.transforms import RandomResizedCrop
    except Exception:
        return
    from PIL import Image

    img = Image.new("RGB", (500, 375))
    for seed in range(20):
        torch.manual_seed(seed)
        ours = random_resized_crop_box(500, 375, torch.default_generator)
        torch.manual_seed(seed)
        assert ours == tuple(RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)))


def test_training_images_are_augmented_per_draw_and_evaluation_images_are_fixed(imagenet_dir):
    source = ImageFolderSource(imagenet_dir / "train", size=32)
    a, b = source.item(5, draw=7), source.item(5, draw=8)
    assert a.shape == (3, 32, 32) and a.dtype == torch.uint8
    assert torch.equal(a, source.item(5, draw=7)) and not torch.equal(a, b)
    assert torch.equal(source.item(5, -1), source.item(5, -1))


def test_resnet50_is_torchvision_s_architecture():
    """25,557,032 parameters for 1000 classes, as torchvision's resnet50 has."""
    assert sum(p.numel() for p in ResNet50().parameters()) == 25_557_032
    assert ResNet50(classes=3)(torch.zeros(2, 3, 32, 32)).shape == (2, 3)


def test_the_loader_workers_are_the_trial_s_cpus_less_one_unless_the_spec_names_them(imagenet_dir):
    """A trial of 3 CPUs reads ahead with 2 DataLoader workers, one of 1 CPU decodes in its own
    process, and ``workload_options.loader_workers`` overrides both; the summary records them."""
    threads = torch.get_num_threads()
    try:
        for cpus, given, expected in ((3, None, 2), (1, None, 0), (1, 2, 2)):
            trial = Trial(spec(imagenet_dir, workers=given, threads=cpus))
            columns = [*trial.data.train[:1], *trial.data.eval[:1]]
            assert [c.workers for c in columns] == [expected, expected], (cpus, given)
            assert trial.summary()["loader_workers"] == expected
            assert trial.workload.loader_workers(cpus) == expected
    finally:
        torch.set_num_threads(threads)
    assert TrialSpec(workload="mnist1d_mlp").workload_obj().loader_workers(4) is None  # in memory: no loader


# slow (~22 s on the 2-core VM): ResNet-50 trial run twice on CPU: with 2 DataLoader workers and with none
@pytest.mark.slow
def test_a_streamed_trial_is_served_by_the_loader_and_does_not_depend_on_its_workers(imagenet_dir):
    """Every training and evaluation example comes from the DataLoader's read-ahead (none decoded
    on demand), and 2 worker processes give the same measurements as none."""
    trial = Trial(spec(imagenet_dir))
    result = trial.run()
    assert result.status == "complete" and trial.stream.position == 72
    assert trial.data.train[0].served == {"loader": 72, "direct": 0}
    assert trial.data.eval[0].served == {"loader": 27, "direct": 0}  # 3 evaluations of the 9 val images
    alone = Trial(spec(imagenet_dir, workers=0)).run()
    assert all(same_row(a, b) for a, b in zip(result.measurements, alone.measurements))


# slow (~38 s on the 2-core VM): ResNet-50 trial run whole, then again stopped at step 3 and resumed, on CPU
@pytest.mark.slow
def test_a_streamed_trial_resumes_at_the_exact_position(imagenet_dir):
    s = spec(imagenet_dir)
    whole = Trial(s).run().measurements
    again = resumed(s, 3)
    assert same_row(again.run().measurements[-1], whole[-1])
    assert again.data.train[0].served["direct"] == 0  # the plan restarted at the checkpoint's position


def test_batchscale_train_runs_resnet50_on_an_imagefolder_tree(imagenet_dir, tmp_path):
    path = write_spec(tmp_path, json.loads(spec(imagenet_dir).model_dump_json(exclude_defaults=True)))
    proc = here(["train", path, "--out", tmp_path / "out", "--quiet"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["bn_batch_size"] == 6 and summary["steps"] == 6
    assert math.isfinite(summary["final_metric"])


SMALL = ["--set", "workload_options.image_size=32", "--set", "workload_options.loader_workers=0"]


def test_the_legw_imagenet_study_plans_the_paper_s_table(imagenet_dir):
    """``batchscale plan`` of the published study: LARS from 2^2.5 at 1K to 2^5 at 32K, warmup 0.3125
    to 10 epochs (the LEGW ImageNet table), 90 epochs, 12 trials."""
    # the generated tree holds 24 images: the paper's batches repeat them (repeat_examples)
    proc = here(["plan", "legw_imagenet", "--set", f"data_dir={imagenet_dir}", *SMALL, "--set", "repeat_examples=true",
                 "--probe-seconds", "0.1"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "trials: 12 = legw 6, goyal 6" in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["legw"]]
    assert [int(r[1]) for r in rows] == [1024 * 2**i for i in range(6)]
    assert [float(r[4]) for r in rows] == [2.5 + 0.5 * i for i in range(6)]  # log2 of the peak LR
    assert [float(r[6]) for r in rows] == [0.3125 * 2**i for i in range(6)]  # warmup epochs


# slow (~37 s, Intel 2-core VM): runs legw_imagenet via real Ray: 4 ResNet-50 bf16 trials on generated JPEGs, and its report
@pytest.mark.slow
@pytest.mark.ray
def test_the_legw_imagenet_study_runs_cut_down_on_generated_data(imagenet_dir, tmp_path, shared_ray):
    # 16x16 crops (ResNet-50's strides end at 1x1): a quarter of the 32x32 compute, the same study
    cut = ["--set", f"data_dir={imagenet_dir}", "--set", "workload_options.image_size=16", "--set",
           "workload_options.loader_workers=0", "--set", "budget.epochs=1", "--set", "axes.batch_sizes=[12, 24]",
           "--set", "bn_batch_size=6", "--set", "resources.cpus=1", "--results", str(tmp_path / "results"), "--quiet"]
    proc = here(["reproduce", "legw_imagenet", *cut])
    assert proc.returncode == 1 and "resources.gpus 1: this machine has 0 GPU(s)" in proc.stderr
    assert not (tmp_path / "results").exists()  # refused before anything was written
    proc = here(["reproduce", "legw_imagenet", *cut, "--set", "resources.gpus=0"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    trials = load(tmp_path / "results" / "legw_imagenet")[1]
    assert len(trials) == 4 and set(trials.status) <= {"complete", "diverged"}
    assert set(trials.precision) == {"bf16"} and set(trials.bn_batch_size) == {6}


def test_requests_off_the_plan_are_decoded_directly_without_disturbing_it(imagenet_dir):
    """The noise probe's random micro-batches: decoded in the trial's process (evaluation transform),
    without restarting the loader, and the next step is served by the loader as planned."""
    trial = Trial(spec(imagenet_dir))
    trial._train_step()
    column = trial.data.train[0]
    assert column.restarts == 1 and column.served == {"loader": 12, "direct": 0}
    for _ in range(3):
        assert column[torch.tensor([5, 1, 7])].shape == (3, 3, 32, 32)
    trial._train_step()
    assert column.restarts == 1 and column.served == {"loader": 24, "direct": 9}


def test_a_trial_s_loader_workers_exit_when_it_ends_or_is_dropped(imagenet_dir):
    """A DataLoader iterator freed by the cyclic garbage collector stops its workers slowly, about
    5 s each (10 s here, whenever the collector comes: a 2 s test of this file took 48 s, and a
    set-up 79 s). A trial closes its loaders when it ends (the workers have exited when ``run``
    returns), and a trial dropped mid-epoch has them closed by the column, before the collector."""
    import gc

    from harness.data import loader

    def loaders_of(trial):
        columns = [c for c in trial.data.train + trial.data.eval if isinstance(c, loader.StreamedColumn)]
        return [lo for lo in loader._OPEN if any(lo in (c._batches, c._eval) for c in columns)]

    trial, seen = Trial(spec(imagenet_dir)), []
    trial.run(on_eval=lambda t, row: seen.extend(w for lo in loaders_of(t) for w in lo._batches._workers))
    assert len(seen) >= 2 and not loaders_of(trial)
    assert [w.is_alive() for w in seen] == [False] * len(seen) and {w.exitcode for w in seen} == {0}
    column = trial.data.train[0]  # closed, it serves a further step from a new plan, augmented
    served, restarts = dict(column.served), column.restarts
    trial._train_step()
    assert column.restarts == restarts + 1 and column.served["loader"] == served["loader"] + 12
    assert column.served["direct"] == served["direct"]
    column.close()
    dropped = Trial(spec(imagenet_dir))
    for _ in range(2):  # mid-epoch: the endless training plan has batches read ahead
        dropped._train_step()
    opened = loaders_of(dropped)
    workers = [w for lo in opened for w in lo._batches._workers]
    assert len(opened) == 1 and len(workers) == 2 and all(w.is_alive() for w in workers)
    del dropped
    gc.collect()
    assert not set(opened) & loader._OPEN  # closed by the column, not left to the collector
    assert [w.is_alive() for w in workers] == [False, False] and {w.exitcode for w in workers} == {0}
