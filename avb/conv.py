"""Convolutional networks for images (paper section 4: MNIST and CelebA).

    python -m avb --dataset mnist --arch conv --encoder basis --adaptive-contrast \\
        --latent-dim 32 --noise-dim 32 --hidden 32 --adv-hidden 32 --depth 3 --batch-size 128
    python -m avb --dataset celeba --arch resnet --likelihood gaussian --latent-dim 64 --hidden 32

"conv" (MNIST): DCGAN-style nets (Radford et al. 2015). The black-box encoder adds
the noise to every unit of every hidden layer through a learned linear projection
(the authors' `add_linear`: eps -> C*H*W values per layer); batch norm
in encoder and adversary, none in the decoder (it decreased reconstruction
quality, section 4). The adversary is the usual T(x, z) = <a(x), b(z)> + t_x + t_z
(+ 0.5||z||^2) with a conv net on x and a fully connected net on z.

"resnet" (CelebA): every hidden layer of encoder and decoder followed by
`cfg.depth` residual units (paper: three); the adversary is one conv net on x
with z added to each layer through a learned projection (one value per channel:
per unit it would cost latent_dim x 60k weights at 64x64).

Widths: `cfg.hidden` / `cfg.adv_hidden` are the channels of the first conv layer,
doubled at each downsampling; fully connected layers are FC_MULT times that wide.
Layouts follow x_shape: a layer halves the image (kernel 4, stride 2) while both
sides are even and >= 8, so 28x28 -> 14 -> 7, 8x8 -> 4, 64x64 -> 32 -> 16 -> 8 -> 4,
and the decoder doubles back exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from avb.config import Config
from avb.networks import Adversary, BasisEncoder, Decoder, EncoderOutput, GaussianEncoder, Models, mlp

FC_MULT = 8  # fully connected width = FC_MULT * base channels (DCGAN's deepest layer has 8x the first)
RESNET_MAX_DOWN = 4  # 64x64 -> 4x4


def strides_for(x_shape: tuple[int, ...], layers: int, max_down: int) -> list[int]:
    """Stride of each encoder layer: 2 while both sides stay even and >= 8 (at most max_down times), then 1."""
    _, h, w = x_shape
    strides: list[int] = []
    while len(strides) < min(layers, max_down) and h % 2 == 0 and w % 2 == 0 and min(h, w) >= 8:
        strides.append(2)
        h, w = h // 2, w // 2
    return strides + [1] * (layers - len(strides))


def channels_for(base: int, strides: list[int]) -> list[int]:
    """Output channels of each layer: base, doubled after each downsampling."""
    return [base * 2 ** max(sum(s == 2 for s in strides[: i + 1]) - 1, 0) for i in range(len(strides))]


def conv(c_in: int, c_out: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 4, 2, 1) if stride == 2 else nn.Conv2d(c_in, c_out, 3, 1, 1)


def deconv(c_in: int, c_out: int, stride: int) -> nn.Module:
    return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1) if stride == 2 else nn.Conv2d(c_in, c_out, 3, 1, 1)


def act(leaky: bool) -> nn.Module:
    return nn.LeakyReLU(0.2) if leaky else nn.ELU()


class ResBlock(nn.Module):
    """h + F(h), F = (BN) act conv3 (BN) act conv3 (He et al. 2016, pre-activation): [B, C, H, W] -> same."""

    def __init__(self, c: int, bn: bool, leaky: bool):
        super().__init__()
        norm = nn.BatchNorm2d if bn else nn.Identity
        self.f = nn.Sequential(norm(c), act(leaky), nn.Conv2d(c, c, 3, 1, 1),
                               norm(c), act(leaky), nn.Conv2d(c, c, 3, 1, 1))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.f(h)


def layer_shapes(x_shape: tuple[int, ...], chans: list[int], strides: list[int]) -> list[tuple[int, int, int]]:
    """(C, H, W) after each encoder layer: a stride-2 layer halves both sides."""
    h, w, shapes = x_shape[1], x_shape[2], []
    for c, s in zip(chans, strides):
        h, w = h // s, w // s
        shapes.append((c, h, w))
    return shapes


class ConvNet(nn.Module):
    """x [B, C, H, W] -> features [B, out_dim]; an optional side input s [B, S] (noise eps or code z)
    is added to every layer through a learned linear projection (paper section 4): onto every
    unit (`per_unit`, S -> C*H*W, the authors' add_linear) or one value per channel (S -> C)."""

    def __init__(self, x_shape: tuple[int, ...], base: int, strides: list[int], side_dim: int = 0,
                 bn: bool = True, leaky: bool = False, res_units: int = 0, per_unit: bool = True):
        super().__init__()
        chans = channels_for(base, strides)
        self.shapes = layer_shapes(x_shape, chans, strides)
        self.convs = nn.ModuleList(conv(c_in, c, s) for c_in, c, s in zip([x_shape[0]] + chans, chans, strides))
        self.per_unit = per_unit
        self.sides = None
        if side_dim:
            self.sides = nn.ModuleList(nn.Linear(side_dim, math.prod(shape) if per_unit else shape[0], bias=False)
                                       for shape in self.shapes)
        self.post = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(c) if bn else nn.Identity(), act(leaky),
                          *[ResBlock(c, bn, leaky) for _ in range(res_units)]) for c in chans)
        self.out_dim = math.prod(self.shapes[-1])

    def forward(self, x: Tensor, side: Tensor | None = None) -> Tensor:
        h = 2 * x - 1  # pixels centred at 0, as in the official code
        for i, (layer, post) in enumerate(zip(self.convs, self.post)):
            h = layer(h)  # [B, C_i, H_i, W_i]
            if side is not None:  # learned projection of eps (or z) onto every unit, or per channel
                proj = self.sides[i](side)
                h = h + (proj.view(-1, *self.shapes[i]) if self.per_unit else proj[:, :, None, None])
            h = post(h)
        return h.flatten(1)  # [B, out_dim]


class UpNet(nn.Module):
    """z [B, D] -> [B, C, H, W]: ConvNet mirrored with transposed convs; no batch norm (section 4)."""

    def __init__(self, x_shape: tuple[int, ...], latent_dim: int, base: int, strides: list[int], res_units: int = 0):
        super().__init__()
        chans, down = channels_for(base, strides), 2 ** strides.count(2)
        h, w = x_shape[1] // down, x_shape[2] // down
        layers: list[nn.Module] = [nn.Linear(latent_dim, chans[-1] * h * w), nn.ELU(),
                                   nn.Unflatten(1, (chans[-1], h, w))]  # [B, C_last, H / 2^n, W / 2^n]
        for i in reversed(range(len(chans))):  # mirror of encoder layer i: C_i -> C_{i-1}, upsampling by its stride
            c_out = chans[max(i - 1, 0)]
            layers += [deconv(chans[i], c_out, strides[i]), nn.ELU(),
                       *[ResBlock(c_out, bn=False, leaky=False) for _ in range(res_units)]]
        layers.append(nn.Conv2d(chans[0], x_shape[0], 3, 1, 1))  # logits or means per pixel
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class ConvBlackBoxEncoder(nn.Module):
    """z = f(x, eps), eps entering every unit of every conv layer through a learned projection (section 4)."""

    def __init__(self, x_shape: tuple[int, ...], cfg: Config, strides: list[int], res_units: int):
        super().__init__()
        self.noise_size = cfg.noise_dim
        self.net = ConvNet(x_shape, cfg.hidden, strides, side_dim=cfg.noise_dim, res_units=res_units)
        self.head = nn.Linear(self.net.out_dim, cfg.latent_dim)

    def forward(self, x: Tensor, eps: Tensor) -> EncoderOutput:
        return EncoderOutput(self.head(self.net(x, eps)))  # [B, D]


def conv_head(x_shape: tuple[int, ...], cfg: Config, strides: list[int], res_units: int, out: int) -> nn.Module:
    """Flattened x [B, prod(x_shape)] -> [B, out]: the conv trunk handed to the fully connected encoders' heads."""
    net = ConvNet(x_shape, cfg.hidden, strides, res_units=res_units)
    return nn.Sequential(nn.Unflatten(1, x_shape), net, nn.Linear(net.out_dim, out))


def build_encoder(cfg: Config, x_shape: tuple[int, ...], strides: list[int], res_units: int) -> nn.Module:
    x_dim = math.prod(x_shape)
    if cfg.encoder == "basis":  # z0(x) and a_i(x) from the conv trunk, v_i(eps_i) and moments as in BasisEncoder
        return BasisEncoder(x_dim, cfg, trunk=conv_head(x_shape, cfg, strides, res_units,
                                                        cfg.latent_dim * (1 + cfg.basis_size)))
    if cfg.encoder == "gaussian":
        return GaussianEncoder(x_dim, cfg, net=conv_head(x_shape, cfg, strides, res_units, 2 * cfg.latent_dim))
    return ConvBlackBoxEncoder(x_shape, cfg, strides, res_units)


def z_net(cfg: Config, out: int) -> nn.Module:
    """Fully connected net on z: [B, D] -> [B, out], last layer starting near zero."""
    return mlp([cfg.latent_dim] + [FC_MULT * cfg.adv_hidden] * cfg.adv_depth + [out], last_scale=0.01)


def build_conv_models(cfg: Config, x_shape: tuple[int, ...]) -> Models:
    """DCGAN-style encoder/decoder with cfg.depth conv layers; T(x, z) with a conv net on x (MNIST)."""
    strides = strides_for(x_shape, cfg.depth, cfg.depth)
    encoder = build_encoder(cfg, x_shape, strides, res_units=0)
    decoder = Decoder(x_shape, UpNet(x_shape, cfg.latent_dim, cfg.hidden, strides), cfg.likelihood)
    adversary = None
    if cfg.objective == "avb":
        x_net = None
        if cfg.adversary_input == "xz":
            trunk = ConvNet(x_shape, cfg.adv_hidden, strides_for(x_shape, cfg.adv_depth, cfg.adv_depth), leaky=True)
            x_net = nn.Sequential(trunk, mlp([trunk.out_dim, cfg.adv_inner + 1], last_scale=0.01))  # a(x), t_x(x)
        adversary = Adversary(x_net, z_net(cfg, cfg.adv_inner + 1), cfg.adv_inner, cfg.adv_prior_term)
    return Models(encoder, decoder, adversary)


class ResNetAdversary(nn.Module):
    """T(x, z) = t(x, z) + 0.5||z||^2: one conv net on x with z added to every layer (CelebA, section 4).

    Same interface as `Adversary`. The x-path depends on z, so all code batches go
    through it as one concatenated batch (batch norm then sees posterior and prior
    codes together, never one class alone).
    """

    def __init__(self, x_shape: tuple[int, ...], cfg: Config, strides: list[int]):
        super().__init__()
        self.prior_term = cfg.adv_prior_term
        self.net = ConvNet(x_shape, cfg.adv_hidden, strides, side_dim=cfg.latent_dim, leaky=True,
                           res_units=cfg.adv_depth, per_unit=False)
        self.head = mlp([self.net.out_dim + cfg.latent_dim, FC_MULT * cfg.adv_hidden, 1], last_scale=0.01)

    def forward(self, x: Tensor, *zs: Tensor) -> tuple[Tensor, ...]:
        z = torch.cat(zs, dim=0)  # [len(zs) * B, D]
        h = self.net(x.repeat(len(zs), *([1] * (x.dim() - 1))), z)  # [len(zs) * B, F]
        t = self.head(torch.cat([h, z], dim=1)).float().squeeze(1)
        if self.prior_term:
            t = t + 0.5 * z.float().pow(2).sum(1)
        return t.chunk(len(zs))


def build_resnet_models(cfg: Config, x_shape: tuple[int, ...]) -> Models:
    """Residual encoder/decoder (cfg.depth units per layer), z-conditioned conv adversary (CelebA)."""
    strides = strides_for(x_shape, RESNET_MAX_DOWN, RESNET_MAX_DOWN)
    strides = strides[: max(strides.count(2), 1)]  # one layer per downsampling (at least one layer)
    encoder = build_encoder(cfg, x_shape, strides, res_units=cfg.depth)
    decoder = Decoder(x_shape, UpNet(x_shape, cfg.latent_dim, cfg.hidden, strides, cfg.depth), cfg.likelihood)
    adversary = None
    if cfg.objective == "avb" and cfg.adversary_input == "xz":
        adversary = ResNetAdversary(x_shape, cfg, strides)
    elif cfg.objective == "avb":  # adversarial autoencoder: T(z) alone
        adversary = Adversary(None, z_net(cfg, cfg.adv_inner + 1), cfg.adv_inner, cfg.adv_prior_term)
    return Models(encoder, decoder, adversary)

