"""Annealed importance sampling (AIS) estimate of log p(x) for a decoder p(x|z), p(z) = N(0, I).

As the AVB authors evaluate MNIST (method notes, section 3; Neal 2001, Wu et al. 2017), with one
protocol for every model: a geometric path

    f_b(z) = q0(z|x)^(1 - b) * (p(x|z) p(z))^b,    0 = b_0 < b_1 < ... < b_{T-1} = 1

from a diagonal Gaussian q0(z|x) = N(m, diag(s^2)) to the unnormalised posterior, one HMC
transition (10 leapfrog steps) per intermediate temperature (none is needed at b = 0, where
z ~ q0 exactly, nor at b = 1), and log p(x) ~= logsumexp_chains(log w) - log(num_chains) with

    log w = sum_t (b_t - b_{t-1}) [log p(x, z_{t-1}) - log q0(z_{t-1})].

HMC steps are scaled per latent dimension by q0's standard deviation s (as the authors'
`eps_scale`: leapfrog in u = z / s, a valid HMC in those coordinates), so one step size fits
every data point. That one step size is adapted from the acceptance rate of the whole batch
of chains (the authors' rule: x1.1 above the target band, /1.1 below), never per chain, so no
chain's kernel depends on its own history. All chains of all examples run as one batch on x's
device; the temperature loop never synchronises with the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)
_STEP_MIN, _STEP_MAX = 1e-4, 2.0  # clamp of the adapted step size, in units of q0's std
_STEP_FACTOR, _ACCEPT_BAND = 1.1, 0.05  # authors' adaptation: x/÷ 1.1 outside target +- 0.05
_SIGMOID_DELTA = 4.0  # sigmoid schedule: sigmoid(linspace(-delta, delta)), Grosse et al. 2015


def _validate(x, q0_mean, q0_std, num_temps, num_chains, leapfrog_steps, step_size, target_accept, schedule,
              generator):
    if num_temps < 2:
        raise ValueError(f"num_temps={num_temps} must be >= 2")
    if num_chains < 1:
        raise ValueError(f"num_chains={num_chains} must be >= 1")
    if leapfrog_steps < 1:
        raise ValueError(f"leapfrog_steps={leapfrog_steps} must be >= 1")
    if not step_size > 0:
        raise ValueError(f"step_size={step_size} must be > 0")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept={target_accept} must be in (0, 1)")
    if schedule not in ("linear", "sigmoid"):
        raise ValueError(f"schedule={schedule!r} is unknown; allowed: 'linear', 'sigmoid'")
    if q0_mean.dim() != 2 or q0_mean.shape[0] != x.shape[0]:
        raise ValueError(f"q0_mean must have shape [B, D] with B = x.shape[0] = {x.shape[0]}, "
                         f"got {tuple(q0_mean.shape)}")
    if q0_std.shape != q0_mean.shape:
        raise ValueError(f"q0_std shape {tuple(q0_std.shape)} must equal q0_mean shape {tuple(q0_mean.shape)}")
    if q0_mean.device != x.device or q0_std.device != x.device:
        raise ValueError(f"q0_mean ({q0_mean.device}) and q0_std ({q0_std.device}) must be on x's device ({x.device})")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, but x is on {x.device}")


def _betas(num_temps: int, schedule: str, like: Tensor) -> Tensor:
    """Inverse temperatures b_0 = 0 < ... < b_{T-1} = 1 (linear, or Grosse et al.'s sigmoid)."""
    b = torch.linspace(0.0, 1.0, num_temps, dtype=torch.float64)
    if schedule == "sigmoid":
        s = torch.sigmoid(_SIGMOID_DELTA * (2 * b - 1))
        b = (s - s[0]) / (s[-1] - s[0])
    return b.to(device=like.device, dtype=like.dtype)


def _log_parts(log_likelihood, x, z, mean, std, log_norm_q):
    """log q0(z), log p(x|z) + log p(z), and their gradients wrt z (only log p(x|z) needs autograd).

    log_norm_q = -sum(log std) - D/2 log(2 pi) is q0's log normaliser, computed once per run.
    """
    with torch.enable_grad():
        z_ = z.detach().requires_grad_(True)
        ll = log_likelihood(x, z_)
        if ll.shape != z.shape[:1]:
            raise ValueError(f"log_likelihood must return shape [{z.shape[0]}], got {tuple(ll.shape)}")
        (g_ll,) = torch.autograd.grad(ll.sum(), z_)
    ll = ll.detach().to(z.dtype)
    u = (z - mean) / std
    log_q = log_norm_q - 0.5 * u.pow(2).sum(1)
    log_joint = ll - 0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * _LOG_2PI
    return log_q, log_joint, -u / std, g_ll.to(z.dtype) - z


def _hmc(parts_fn, z, parts, beta, eps, scale, leapfrog_steps, generator):
    """One HMC transition leaving f_beta invariant, leapfrog in u = z / scale (step eps, a scalar
    tensor; scale [N, D]). Returns (z, parts, accepted [N])."""
    def log_f(p):  # (1 - b) log q0 + b log p(x, z) and its gradient wrt z
        return (1 - beta) * p[0] + beta * p[1], (1 - beta) * p[2] + beta * p[3]

    step = eps * scale  # [N, D]: dz = step * momentum, dmomentum = step * grad_z (grad_u = scale * grad_z)
    lf0, grad = log_f(parts)
    mom0 = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    z_new, mom = z, mom0 + 0.5 * step * grad
    for i in range(leapfrog_steps):
        z_new = z_new + step * mom
        new_parts = parts_fn(z_new)
        lf1, grad = log_f(new_parts)
        mom = mom + (step if i < leapfrog_steps - 1 else 0.5 * step) * grad
    log_ratio = lf1 - lf0 - 0.5 * (mom.pow(2).sum(1) - mom0.pow(2).sum(1))
    log_u = torch.rand(z.shape[:1], generator=generator, device=z.device, dtype=z.dtype).log()
    accept = log_u < log_ratio  # NaN/inf proposals are rejected
    keep = accept.unsqueeze(1)
    z = torch.where(keep, z_new, z)
    parts = tuple(torch.where(keep if a.dim() == 2 else accept, a, b) for a, b in zip(new_parts, parts))
    return z, parts, accept


def _estimate(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """log-mean-exp over chains [C, B] and its delta-method standard error.

    se(log mean w) ~= sd(w) / (sqrt(C) mean(w)); with p = softmax(log w) over chains this is
    sd(p) * sqrt(C), computed without leaving log space. It is a chain-based estimate (NaN for
    one chain) and ignores the bias of AIS, which under-estimates log p(x) in expectation.
    """
    c = log_w.shape[0]
    log_px = torch.logsumexp(log_w, 0) - math.log(c)
    if c == 1:
        return log_px, torch.full_like(log_px, float("nan"))
    return log_px, torch.softmax(log_w, 0).std(0) * math.sqrt(c)


@torch.no_grad()
def ais_log_likelihood(
    log_likelihood: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    q0_mean: Tensor,
    q0_std: Tensor,
    *, num_temps: int = 1000, num_chains: int = 8, leapfrog_steps: int = 10,
    step_size: float = 0.1, target_accept: float = 0.65, schedule: str = "linear",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """AIS estimate of log p(x) per example: (log_px [B], std_error [B]), in q0's dtype.

    log_likelihood(x [N, ...], z [N, D]) -> log p(x|z) [N] must be differentiable in z. q0 is the
    diagonal Gaussian N(q0_mean, q0_std^2) per example; `step_size` is the initial step in units
    of q0_std. The generator (if given) must live on x's device. std_error is the spread of the
    normalised weights across chains (see _estimate).
    """
    _validate(x, q0_mean, q0_std, num_temps, num_chains, leapfrog_steps, step_size, target_accept, schedule,
              generator)
    b, d = q0_mean.shape
    # Replicate every example num_chains times: row c * B + i is chain c of example i.
    x_rep = x.repeat(num_chains, *([1] * (x.dim() - 1)))
    mean, std = q0_mean.repeat(num_chains, 1), q0_std.repeat(num_chains, 1)
    z = mean + std * torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    log_norm_q = -std.log().sum(1) - 0.5 * d * _LOG_2PI

    def parts_fn(zz):
        return _log_parts(log_likelihood, x_rep, zz, mean, std, log_norm_q)

    parts = parts_fn(z)
    betas = _betas(num_temps, schedule, mean)
    eps = torch.tensor(step_size, device=mean.device, dtype=mean.dtype)  # one step size for the whole batch
    log_w = torch.zeros(b * num_chains, device=mean.device, dtype=torch.float64)
    for t in range(1, num_temps):  # log w += (b_t - b_{t-1}) log(p(x, z) / q0(z)), z ~ f_{t-1}
        log_w += ((betas[t] - betas[t - 1]) * (parts[1] - parts[0])).double()
        if t == num_temps - 1:
            break  # a transition at b = 1 would not change the weights
        # One HMC transition leaving f_t invariant, then adapt the shared step size from the
        # batch's acceptance rate (method notes, section 3).
        z, parts, acc = _hmc(parts_fn, z, parts, betas[t], eps, std, leapfrog_steps, generator)
        rate = acc.to(eps.dtype).mean()
        factor = torch.where(rate > target_accept + _ACCEPT_BAND, _STEP_FACTOR,
                             torch.where(rate < target_accept - _ACCEPT_BAND, 1 / _STEP_FACTOR, 1.0))
        eps = (eps * factor).clamp(_STEP_MIN, _STEP_MAX)
    log_px, se = _estimate(log_w.view(num_chains, b))
    return log_px.to(mean.dtype), se.to(mean.dtype)
