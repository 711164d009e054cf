"""Data sets held on the training device, batches drawn there.

Three disjoint splits (avb.images says how each set is cut): training draws
batches from `train`; everything chosen during training (checkpoints, trials,
learning rates) reads `valid`; only a final evaluation reads `test`.

`Dataset.sample` indexes a device tensor with device-side random indices: no
DataLoader, no host round trip in the hot loop. Image sets with grey values
are binarized dynamically (`pixel > uniform` each time a batch is drawn);
evaluation batches are binarized once with a fixed seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from avb import images
from avb.config import Config
from avb.images import SPLITS, DataError


@dataclass
class Dataset:
    train: Tensor  # [N, *x_shape], on the device: float in [0, 1], or uint8 0..255 (scaled per batch)
    valid: Tensor  # [M, *x_shape]
    test: Tensor  # [K, *x_shape]
    binarize: bool  # Bernoulli-sample pixels on every draw

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        """A training batch [batch_size, *x_shape] drawn with replacement, on the device."""
        idx = torch.randint(len(self.train), (batch_size,), device=self.train.device, generator=generator)
        return self._maybe_binarize(_as_float(self.train[idx]), generator)

    def eval_batch(self, n: int, split: str = "valid", seed: int = 0) -> Tensor:
        """The first n points of `split` ("train", "valid" or "test"), binarized with a fixed seed
        when the set is grey-valued."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is unknown; allowed: {', '.join(SPLITS)}")
        x = getattr(self, split)[:n]
        return self._maybe_binarize(_as_float(x), torch.Generator(x.device).manual_seed(seed))

    def _maybe_binarize(self, x: Tensor, generator: torch.Generator) -> Tensor:
        if not self.binarize:
            return x
        return (x > torch.rand(x.shape, device=x.device, generator=generator)).to(x.dtype)


def _as_float(x: Tensor) -> Tensor:
    """Image sets are held as uint8 (4x less memory); batches are scaled to [0, 1] when drawn."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def synthetic() -> Tensor:
    """The paper's four 2x2 images [4, 1, 2, 2] (Figure 2)."""
    return images.synthetic_images()


def load_dataset(cfg: Config, device: torch.device | str) -> Dataset:
    """The data set named by `cfg.dataset`, split by `cfg.split_seed`, moved to `device`."""
    parts = images.load(cfg)
    binarize = cfg.dataset in images.BINARIZED and cfg.likelihood == "bernoulli"
    return Dataset(*(parts[name].to(device) for name in SPLITS), binarize=binarize)


__all__ = ["DataError", "Dataset", "load_dataset", "synthetic"]
