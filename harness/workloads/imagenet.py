"""ImageNet ResNet-50 (``imagenet_resnet50``): the model of the LEGW/LARS ImageNet table and of
Goyal et al. 2017, on an ImageFolder tree the user provides, streamed (harness.data.loader).

Model: ResNet-50 as torchvision defines it (He et al. 2016, "v1.5": the stride of a downsampling
bottleneck on its 3x3 convolution; 25,557,032 parameters for 1000 classes; Kaiming-normal
convolutions, BatchNorm weights 1 and biases 0), with ghost BatchNorm (harness.trial.ghostbn) over
``bn_batch_size`` examples (default 32 per group, as Goyal et al. hold it per GPU).

Data: ``<data_dir>/train/<class>/*.JPEG`` and ``<data_dir>/val/<class>/*.JPEG`` (the val images
sorted into class folders, as the common preparation scripts do), read by a torch DataLoader with
``loader_workers`` worker processes (default: the trial's CPUs less one); training images get RandomResizedCrop(image_size) and a
horizontal flip, evaluation images Resize(image_size * 256/224) and CenterCrop(image_size)
(harness.data.imagefolder); both are normalised by the ImageNet channel means and deviations on
the device. ``image_size`` below 224 (e.g. 32 or 64) makes small CPU runs and tests possible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt
from torch import nn

from harness.data import candidate_dirs
from harness.data.imagefolder import ImageFolderSource, scan
from harness.data.loader import StreamedColumn, loader_workers
from harness.errors import DatasetMissing
from harness.trial.ghostbn import GhostBatchNorm2d
from harness.workloads.base import Dataset, ImageClassifier

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_HOW = ("ImageNet is not redistributable: download ILSVRC2012 from https://image-net.org, prepare train/ and "
        "val/ as one folder per class (the val images sorted into their classes), and give their parent with "
        "--data-dir or BATCHSCALE_DATA_DIR")


class ImageNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: The crop fed to the network (224 in the papers; smaller for CPU runs and tests).
    image_size: PositiveInt = 224
    #: DataLoader worker processes that decode and augment ahead of the trial (0: in the trial's process);
    #: default: the trial's CPUs (``resources.cpus``, its threads) less the one its own process keeps.
    loader_workers: NonNegativeInt | None = None
    #: A seeded random subset of n training images (smoke runs); all when unset.
    train_examples: PositiveInt | None = None
    #: A seeded random subset of n validation images; all when unset.
    eval_examples: PositiveInt | None = None


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = GhostBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = GhostBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = GhostBatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), GhostBatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000, layers: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), GhostBatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            for j in range(n):
                blocks.append(Bottleneck(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * Bottleneck.expansion
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ImageNetResNet50(ImageClassifier):
    """The loader has cropped and flipped the training images; ``augment`` normalises them."""

    name = "imagenet_resnet50"
    summary = "ResNet-50 (torchvision's) with ghost BatchNorm on an ImageFolder tree (ImageNet; bring your own), streamed"
    MEAN, STD = MEAN, STD
    default_optimizer = "momentum"
    Options = ImageNetOptions
    bn_batch_size = 32
    cpu_micro_batch_cap = 32
    eval_batch_size = 250
    # momentum: Goyal et al. 2017 (B0 = 256, LR 0.1, momentum 0.9, wd 1e-4, /10 at epochs 30, 60, 80
    # of 90, 5 epochs of gradual warmup). lars: the LEGW ImageNet table's 1K row (You et al. 2019):
    # LR 2^2.5, warmup 0.3125 epochs, poly(2) decay, wd 5e-4, 90 epochs.
    base_recipes = {
        "momentum": dict(base_batch_size=256, peak_lr=0.1, warmup_epochs=5.0, epochs=90,
                         decay={"kind": "multistep", "milestones_epochs": [30, 60, 80], "gamma": 0.1},
                         optimizer={"name": "momentum", "weight_decay": 1e-4}),
        "lars": dict(base_batch_size=1024, peak_lr=2**2.5, warmup_epochs=0.3125, epochs=90,
                     decay={"kind": "poly", "power": 2.0}, optimizer={"name": "lars", "weight_decay": 5e-4}),
    }
    recipe_source = ("momentum: Goyal et al. 2017 (B=256, LR 0.1, wd 1e-4, /10 at 30/60/80 of 90 epochs, 5 warmup "
                     "epochs); lars: You et al. 2019's LEGW ImageNet table, 1K row (LR 2^2.5, warmup 0.3125 epochs)")

    def chance_metric(self) -> float:
        return 1.0 / max(1, len(self._splits()[1][0]))

    def _root(self):
        dirs = candidate_dirs("imagenet", self.data_dir)
        for d in dirs:
            if (d / "train").is_dir() and (d / "val").is_dir():
                return d
        looked = ", ".join(str(d) for d in dirs) or "(no folder: no data_dir, BATCHSCALE_DATA_DIR unset)"
        raise DatasetMissing(f"ImageNet not found: looked for train/ and val/ in {looked}; {_HOW}")

    def _splits(self):
        root = self._root()
        return root, scan(root / "train"), scan(root / "val")

    def prepare(self) -> None:
        self._splits()

    def loader_workers(self, cpus: int) -> int:
        given = self.options.loader_workers
        return given if given is not None else loader_workers(cpus)

    def train_size(self) -> int:
        n = len(self._splits()[1][1])
        return self.kept(min(n, self.options.train_examples or n))

    def _load(self) -> Dataset:
        root, (classes, train), (_, val) = self._splits()
        o = self.options
        train = _subset(train, o.train_examples)
        val = _subset(val, o.eval_examples)
        tr = ImageFolderSource(root / "train", o.image_size, samples=(classes, train))
        ev = ImageFolderSource(root / "val", o.image_size, samples=(classes, val))
        if not train or not val:
            raise DatasetMissing(f"ImageNet folder {root} has no images in train/ or val/; {_HOW}")
        return Dataset((StreamedColumn(tr, o.loader_workers), tr.targets()),
                       (StreamedColumn(ev, o.loader_workers), ev.targets()),
                       {"source": str(root), "train_size": len(train), "classes": classes})

    def build_model(self):
        return ResNet50(classes=len(self.load().info["classes"]))


def _subset(samples: list, n: int | None) -> list:
    """A seeded random subset of n samples, kept in ImageFolder order; all when n is unset."""
    if not n or n >= len(samples):
        return samples
    keep = torch.randperm(len(samples), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return [samples[i] for i in keep.tolist()]


WORKLOADS = (ImageNetResNet50,)
