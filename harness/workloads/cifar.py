"""CIFAR-10 ResNets with BatchNorm: ``cifar10_resnet20`` (He, Zhang, Ren, Sun 2016, section 4.2:
3 stages of 3 basic blocks, 16/32/64 channels, identity shortcuts zero-padded where the shape
changes, 0.27M parameters) and ``cifar10_resnet18`` (the CIFAR variant of ResNet-18: a 3x3 stem,
no max-pool, 4 stages of 2 basic blocks, 64..512 channels, 1x1 projection shortcuts, 11.2M).

Data: the CIFAR-10 python files the user provides (harness.data.cifar), kept in memory as uint8.
Training batches get the standard augmentation of He et al. 2016: a random 32x32 crop of the image
padded by 4 pixels (zeros), then a horizontal flip with probability 1/2; then every channel is
normalised by the training set's mean and standard deviation. The random draws come from the
trial's training RNG, so they are the same for the same seed and continue exactly after a
checkpoint. BatchNorm statistics are over ghost batches of ``bn_batch_size`` (harness.trial.ghostbn).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from harness.data import find_files
from harness.data.cifar import FILES, TEST_FILE, TRAIN_FILES, read_batch
from harness.trial.ghostbn import GhostBatchNorm2d
from harness.workloads.base import Dataset, ImageClassifier, recipes

MEAN = (0.4914, 0.4822, 0.4465)  # per channel, over the 50K training images
STD = (0.2470, 0.2435, 0.2616)
_HOW = ("CIFAR-10 is not packaged for Debian: download cifar-10-python.tar.gz from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, extract it and give its folder (cifar-10-batches-py, or "
        "its parent) with --data-dir or BATCHSCALE_DATA_DIR")


class CifarOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Use only the first n training images (quick studies and tests); all 50K when unset.
    train_examples: PositiveInt | None = None
    #: Evaluate on the first n test images; all 10K when unset.
    eval_examples: PositiveInt | None = None
    #: The standard crop-and-flip augmentation of training batches.
    augment: bool = True


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = GhostBatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = GhostBatchNorm2d(cout)
        self.pad = 0
        self.project = None
        if stride != 1 or cin != cout:
            if shortcut == "pad":  # He et al.'s option A: subsample, pad the new channels with zeros
                self.pad, self.stride = cout - cin, stride
            else:  # option B: a 1x1 convolution
                self.project = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), GhostBatchNorm2d(cout))

    def shortcut(self, x):
        if self.project is not None:
            return self.project(x)
        if self.pad:
            x = x[:, :, ::self.stride, ::self.stride]
            return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks: int, shortcut: str, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), GhostBatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(blocks):
                layers.append(BasicBlock(cin, w, 2 if i > 0 and j == 0 else 1, shortcut))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20() -> ResNet:
    return ResNet((16, 32, 64), 3, "pad")


def resnet18() -> ResNet:
    return ResNet((64, 128, 256, 512), 2, "conv")


def crop_and_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """A random crop of each image padded by ``pad`` zero pixels, then a random horizontal flip;
    draws from torch's global RNG (the trial's training stream)."""
    n, _, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,)).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,)).to(x.device)
    flip = (torch.rand(n) < 0.5).to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None, :])  # n x h
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None, :])  # n x w
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]]  # n x h x w x c
    return out.permute(0, 3, 1, 2).contiguous()


class Cifar10ResNet(ImageClassifier):
    MEAN, STD = MEAN, STD
    default_optimizer = "momentum"
    Options = CifarOptions
    bn_batch_size = 128
    cpu_micro_batch_cap = 128
    eval_batch_size = 1000

    def chance_metric(self) -> float:
        return 0.1

    def _files(self):
        return find_files("CIFAR-10", "cifar-10-batches-py", FILES, self.data_dir, _HOW)

    def prepare(self) -> None:
        self._files()

    def train_size(self) -> int:
        n = sum(len(read_batch(path)[1]) for f, path in self._files().items() if f in TRAIN_FILES)
        return self.kept(min(n, self.options.train_examples or n))

    def _load(self) -> Dataset:
        files = self._files()
        parts = [read_batch(files[f]) for f in TRAIN_FILES]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        xt, yt = read_batch(files[TEST_FILE])
        n, ne = self.options.train_examples, self.options.eval_examples
        return Dataset((torch.from_numpy(x[:n]), torch.from_numpy(y[:n])),
                       (torch.from_numpy(xt[:ne]), torch.from_numpy(yt[:ne])),
                       {"source": str(files[TEST_FILE].parent), "train_size": len(x[:n])})

    def augment(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """A training batch as the model takes it: augmented (crop and flip) and normalised."""
        x, y = batch
        return super().augment((crop_and_flip(x) if self.options.augment else x, y))


class Cifar10ResNet20(Cifar10ResNet):
    name = "cifar10_resnet20"
    summary = "ResNet-20 (He et al. 2016, CIFAR) with ghost BatchNorm on CIFAR-10 python files (bring your own)"
    # He et al. 2016, section 4.2: B = 128, LR 0.1, momentum 0.9, weight decay 1e-4, divided by 10
    # at 32K and 48K iterations, stopped at 64K (= 82, 123 and 164 epochs of 50K images), no warmup.
    base_recipes = recipes({"momentum": 0.1, "lars": 2.0}, base_batch_size=128, warmup_epochs=0.0, epochs=164,
                           decay={"kind": "multistep", "milestones_epochs": [82, 123], "gamma": 0.1},
                           optimizer_params={"momentum": {"weight_decay": 1e-4}, "lars": {"weight_decay": 1e-4}})
    recipe_source = ("He et al. 2016 (section 4.2: B=128, LR 0.1, wd 1e-4, /10 at 32K and 48K of 64K iterations); "
                     "LARS's LR 2.0 is ours, untuned")

    def build_model(self):
        return resnet20()


class Cifar10ResNet18(Cifar10ResNet):
    name = "cifar10_resnet18"
    summary = "ResNet-18 (CIFAR variant: 3x3 stem, no max-pool) with ghost BatchNorm on CIFAR-10 python files"
    # The common CIFAR-10 ResNet-18 recipe (e.g. kuangliu/pytorch-cifar): B = 128, LR 0.1, momentum
    # 0.9, weight decay 5e-4, cosine to 0 over 200 epochs.
    base_recipes = recipes({"momentum": 0.1}, base_batch_size=128, warmup_epochs=0.0, epochs=200,
                           decay={"kind": "cosine"}, optimizer_params={"momentum": {"weight_decay": 5e-4}})
    recipe_source = "the common CIFAR-10 ResNet-18 recipe (B=128, LR 0.1, wd 5e-4, cosine, 200 epochs)"
    cpu_micro_batch_cap = 64

    def build_model(self):
        return resnet18()


WORKLOADS = (Cifar10ResNet20, Cifar10ResNet18)
