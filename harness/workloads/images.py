"""Fashion-MNIST and MNIST workloads, read from the original IDX files.

``fmnist_lstm`` is the LEGW paper's MNIST-LSTM set-up (You et al. 2019, after Google's
"MNIST-LSTM" example): each 28x28 image is read as a sequence of 28 rows of 28 pixels by one LSTM
layer of 128 units, and a linear classifier reads the last hidden state. The paper ran it on
MNIST with B0 = 128 up to 8K; MNIST is not packaged offline here, so we run the same model on
Fashion-MNIST (Debian ``dataset-fashion-mnist``) and keep ``mnist_lstm`` for users who have the
MNIST files. ``fmnist_cnn`` is a small CNN without BatchNorm (so micro-batch accumulation equals
the big batch exactly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt
from torch import nn

from harness.data import find_files
from harness.data.idx import read_idx, read_idx_shape
from harness.workloads.base import Dataset, Workload, recipes

_IDX = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


class ImageOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    #: Use only the first n training images (quick studies and tests); all when unset.
    train_examples: PositiveInt | None = None
    #: Evaluate on the first n test images; all when unset.
    eval_examples: PositiveInt | None = None


class RowLSTM(nn.Module):
    def __init__(self, rows: int = 28, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(rows, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):  # x: (B, 28, 28) floats, a row per time step
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x):  # x: (B, 28, 28)
        return self.head(self.features(x.unsqueeze(1)))


class IdxImageWorkload(Workload):
    metric = "accuracy"
    higher_is_better = True
    Options = ImageOptions
    dataset_title: str
    dataset_dir: str
    system_dirs: tuple[str, ...] = ()
    missing_how: str

    def chance_metric(self) -> float:
        return 0.1  # ten balanced classes

    def _files(self):
        return find_files(self.dataset_title, self.dataset_dir, _IDX, self.data_dir, self.missing_how,
                          self.system_dirs, gz_ok=True)

    def prepare(self) -> None:  # the files exist (else one clear error); workers read them
        self._files()

    def train_size(self) -> int:
        n = read_idx_shape(self._files()[_IDX[1]])[0]
        return self.kept(min(n, self.options.train_examples or n))

    def _load(self) -> Dataset:
        files = self._files()
        x, y, xt, yt = (torch.from_numpy(read_idx(files[f]).copy()) for f in _IDX)
        n, ne = self.options.train_examples, self.options.eval_examples
        return Dataset((x[:n], y[:n].long()), (xt[:ne], yt[:ne].long()),
                       {"source": str(files[_IDX[0]].parent), "train_size": len(x[:n])})

    @staticmethod
    def inputs(x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1]; the images are held as uint8 (a training batch arrives converted)."""
        return x if x.is_floating_point() else x.float().div_(255.0)

    def augment(self, batch):
        """A training batch as the model takes it: pixels in [0, 1], so that adversarial
        augmentation (harness.trial.adversarial) perturbs real values."""
        x, y = batch
        return self.inputs(x), y

    def loss(self, model, batch):
        x, y = batch
        return F.cross_entropy(model(self.inputs(x)), y)

    def eval_sums(self, model, batch):
        x, y = batch
        logits = model(self.inputs(x))
        return (F.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(1) == y).sum().item(), len(y))


_FMNIST_HOW = ("install the Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist), or put "
               "the four IDX files in <data_dir>/fashion-mnist with --data-dir or BATCHSCALE_DATA_DIR")
_MNIST_HOW = ("MNIST is not packaged for Debian: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
              "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in <data_dir>/mnist, with --data-dir or "
              "BATCHSCALE_DATA_DIR")

# Base recipes: B0 = 128 as in the LEGW paper's MNIST-LSTM, 10 epochs, 0.05-epoch warmup, poly-2
# decay. The paper does not publish its MNIST-LSTM learning rates, so the peak LRs were tuned here:
# a grid per optimizer at B0, keeping the smallest LR within 0.5 points of the best final accuracy
# (docs/workloads.md has the grid and every result).
_LSTM_RECIPES = recipes({"momentum": 0.4, "adam": 8e-3, "lars": 4.0, "lamb": 8e-3}, base_batch_size=128,
                        warmup_epochs=0.05, epochs=10, optimizer_params={"lamb": {"weight_decay": 0.0}})


class FashionMnistLSTM(IdxImageWorkload):
    name = "fmnist_lstm"
    summary = "LEGW's MNIST-LSTM (28 rows x 28 features, LSTM 128, linear head) on Fashion-MNIST"
    dataset_title, dataset_dir = "Fashion-MNIST", "fashion-mnist"
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    missing_how = _FMNIST_HOW
    default_optimizer = "momentum"
    base_recipes = _LSTM_RECIPES
    recipe_source = "B0=128 from You et al. 2019 (MNIST-LSTM); LR, warmup, decay tuned here (docs/workloads.md)"
    cpu_micro_batch_cap = 128  # fastest here: 11.2K examples/s on 1 thread vs 6.9K at 256 (docs/workloads.md)

    def build_model(self):
        return RowLSTM()


class MnistLSTM(FashionMnistLSTM):
    name = "mnist_lstm"
    summary = "LEGW's MNIST-LSTM on real MNIST IDX files (bring your own)"
    dataset_title, dataset_dir = "MNIST", "mnist"
    system_dirs = ()
    missing_how = _MNIST_HOW


class FashionMnistCNN(IdxImageWorkload):
    name = "fmnist_cnn"
    summary = "Small CNN without BatchNorm (2 conv + 2 dense) on Fashion-MNIST"
    dataset_title, dataset_dir = "Fashion-MNIST", "fashion-mnist"
    system_dirs = ("/usr/share/datasets/fashion-mnist",)
    missing_how = _FMNIST_HOW
    default_optimizer = "momentum"
    # Tuned here at B0=128 (docs/workloads.md): smallest LR within 0.5 points of the best.
    base_recipes = recipes({"momentum": 0.05, "lars": 4.0}, base_batch_size=128, warmup_epochs=0.05, epochs=10,
                           optimizer_params={"lars": {"weight_decay": 5e-4}})
    recipe_source = "tuned here at B0=128 (docs/workloads.md)"
    cpu_micro_batch_cap = 64

    def build_model(self):
        return SmallCNN()


WORKLOADS = (FashionMnistLSTM, MnistLSTM, FashionMnistCNN)
