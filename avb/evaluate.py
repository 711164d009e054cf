"""Evaluation of a trained model (paper Table 1, Figure 3).

- log_likelihood: log p(x) by importance sampling. The proposal is a defensive
  mixture 0.5 N(mu, (1.2 sigma)^2) + 0.5 p(z), with mu, sigma the moments of
  q(z|x) measured from encoder samples, refined by the weighted moments of
  pilot runs; since the prior is one component, each
  weight is at most 2 p(x|z), so the estimator has finite variance whatever
  the encoder. Reported with its Monte Carlo standard error.
- reconstruction_error: E_x E_q(z|x)[-log p(x|z)], the cross-entropy between x and
  its reconstruction for Bernoulli pixels, summed over pixels.
- elbo: E_q[log p(x|z)] - KL; exact (analytic KL) for the VAE, an estimate (the
  adversary's KL) for AVB.
- kl_qz_pz: KL(q(z) || p(z)) of the aggregated posterior, by a k-nearest-neighbour
  estimator (Wang, Kulkarni and Verdu 2009), as the paper's Table 1 did.
- ais_log_likelihood: log p(x) by annealed importance sampling (avb.ais), as the
  final paper reports MNIST (method notes, section 3); not part of `evaluate`.

Every function draws from its own seeded generator, so evaluating never
changes a training run's random stream.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from avb import ais
from avb import objectives as obj
from avb.train import Trainer

EVAL_METRICS = ("log_likelihood", "log_likelihood_se", "reconstruction_error", "elbo", "kl_qz_pz")
ROWS_PER_CHUNK = 65536  # decoder evaluations per forward pass


@contextlib.contextmanager
def evaluating(trainer: Trainer) -> Iterator[None]:
    """Inference mode (batch norm in eval) for the duration, then back to training mode."""
    trainer.models.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        trainer.models.train()


def posterior_samples(trainer: Trainer, x: Tensor, n: int, g: torch.Generator) -> Tensor:
    """n samples of q(z|x) for each row of x: [B, n, D]."""
    x_rep = x.repeat_interleave(n, dim=0)
    zs = [trainer.encode(xc, g).z for xc in x_rep.split(ROWS_PER_CHUNK)]
    return torch.cat(zs).view(len(x), n, -1)


def importance_weights(trainer: Trainer, x: Tensor, mean: Tensor, std: Tensor, num_samples: int,
                       g: torch.Generator) -> tuple[Tensor, Tensor]:
    """log p(x,z) - log proposal(z) for z from 0.5 N(mean, std^2) + 0.5 p(z): ([B, n], z [B, n, D])."""
    chunk = max(1, ROWS_PER_CHUNK // len(x))
    log_w, zs = [], []
    for start in range(0, num_samples, chunk):
        n = min(chunk, num_samples - start)
        eps = torch.randn(len(x), n, mean.shape[1], device=x.device, generator=g)
        from_fit = (torch.arange(n, device=x.device) % 2 == 0).view(1, n, 1)  # half from each component
        z = torch.where(from_fit, mean[:, None] + std[:, None] * eps, eps)  # [B, n, D]
        zf = z.flatten(0, 1)
        log_prior = obj.log_standard_normal(zf)
        log_fit = obj.log_normal(zf, mean.repeat_interleave(n, 0), std.repeat_interleave(n, 0))
        log_proposal = torch.logaddexp(log_fit, log_prior) - math.log(2)
        log_px_z = trainer.models.decoder.log_prob(x.repeat_interleave(n, 0), zf)
        log_w.append((log_px_z + log_prior - log_proposal).view(len(x), n))
        zs.append(z)
    return torch.cat(log_w, dim=1), torch.cat(zs, dim=1)


def log_likelihood(trainer: Trainer, x: Tensor, num_samples: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Importance-sampled log p(x) and its standard error, per data point: ([B], [B]).

    The Gaussian component starts from the moments of q(z|x) and is refitted to
    the weighted moments of three pilot runs, so a poor encoder costs accuracy
    only in the pilots; the estimate uses the main run alone.
    """
    with evaluating(trainer):
        z_q = posterior_samples(trainer, x, 256, g)
        mean, std = z_q.mean(1), z_q.std(1) + 1e-3  # [B, D]
        for _ in range(3):  # pilot runs: refit the Gaussian to the self-normalised weighted samples
            log_w, z = importance_weights(trainer, x, mean, 1.2 * std, max(num_samples // 20, 1000), g)
            w = torch.softmax(log_w.double(), dim=1)[..., None].float()
            mean = (w * z).sum(1)
            std = ((w * (z - mean[:, None]) ** 2).sum(1)).sqrt() + 1e-3
        log_w = importance_weights(trainer, x, mean, 1.2 * std, num_samples, g)[0].double()
        log_px = torch.logsumexp(log_w, 1) - math.log(num_samples)
        rel = (log_w - log_px[:, None]).exp()  # w / p_hat, mean 1
        se = rel.std(1) / math.sqrt(num_samples)  # delta method: se(log p) = se(p) / p
        return log_px.float(), se.float()


def reconstruction_and_elbo(trainer: Trainer, x: Tensor, n: int, g: torch.Generator) -> tuple[float, float]:
    """E[-log p(x|z)] and E[log p(x|z)] - KL estimate, averaged over x and n posterior samples."""
    with evaluating(trainer):
        rec, kl = [], []
        for xc in x.repeat_interleave(n, dim=0).split(ROWS_PER_CHUNK):
            q = trainer.encode(xc, g)
            rec.append(-trainer.models.decoder.log_prob(xc, q.z))
            kl.append(trainer.kl_and_scores(xc, q, g)[0])
        rec, kl = torch.cat(rec).mean().item(), torch.cat(kl).mean().item()
        return rec, -rec - kl


def knn_kl(p_samples: Tensor, q_samples: Tensor, k: int = 3) -> float:
    """k-NN estimate of KL(P || Q) from samples (Wang, Kulkarni, Verdu 2009, eq. 5)."""
    n, d = p_samples.shape
    m = len(q_samples)

    def kth_distance(a: Tensor, b: Tensor, kk: int) -> Tensor:
        return torch.cat([torch.cdist(ac, b).kthvalue(kk, dim=1).values for ac in a.split(1024)])

    rho = kth_distance(p_samples, p_samples, k + 1)  # k+1: the point itself is at distance 0
    nu = kth_distance(p_samples, q_samples, k)
    return (d * (nu.clamp_min(1e-12).log() - rho.clamp_min(1e-12).log()).mean() + math.log(m / (n - 1))).item()


def kl_aggregate(trainer: Trainer, x: Tensor, n: int, g: torch.Generator) -> float:
    """KL(q(z) || p(z)) with q(z) = E_x q(z|x), from n samples of each."""
    with evaluating(trainer):
        idx = torch.randint(len(x), (n,), device=x.device, generator=g)
        z_q = trainer.encode(x[idx], g).z
        z_p = trainer.prior(n, g)
        return knn_kl(z_q.float(), z_p.float())


def mean_with_se(values: Tensor, errors: Tensor) -> tuple[float, float]:
    """Mean of per-point estimates and its Monte Carlo standard error (independent errors)."""
    return values.mean().item(), (errors.pow(2).sum().sqrt() / len(values)).item()


def evaluate(trainer: Trainer, x: Tensor, num_samples: int, seed: int = 1234) -> dict[str, float]:
    """All metrics of EVAL_METRICS on the data points x (already on the device)."""
    g = torch.Generator(trainer.device).manual_seed(seed)
    log_px, se = log_likelihood(trainer, x, num_samples, g)
    # reconstruction error is heavy-tailed (rare codes in another point's region): use many samples
    rec, elbo = reconstruction_and_elbo(trainer, x, max(1, min(num_samples // 8, ROWS_PER_CHUNK // len(x))), g)
    mean_log_px, mean_se = mean_with_se(log_px, se)
    return {
        "log_likelihood": mean_log_px,
        "log_likelihood_se": mean_se,
        "reconstruction_error": rec,
        "elbo": elbo,
        "kl_qz_pz": kl_aggregate(trainer, x, 10000, g),
    }


def ais_start(trainer: Trainer, x: Tensor, g: torch.Generator, n: int = 64) -> tuple[Tensor, Tensor]:
    """Moments of AIS's starting Gaussian q0 per row of x (method notes, section 3): ([B, D], [B, D]).

    With Adaptive Contrast, r(z|x): the encoder's mean and std, computed on n copies
    of each x so that a basis encoder's batch moments of v_i come from B * n noise
    draws. Without, the prior N(0, I).
    """
    d = trainer.cfg.latent_dim
    if not trainer.cfg.adaptive_contrast:
        return torch.zeros(len(x), d, device=x.device), torch.ones(len(x), d, device=x.device)
    q = trainer.encode(x.repeat_interleave(n, dim=0), g)
    return q.mean.float().view(len(x), n, d)[:, 0], q.std.float().view(len(x), n, d)[:, 0]


def ais_log_likelihood(trainer: Trainer, x: Tensor, num_temps: int = 1000, num_chains: int = 8,
                       leapfrog_steps: int = 10, step_size: float = 0.05, schedule: str = "linear",
                       chunk: int = 256, seed: int = 1234) -> tuple[float, float]:
    """AIS estimate of log p(x): mean over the rows of x and its standard error (nats).

    Defaults as the official MNIST scripts: 1000 temperatures, 8 chains, one HMC
    transition of 10 leapfrog steps per temperature, step size adapted towards
    0.65 acceptance. x is processed `chunk` rows at a time (chunk * num_chains chains).
    """
    g = torch.Generator(trainer.device).manual_seed(seed)
    log_px, se = [], []
    with evaluating(trainer):
        for xc in x.split(chunk):
            mean, std = ais_start(trainer, xc, g)
            est, err = ais.ais_log_likelihood(trainer.models.decoder.log_prob, xc, mean, std, num_temps=num_temps,
                                              num_chains=num_chains, leapfrog_steps=leapfrog_steps,
                                              step_size=step_size, schedule=schedule, generator=g)
            log_px.append(est)
            se.append(err)
    return mean_with_se(torch.cat(log_px), torch.cat(se))
