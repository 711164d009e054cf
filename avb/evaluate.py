"""Evaluation of a trained model (paper Table 1, Figure 3; MNIST by AIS).

- log_likelihood: log p(x) by importance sampling, mean over the data points. The
  proposal is a defensive mixture 0.5 N(mu, (1.2 sigma)^2) + 0.5 p(z), with mu, sigma
  the moments of q(z|x) measured from encoder samples, refined by the weighted
  moments of pilot runs; since the prior is one component, each weight is at most
  2 p(x|z), so the estimator has finite variance whatever the encoder. Half the
  samples come from each component, pair by pair (the deterministic-mixture
  estimator, unbiased for p(x)).
  `log_likelihood_se` is the standard error over data points (sd / sqrt(B): how much
  the figure would move on other data), `log_likelihood_mc_se` the Monte Carlo error
  of the estimator on these points. Compare methods with `paired_difference`.
- reconstruction_error: E_x E_q(z|x)[-log p(x|z)], the cross-entropy between x and
  its reconstruction for Bernoulli pixels, summed over pixels.
- elbo (VAE only): E_q[log p(x|z)] - KL(q(z|x) || p(z)) with the analytic KL: a bound.
- adversary_elbo (AVB only): E_q[log p(x|z)] - E_q[T(x, z)] (+ the analytic part with
  Adaptive Contrast): the adversary's estimate of the ELBO, not a bound; it can lie
  above log p(x) when T is wrong.
- kl_qz_pz: KL(q(z) || p(z)) of the aggregated posterior, by a k-nearest-neighbour
  estimator (Wang, Kulkarni and Verdu 2009), as the paper's Table 1 did.
- ais_log_likelihood: log p(x) by annealed importance sampling (avb.ais) from a Gaussian
  q0(z|x) fitted to each model's own encoder (one protocol for the VAE, AVB and AVB+AC);
  not part of `evaluate`.

Every function draws from its own seeded generator, so evaluating never
changes a training run's random stream. Per-point functions return CPU float64 tensors.
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

EVAL_METRICS = ("log_likelihood", "log_likelihood_se", "log_likelihood_mc_se", "reconstruction_error", "elbo",
                "adversary_elbo", "kl_qz_pz")
ROWS_PER_CHUNK = 65536  # decoder evaluations per forward pass, at most ...
VALUES_PER_CHUNK = 2**22  # ... and at most this many input values (a conv decoder's activations scale with them)
Q0_SAMPLES = 256  # encoder samples per point for the Gaussian q0 of a black-box encoder
Q0_VAR_FLOOR = 1e-4  # q0 std = sqrt(var + 1e-4), as the authors' r(z|x)


def rows_per_chunk(x: Tensor) -> int:
    """Rows of data like x per forward pass: 65,536 for the synthetic set, 5,350 for MNIST, 341 for CelebA."""
    return max(1, min(ROWS_PER_CHUNK, VALUES_PER_CHUNK // x[0].numel()))


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
    zs = [trainer.encode(xc, g).z for xc in x_rep.split(rows_per_chunk(x))]
    return torch.cat(zs).view(len(x), n, -1)


# ------------------------------------------------------------ error bars
def summary(values: Tensor, mc_se: Tensor, name: str) -> dict[str, float]:
    """{name: mean over points, name_se: its standard error over points (NaN for one point),
    name_mc_se: its Monte Carlo standard error (independent per-point errors)}."""
    values, mc_se = values.double().cpu(), mc_se.double().cpu()
    b = len(values)
    se = values.std().item() / math.sqrt(b) if b > 1 else math.nan
    return {name: values.mean().item(), f"{name}_se": se, f"{name}_mc_se": (mc_se.pow(2).sum().sqrt() / b).item()}


def paired_difference(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Mean of a - b over the same points and its standard error over points (sd / sqrt(B))."""
    d = (a.double() - b.double()).cpu()
    return d.mean().item(), (d.std().item() / math.sqrt(len(d)) if len(d) > 1 else math.nan)


# --------------------------------------------------- importance sampling
def importance_weights(trainer: Trainer, x: Tensor, mean: Tensor, std: Tensor, num_samples: int,
                       g: torch.Generator) -> tuple[Tensor, Tensor]:
    """log p(x,z) - log proposal(z) for z from 0.5 N(mean, std^2) + 0.5 p(z): ([B, n], z [B, n, D]).

    num_samples must be even: sample 2j comes from the fitted Gaussian, 2j + 1 from the prior,
    so every chunk holds exactly half of each (chunks have even sizes).
    """
    assert num_samples % 2 == 0, num_samples
    chunk = max(2, rows_per_chunk(x) // len(x) // 2 * 2)
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


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Kish's effective sample size of importance weights [B, n] per row: (sum w)^2 / sum w^2, in [1, n]."""
    return 1 / torch.softmax(log_w.double(), dim=1).pow(2).sum(1)


def log_likelihood(trainer: Trainer, x: Tensor, num_samples: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Importance-sampled log p(x) and its Monte Carlo standard error, per data point: ([B], [B]).

    The Gaussian component starts from the moments of q(z|x) and is refitted to
    the weighted moments of pilot runs, each refit kept only where its own pilot
    has the larger effective sample size, so a poor encoder costs accuracy only in the
    pilots; the estimate uses the main run alone (fresh samples: unbiased for p(x)
    whatever the pilots chose). num_samples is rounded up to an even
    number (half from each component).
    """
    num_samples += num_samples % 2
    pilot = max(num_samples // 20, min(num_samples, 1000)) // 2 * 2
    with evaluating(trainer):
        z_q = posterior_samples(trainer, x, min(256, max(64, num_samples)), g)  # first moments; pilots refine
        mean, std = z_q.mean(1), z_q.std(1) + 1e-3  # [B, D]
        log_w, z = importance_weights(trainer, x, mean, 1.2 * std, pilot, g)
        best = effective_sample_size(log_w)  # of the pilot with the current proposal
        for _ in range(3):  # pilot runs: refit the Gaussian to the self-normalised weighted samples ...
            w = torch.softmax(log_w.double(), dim=1)[..., None].float()
            new_mean = (w * z).sum(1)
            new_std = ((w * (z - new_mean[:, None]) ** 2).sum(1)).sqrt() + 1e-3
            new_log_w, new_z = importance_weights(trainer, x, new_mean, 1.2 * new_std, pilot, g)
            ess = effective_sample_size(new_log_w)
            # ... and keep the refit only where its own pilot has the larger effective sample size, and one
            # large enough to trust (2 (D + 1)): in 32 dimensions refits from a few effective samples collapse
            # the proposal (20-40 nats lower), in 2 they help. (Comparing the pilots' estimates instead would
            # keep proposals that got lucky.)
            better = (ess > best) & (ess >= 2 * (mean.shape[1] + 1))
            mean, std = torch.where(better[:, None], new_mean, mean), torch.where(better[:, None], new_std, std)
            log_w, z = torch.where(better[:, None], new_log_w, log_w), torch.where(better[:, None, None], new_z, z)
            best = torch.maximum(best, ess)
        log_w = importance_weights(trainer, x, mean, 1.2 * std, num_samples, g)[0].double()
        log_px = torch.logsumexp(log_w, 1) - math.log(num_samples)
        rel = (log_w - log_px[:, None]).exp()  # w / p_hat, mean 1
        se = rel.std(1) / math.sqrt(num_samples)  # delta method: se(log p) = se(p) / p
        return log_px, se


def per_point_log_likelihood(trainer: Trainer, x: Tensor, num_samples: int, seed: int = 1234
                             ) -> tuple[Tensor, Tensor]:
    """Importance-sampled log p(x) per row of x and its Monte Carlo error: CPU float64 ([B], [B])."""
    g = torch.Generator(trainer.device).manual_seed(seed)
    values, mc_se = log_likelihood(trainer, x, num_samples, g)
    return values.double().cpu(), mc_se.double().cpu()


def posterior_is_per_point(trainer: Trainer, x: Tensor, num_samples: int, seed: int = 1234
                           ) -> tuple[Tensor, Tensor]:
    """log p(x) by importance sampling with the VAE's own q(z|x) as proposal (the IWAE bound of
    Burda et al. 2016, a stochastic lower bound): CPU float64 ([B], [B]). Gaussian encoders only."""
    if trainer.cfg.encoder != "gaussian":
        raise ValueError(f"posterior_is_per_point needs a density q(z|x): encoder='gaussian', not "
                         f"{trainer.cfg.encoder!r}")
    g = torch.Generator(trainer.device).manual_seed(seed)
    chunk = max(1, rows_per_chunk(x) // len(x))
    with evaluating(trainer):
        log_w = []
        for start in range(0, num_samples, chunk):
            n = min(chunk, num_samples - start)
            x_rep = x.repeat_interleave(n, dim=0)
            q = trainer.encode(x_rep, g)
            lw = (trainer.models.decoder.log_prob(x_rep, q.z) + obj.log_standard_normal(q.z)
                  - obj.log_normal(q.z, q.mean, q.std))
            log_w.append(lw.double().view(len(x), n))
        log_w = torch.cat(log_w, dim=1)
        log_px = torch.logsumexp(log_w, 1) - math.log(num_samples)
        se = (log_w - log_px[:, None]).exp().std(1) / math.sqrt(num_samples)
    return log_px.cpu(), se.cpu()


# -------------------------------------------------------- other metrics
def reconstruction_and_elbo(trainer: Trainer, x: Tensor, n: int, g: torch.Generator) -> tuple[float, float]:
    """E[-log p(x|z)] and E[log p(x|z)] - KL estimate (analytic for the VAE, the adversary's for AVB),
    averaged over x and n posterior samples."""
    with evaluating(trainer):
        rec, kl = [], []
        for xc in x.repeat_interleave(n, dim=0).split(rows_per_chunk(x)):
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
        # float64: the |a|^2 + |b|^2 - 2ab form stays exact for tight clusters far from the origin
        a, b = a.double(), b.double()
        return torch.cat([torch.cdist(ac, b).topk(kk, dim=1, largest=False).values[:, -1]
                          for ac in a.split(1024)])

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


def evaluate(trainer: Trainer, x: Tensor, num_samples: int, seed: int = 1234, estimator: str | None = None
             ) -> dict[str, float]:
    """The metrics of EVAL_METRICS that apply to this model, on the data points x (on the device):
    `elbo` for the VAE, `adversary_elbo` for AVB. `log_likelihood` comes from `estimator` (default: the
    run's `eval_estimator`): importance sampling with `num_samples` per point, or AIS with the run's
    `eval_ais_temps` x `eval_ais_chains` (docs/reproduction/estimators.md: on 32-D images only AIS is
    biased alike for every encoder)."""
    cfg = trainer.cfg
    g = torch.Generator(trainer.device).manual_seed(seed)
    if (estimator or cfg.eval_estimator) == "ais":
        log_px, mc_se = ais_per_point(trainer, x, num_temps=cfg.eval_ais_temps, num_chains=cfg.eval_ais_chains,
                                      seed=seed)
    else:
        log_px, mc_se = log_likelihood(trainer, x, num_samples, g)
    # reconstruction error is heavy-tailed (rare codes in another point's region): use many samples
    rec, elbo = reconstruction_and_elbo(trainer, x, max(1, min(num_samples // 8, rows_per_chunk(x) // len(x))), g)
    return {
        **summary(log_px, mc_se, "log_likelihood"),
        "reconstruction_error": rec,
        "elbo" if cfg.objective == "vae" else "adversary_elbo": elbo,
        "kl_qz_pz": kl_aggregate(trainer, x, cfg.eval_kl_samples, g),
    }


# ----------------------------------------------------------------- AIS
def ais_start(trainer: Trainer, x: Tensor, g: torch.Generator, start: str = "posterior",
              n: int = Q0_SAMPLES) -> tuple[Tensor, Tensor]:
    """Mean and std of AIS's starting Gaussian q0(z|x) per row of x: ([B, D], [B, D]).

    start="posterior": the same rule for every model. The encoder's own moments where it
    knows them (the VAE's q(z|x); the basis encoder's r(z|x), as Adaptive Contrast uses),
    otherwise the moments of n encoder samples (black-box AVB); the encoder runs on n
    copies of each x, so a basis encoder's batch moments of v_i come from B * n draws.
    std = sqrt(var + 1e-4), as the authors' r(z|x). start="prior": N(0, I) (for checking).
    """
    d = trainer.cfg.latent_dim
    if start == "prior":
        return torch.zeros(len(x), d, device=x.device), torch.ones(len(x), d, device=x.device)
    if start != "posterior":
        raise ValueError(f"start={start!r} is unknown; allowed: 'posterior', 'prior'")
    q = trainer.encode(x.repeat_interleave(n, dim=0), g)
    if q.mean is not None:
        mean, var = q.mean.view(len(x), n, d)[:, 0], q.std.view(len(x), n, d)[:, 0].pow(2)
    else:
        z = q.z.view(len(x), n, d)
        mean, var = z.mean(1), z.var(1)
    return mean.float(), (var.float() + Q0_VAR_FLOOR).sqrt()


def ais_per_point(trainer: Trainer, x: Tensor, *, num_temps: int, num_chains: int, leapfrog_steps: int = 10,
                  start: str = "posterior", schedule: str = "linear", chunk: int = 256, seed: int = 1234,
                  q0_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """AIS log p(x) per row of x and its Monte Carlo error over chains: CPU float64 ([B], [B]).

    x is processed `chunk` rows at a time (chunk * num_chains chains in one batch, one step
    size per chunk). The official MNIST scripts use 1000-2000 temperatures and 5-8 chains.
    """
    g = torch.Generator(trainer.device).manual_seed(seed)
    values, mc_se = [], []
    with evaluating(trainer):
        for xc in x.split(chunk):
            mean, std = ais_start(trainer, xc, g, start)
            std = q0_scale * std  # a wider q0 (q0_scale > 1) for encoders narrower than their posterior
            est, err = ais.ais_log_likelihood(trainer.models.decoder.log_prob, xc, mean, std, num_temps=num_temps,
                                              num_chains=num_chains, leapfrog_steps=leapfrog_steps,
                                              schedule=schedule, generator=g)
            values.append(est.double().cpu())
            mc_se.append(err.double().cpu())
    return torch.cat(values), torch.cat(mc_se)


def ais_log_likelihood(trainer: Trainer, x: Tensor, *, num_temps: int = 1000, num_chains: int = 8,
                       start: str = "posterior", seed: int = 1234, **kwargs) -> dict[str, float]:
    """{"ais_log_likelihood", "ais_log_likelihood_se" (over points), "ais_log_likelihood_mc_se"}
    on the rows of x; `kwargs` go to ais_per_point (leapfrog_steps, schedule, chunk)."""
    values, mc_se = ais_per_point(trainer, x, num_temps=num_temps, num_chains=num_chains, start=start, seed=seed,
                                  **kwargs)
    return summary(values, mc_se, "ais_log_likelihood")
