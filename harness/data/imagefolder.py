"""An ImageFolder tree (``root/<class>/<image>``, the layout of torchvision's ``ImageFolder`` and of
the ImageNet train and val folders as usually prepared), decoded with Pillow, and the standard
ImageNet transforms as torchvision defines them:

* training: ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`` (bilinear), then
  ``RandomHorizontalFlip()``;
* evaluation: ``Resize(size * 256 / 224)`` of the shorter side (bilinear), then ``CenterCrop(size)``.

The crop box follows torchvision's ``RandomResizedCrop.get_params`` (ten tries at a random area and
log-uniform aspect ratio, then a central crop at the nearest allowed ratio), and the sizes and
rounding its ``Resize`` and ``CenterCrop`` use. Why not torchvision itself: the torchvision wheels
that match the CPU torch this project installs are CUDA builds that do not import beside it
(docs/install.md). The random draws come from a generator seeded by (seed, draw) per example, not
from a worker's global RNG, so that they are reproducible whatever the loader's worker processes.

Examples come out as uint8 C x H x W tensors; the workload normalises them on the device.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

#: The image extensions torchvision's ImageFolder accepts.
EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def scan(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The classes (sorted folder names) and the (path, class index) of every image, sorted by class
    then path, as torchvision's ``ImageFolder`` orders them."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    samples = []
    for c, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in EXTENSIONS and path.is_file():
                samples.append((path, c))
    return classes, samples


def random_resized_crop_box(width: int, height: int, gen: torch.Generator, scale=(0.08, 1.0),
                            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the crop, as torchvision's ``RandomResizedCrop.get_params``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=gen))
        aspect = math.exp(float(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=gen)))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            j = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return i, j, h, w
    in_ratio = width / height  # fallback: a central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_shorter(width: int, height: int, size: int) -> tuple[int, int]:
    """The (width, height) torchvision's ``Resize(size)`` gives: the shorter side to ``size``."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's ``CenterCrop(size)`` on an image at least that big."""
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def _tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


class ImageFolderSource:
    """One split of an ImageFolder tree: ``item(i, draw)`` is image i, randomly cropped and flipped
    for ``draw >= 0`` (seeded by ``(seed, draw)``), resized and centre-cropped for ``draw == -1``."""

    def __init__(self, root: Path, size: int = 224, seed: int = 0, samples=None):
        self.root, self.size, self.seed = Path(root), size, seed
        self.classes, self.samples = scan(self.root) if samples is None else samples
        self.resize = int(round(size * 256 / 224))

    def __len__(self) -> int:
        return len(self.samples)

    def targets(self) -> torch.Tensor:
        return torch.tensor([c for _, c in self.samples], dtype=torch.long)

    def item(self, index: int, draw: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.samples[index][0]) as f:
            img = f.convert("RGB")
        if draw < 0:
            img = img.resize(resize_shorter(*img.size, self.resize), Image.BILINEAR)
            if min(img.size) < self.size:  # torchvision pads a too-small image; an ImageNet one never is
                img = img.resize((max(img.size[0], self.size), max(img.size[1], self.size)), Image.BILINEAR)
            return _tensor(img.crop(center_crop_box(*img.size, self.size)))
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, draw]).generate_state(1)[0]))
        top, left, h, w = random_resized_crop_box(*img.size, gen)
        img = img.crop((left, top, left + w, top + h)).resize((self.size, self.size), Image.BILINEAR)
        if float(torch.rand(1, generator=gen)) < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return _tensor(img)
