"""One place that builds the networks of a run: `build_models(cfg, x_shape)` by `Config.arch`.

    mlp     fully connected nets (avb.networks; the synthetic set, small images)
    conv    DCGAN-style conv nets (avb.conv; MNIST)
    resnet  residual conv nets with a z-conditioned conv adversary (avb.conv; CelebA)

`parameter_counts` gives the sizes a reader compares with the paper's networks
(`python -m avb` prints them).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from avb import conv, networks
from avb.config import Config
from avb.networks import Models

BUILDERS: dict[str, Callable[[Config, tuple[int, ...]], Models]] = {
    "mlp": networks.build_mlp_models,
    "conv": conv.build_conv_models,
    "resnet": conv.build_resnet_models,
}


def build_models(cfg: Config, x_shape: tuple[int, ...]) -> Models:
    """The encoder, decoder and (for AVB) adversary named by `cfg.arch`, for data of shape `x_shape` (one example)."""
    return BUILDERS[cfg.arch](cfg, tuple(x_shape))


def count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def parameter_counts(models: Models) -> dict[str, int]:
    """Trainable parameters of each network: encoder, decoder, adversary (0 when there is none), total."""
    counts = {"encoder": count(models.encoder), "decoder": count(models.decoder),
              "adversary": count(models.adversary)}
    return counts | {"total": sum(counts.values())}


__all__ = ["BUILDERS", "Models", "build_models", "parameter_counts"]
