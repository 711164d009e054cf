"""Data sets held on the training device, batches drawn there.

`Dataset.sample` indexes a device tensor with device-side random indices: no
DataLoader, no host round trip in the hot loop. Image sets with grey values
are binarized dynamically (`pixel > uniform` each time a batch is drawn).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avb.config import Config


class DataError(RuntimeError):
    """The data set cannot be loaded; the message says what to do."""


@dataclass
class Dataset:
    train: Tensor  # [N, *x_shape], on the device: float in [0, 1], or uint8 0..255 (scaled per batch)
    test: Tensor  # [M, *x_shape]
    binarize: bool  # Bernoulli-sample pixels on every draw

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        idx = torch.randint(len(self.train), (batch_size,), device=self.train.device, generator=generator)
        return self._maybe_binarize(_as_float(self.train[idx]), generator)

    def eval_batch(self, n: int, seed: int = 0) -> Tensor:
        """The first n test points, binarized with a fixed seed when the set is grey-valued."""
        return self._maybe_binarize(_as_float(self.test[:n]), torch.Generator(self.test.device).manual_seed(seed))

    def _maybe_binarize(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if not self.binarize:
            return x
        return (x > torch.rand(x.shape, device=x.device, generator=generator)).to(x.dtype)


def _as_float(x: Tensor) -> Tensor:
    """Image sets are held as uint8 (avb.images: 4x less memory); batches are scaled to [0, 1] when drawn."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def synthetic() -> Tensor:
    """The paper's synthetic set (Figure 2): four 2x2 binary images, one pixel on each: [4, 1, 2, 2]."""
    return torch.eye(4).view(4, 1, 2, 2)


def digits() -> Tensor:
    """scikit-learn's 1,797 8x8 digits scaled to [0, 1]: [N, 1, 8, 8] (ships with the package)."""
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().images, dtype=torch.float32).div(16).unsqueeze(1)


def load_dataset(cfg: Config, device: torch.device | str) -> Dataset:
    """The data set named by `cfg.dataset`, moved to `device`."""
    if cfg.dataset == "synthetic":
        x = synthetic()
        return Dataset(x.to(device), x.to(device), binarize=False)
    if cfg.dataset == "digits":
        x = digits()[torch.randperm(1797, generator=torch.Generator().manual_seed(0))]
        return Dataset(x[:1497].to(device), x[1497:].to(device), binarize=cfg.likelihood == "bernoulli")
    from avb import images  # torchvision and friends; imported only when asked for

    train, test = images.load(cfg)
    binarize = cfg.dataset in images.BINARIZED and cfg.likelihood == "bernoulli"
    return Dataset(train.to(device), test.to(device), binarize=binarize)
