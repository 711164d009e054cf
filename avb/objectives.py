"""The terms of the AVB objective, each per example and in nats.

Conventions: every network output T is trained to approximate
log q(z|x) - log p(z) (Proposition 1), whichever adversary loss is used, so
that the ELBO is always  E_q[log p(x|z)] - E_q[T]  (eq. 3.9).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def log_standard_normal(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the latent dimensions: [B]."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(1)


def log_normal(z: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(z; mean, diag(std^2)): [B]."""
    return log_standard_normal((z - mean) / std) - std.log().sum(1)


def gaussian_kl(mean: Tensor, std: Tensor) -> Tensor:
    """KL(N(mean, std^2) || N(0, I)) in closed form (the VAE's KL term): [B]."""
    return 0.5 * (mean.pow(2) + std.pow(2) - 1).sum(1) - std.log().sum(1)


def adversary_loss(t_posterior: Tensor, t_prior: Tensor, kind: str) -> Tensor:
    """Loss the adversary minimises; its minimiser is T* = log q(z|x) - log p(z).

    logistic (eq. 3.3): -log sigma(T(x, z_q)) - log(1 - sigma(T(x, z_p))).
    kl (eq. 5.10): E_p[exp(T' - 1)] - E_q[T'] with T' = T + 1, so that T itself
    (not T - 1) estimates the log density ratio.
    """
    if kind == "logistic":
        return F.softplus(-t_posterior).mean() + F.softplus(t_prior).mean()
    return t_prior.exp().mean() - t_posterior.mean() - 1


def contrast(z: Tensor, mean: Tensor, std: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive Contrast (method notes, section 2).

    Returns the standardised code z~ = (z - mu) / sigma that the adversary sees
    (mu, sigma held constant) and the analytic part log r(z|x) - log p(z) of
    KL(q || p) = KL(q || r) + E_q[log r(z|x) - log p(z)].
    """
    mean, std = mean.detach(), std.detach()
    z_tilde = (z - mean) / std
    log_r = log_standard_normal(z_tilde) - std.log().sum(1)
    return z_tilde, log_r - log_standard_normal(z)


def kl_weight(step: int, warmup_steps: int) -> float:
    """KL annealing: weight rising linearly from 0 to 1 over `warmup_steps` (1 when off)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
