"""Fully connected networks of the paper's synthetic experiment (section 4), and the parts
every architecture shares.

Three encoders, one decoder, one adversary. Every encoder maps `(x, eps)` to an
`EncoderOutput`; `mean`/`std` are the moments of q(z|x) where they are known
(needed by the VAE's analytic KL and by Adaptive Contrast), otherwise None.

Convolutional versions for images live in `avb.conv` (which builds on this
module); `avb.models.build_models` picks the family named by `Config.arch`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avb.config import Config

VAR_FLOOR = 1e-4  # added to Var[z|x] of the basis encoder, as the authors' r(z|x)


@dataclass
class EncoderOutput:
    z: Tensor  # [B, D] sample of q(z|x)
    mean: Tensor | None = None  # [B, D] E[z|x] when known
    std: Tensor | None = None  # [B, D] sqrt(Var[z|x]) when known


def mlp(sizes: list[int], slope: float = 0.2, last_scale: float = 1.0) -> nn.Sequential:
    """Linear layers with leaky ReLU between them; the last layer scaled by `last_scale`."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(slope))
    with torch.no_grad():
        layers[-1].weight.mul_(last_scale)
        layers[-1].bias.zero_()
    return nn.Sequential(*layers)


def centre(x: Tensor) -> Tensor:
    """Pixels in [0, 1] mapped to [-1, 1], as the authors' encoders take them (`x = 2*x - 1`)."""
    return 2 * x - 1


class Centre(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return centre(x)


def centred_mlp(sizes: list[int]) -> nn.Sequential:
    """An encoder's MLP on centred pixels: `mlp(sizes)` after 2x - 1."""
    return nn.Sequential(Centre(), *mlp(sizes))


def init_near_zero(layer: nn.Linear, sd: float = 1e-5) -> None:
    """Weights ~ N(0, sd^2), bias 0: the authors' initialisation of the layers that emit z."""
    with torch.no_grad():
        layer.weight.normal_(0, sd)
        layer.bias.zero_()


class ParallelMLP(nn.Module):
    """K independent MLPs evaluated as one batched matmul per layer: [K, B, in] -> [K, B, out].

    The basis encoder's noise networks v_1..v_K (authors' code: 32 of them, 3 x 128 units, ELU);
    one `baddbmm` per layer instead of K small matmuls. Initialised like nn.Linear.
    """

    def __init__(self, k: int, sizes: list[int], activation: str = "elu"):
        super().__init__()
        self.activation = F.elu if activation == "elu" else partial(F.leaky_relu, negative_slope=0.2)
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            bound = 1 / math.sqrt(n_in)
            self.weights.append(nn.Parameter(torch.empty(k, n_in, n_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(k, 1, n_out).uniform_(-bound, bound)))

    def forward(self, h: Tensor) -> Tensor:
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)  # [K, B, n_out]
            if i < len(self.weights) - 1:
                h = self.activation(h)
        return h


class BlackBoxEncoder(nn.Module):
    """z = f(x, eps) as the authors' fully connected encoder (`full0.py`): the input centred
    (2x - 1), then a learned linear projection of eps added before the first layer (the same
    as concatenating it to x) and after every hidden layer, and an output layer whose
    weights start at sd 1e-5, so that q(z|x) starts as a point mass near 0 (paper section 4)."""

    def __init__(self, x_dim: int, cfg: Config):
        super().__init__()
        self.noise_size = cfg.noise_dim
        widths = [cfg.hidden] * cfg.depth
        self.layers = nn.ModuleList(nn.Linear(n_in, n_out) for n_in, n_out in zip([x_dim] + widths[:-1], widths))
        # eps -> every unit of the input and of each hidden layer (the authors' `add_linear`)
        self.noise = nn.ModuleList(nn.Linear(cfg.noise_dim, w, bias=False) for w in [x_dim] + widths)
        self.out = nn.Linear(widths[-1], cfg.latent_dim)
        init_near_zero(self.out)

    def forward(self, x: Tensor, eps: Tensor) -> EncoderOutput:
        h = centre(x.flatten(1)) + self.noise[0](eps)  # [B, x_dim]
        for layer, noise in zip(self.layers, self.noise[1:]):
            h = F.leaky_relu(layer(h), 0.2) + noise(eps)  # [B, hidden]: eps reaches every unit of every layer
        return EncoderOutput(self.out(h))


class BasisEncoder(nn.Module):
    """z = z0(x) + sum_i a_i(x) * v_i(eps_i), a_i > 0 (method notes, section 2).

    Since v_i sees only noise, its moments are estimated over the batch, which
    gives the moments of q(z|x) that Adaptive Contrast needs:
    E[z|x] = z0 + sum_i a_i E[v_i],  Var[z|x] = sum_i a_i^2 Var[v_i].

    As the authors' `full0_ac.py` / `conv0_ac.py`: a_i = elu(h_i - 5) + 1 (about 0.007 at
    initialisation), the z0 weights start at sd 1e-5, x centred (2x - 1) by the trunk, and
    sd(z|x) = sqrt(Var[z|x] + 1e-4): q(z|x) starts narrow, near 0.
    """

    def __init__(self, x_dim: int, cfg: Config, trunk: nn.Sequential | None = None):
        super().__init__()
        self.k, self.d, self.noise_dim = cfg.basis_size, cfg.latent_dim, cfg.noise_dim
        self.noise_size = cfg.basis_size * cfg.noise_dim
        # trunk: flattened x [B, x_dim] -> [B, D * (1 + K)], ending in a Linear; avb.conv passes a convolutional one
        self.trunk = trunk if trunk is not None else centred_mlp([x_dim] + [cfg.hidden] * cfg.depth
                                                                 + [cfg.latent_dim * (1 + cfg.basis_size)])
        with torch.no_grad():  # z0's rows of the last layer near zero, every bias zero
            self.trunk[-1].weight[: self.d].normal_(0, 1e-5)
            self.trunk[-1].bias.zero_()
        self.basis = ParallelMLP(self.k, [cfg.noise_dim] + [cfg.basis_hidden] * cfg.basis_depth + [cfg.latent_dim],
                                 cfg.basis_activation)

    def forward(self, x: Tensor, eps: Tensor) -> EncoderOutput:
        h = self.trunk(x.flatten(1))
        z0, a = h[:, : self.d], (F.elu(h[:, self.d:] - 5) + 1).view(-1, self.k, self.d)  # a: [B, K, D], > 0
        eps = eps.view(-1, self.k, self.noise_dim).transpose(0, 1)  # [K, B, noise_dim]
        v = self.basis(eps).transpose(0, 1)  # [B, K, D]
        v_mean, v_var = v.mean(0), v.var(0, correction=min(1, len(v) - 1))  # [K, D], over the batch: v ignores x
        z = z0 + (a * v).sum(1)
        mean = z0 + (a * v_mean).sum(1)
        std = ((a**2 * v_var).sum(1) + VAR_FLOOR).sqrt()  # the authors' r(z|x): sqrt(Var + 1e-4)
        return EncoderOutput(z, mean, std)


class GaussianEncoder(nn.Module):
    """Diagonal Gaussian q(z|x) = N(mu(x), sigma(x)^2), sampled by reparameterisation."""

    def __init__(self, x_dim: int, cfg: Config, net: nn.Module | None = None):
        super().__init__()
        self.noise_size = cfg.latent_dim
        # net: flattened x [B, x_dim] -> [B, 2D]; avb.conv passes a convolutional one
        self.net = net if net is not None else centred_mlp([x_dim] + [cfg.hidden] * cfg.depth + [2 * cfg.latent_dim])

    def forward(self, x: Tensor, eps: Tensor) -> EncoderOutput:
        mean, log_std = self.net(x.flatten(1)).chunk(2, dim=1)
        std = log_std.exp()
        return EncoderOutput(mean + std * eps, mean, std)


class Decoder(nn.Module):
    """p(x|z): independent Bernoulli pixels (logits) or Gaussians with a learned per-pixel scale."""

    def __init__(self, x_shape: tuple[int, ...], net: nn.Module, likelihood: str):
        super().__init__()
        self.x_shape, self.net, self.likelihood = tuple(x_shape), net, likelihood
        if likelihood == "gaussian":
            self.log_scale = nn.Parameter(torch.zeros(self.x_shape))

    def params(self, z: Tensor) -> Tensor:
        return self.net(z).view(-1, *self.x_shape)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z), summed over pixels: [B]."""
        return self(x, z)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:  # log p(x|z); `forward` so that torch.compile sees it
        out = self.params(z).float()
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        scale = self.log_scale.float()
        nll = 0.5 * ((x - out) / scale.exp()) ** 2 + scale + 0.5 * math.log(2 * math.pi)
        return -nll.flatten(1).sum(1)

    def mean(self, z: Tensor) -> Tensor:
        out = self.params(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out


class Adversary(nn.Module):
    """T(x, z) = <a(x), b(z)> + t_x(x) + t_z(z) + 0.5 ||z||^2 (method notes, section 1).

    With the prior term, T only has to learn log q(z|x) (up to a constant), since
    0.5||z||^2 = -log p(z) + const. `a` and `t_x` share one network (its last
    layer has inner+1 outputs), as do `b` and `t_z`. With `use_x=False` it is the
    adversarial autoencoder's T(z) (paper section 5.2).
    """

    def __init__(self, x_net: nn.Module | None, z_net: nn.Module, inner: int, prior_term: bool):
        super().__init__()
        self.x_net, self.z_net, self.inner, self.prior_term = x_net, z_net, inner, prior_term

    def forward(self, x: Tensor, *zs: Tensor) -> tuple[Tensor, ...]:
        """T(x, z) for each batch of codes in `zs`, each [B, D]; the x-branch runs once."""
        hz = self.z_net(torch.cat(zs, dim=0)).float()  # [len(zs) * B, inner + 1]
        t = hz[:, -1]
        if self.x_net is not None:
            hx = self.x_net(x).float().repeat(len(zs), 1)  # [len(zs) * B, inner + 1]
            t = t + (hx[:, :-1] * hz[:, :-1]).sum(1) + hx[:, -1]
        if self.prior_term:
            t = t + 0.5 * torch.cat(zs, dim=0).float().pow(2).sum(1)
        return t.chunk(len(zs))


class Models(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: Decoder, adversary: nn.Module | None):
        super().__init__()
        self.encoder, self.decoder, self.adversary = encoder, decoder, adversary


ENCODERS = {"blackbox": BlackBoxEncoder, "basis": BasisEncoder, "gaussian": GaussianEncoder}


def build_mlp_models(cfg: Config, x_shape: tuple[int, ...]) -> Models:
    """Fully connected encoder, decoder and adversary (the synthetic experiment, section 4)."""
    x_dim = math.prod(x_shape)
    encoder = ENCODERS[cfg.encoder](x_dim, cfg)
    decoder = Decoder(x_shape, mlp([cfg.latent_dim] + [cfg.hidden] * cfg.depth + [x_dim]), cfg.likelihood)
    adversary = None
    if cfg.objective == "avb":
        adv = [cfg.adv_hidden] * cfg.adv_depth + [cfg.adv_inner + 1]
        x_net = nn.Sequential(nn.Flatten(), mlp([x_dim] + adv, last_scale=0.01))
        z_net = mlp([cfg.latent_dim] + adv, last_scale=0.01)  # last layers start near zero
        adversary = Adversary(x_net if cfg.adversary_input == "xz" else None, z_net, cfg.adv_inner, cfg.adv_prior_term)
    return Models(encoder, decoder, adversary)
