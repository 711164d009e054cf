"""Tests of avb.ais against models whose log p(x) is known exactly or by dense quadrature."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from avb.ais import ais_log_likelihood

DT = torch.float64


# --- Linear-Gaussian model: p(x|z) = N(Wz + c, s^2 I), p(z) = N(0, I), p(x) = N(c, WW^T + s^2 I).

def _linear_gaussian(seed=0, d=2, n=5, s=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g, dtype=DT)
    c = torch.randn(n, generator=g, dtype=DT)

    def log_lik(x, z):
        return (-0.5 * ((x - z @ w.T - c) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(1)

    marginal = MultivariateNormal(c, w @ w.T + s**2 * torch.eye(n, dtype=DT))
    return log_lik, marginal, w, s


def _sample(marginal, n, seed, scale=1.0):
    """Data points from p(x), their deviation from the mean scaled by `scale`."""
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n, marginal.loc.shape[0], generator=g, dtype=DT)
    return marginal.loc + scale * eps @ marginal.scale_tril.T


@pytest.mark.parametrize("schedule", ["linear", "sigmoid"])
def test_linear_gaussian_matches_exact(schedule):
    log_lik, marginal, _, _ = _linear_gaussian()
    x = _sample(marginal, 4, seed=1, scale=0.5)
    q0_mean, q0_std = torch.zeros(4, 2, dtype=DT), torch.ones(4, 2, dtype=DT)
    # One HMC step per temperature from q0 = N(0, I) leaves a log-weight spread of ~0.3 nats per
    # chain at 400 temperatures, hence many (cheap, batched) chains for a 0.05-nat check.
    est, se = ais_log_likelihood(log_lik, x, q0_mean, q0_std, num_temps=400, num_chains=1024,
                                 schedule=schedule, generator=torch.Generator().manual_seed(2))
    exact = marginal.log_prob(x)
    assert est.shape == se.shape == (4,)
    assert (est - exact).abs().max() < 0.05, est - exact
    assert (se > 0).all() and (se < 0.05).all(), se


def test_linear_gaussian_with_offset_q0_matches_exact():
    """Adaptive-contrast style start: q0 close to, but not equal to, the exact posterior."""
    log_lik, marginal, w, s = _linear_gaussian(seed=3, d=3, s=0.5)
    x = _sample(marginal, 4, seed=4)
    cov = torch.linalg.inv(torch.eye(3, dtype=DT) + w.T @ w / s**2)  # exact posterior covariance
    post_mean = (x - marginal.loc) @ w @ cov.T / s**2
    q0_mean, q0_std = post_mean + 0.2, 1.2 * cov.diagonal().sqrt().expand(4, 3)
    est, _ = ais_log_likelihood(log_lik, x, q0_mean, q0_std, num_temps=200, num_chains=256,
                                generator=torch.Generator().manual_seed(5))
    assert (est - marginal.log_prob(x)).abs().max() < 0.05, est - marginal.log_prob(x)


# --- Nonlinear 2-D model: fixed random MLP decoder, Bernoulli outputs on 4 binary pixels.

def _mlp_model(seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    w1, b1 = scale * torch.randn(2, 16, generator=g, dtype=DT), torch.randn(16, generator=g, dtype=DT)
    w2, b2 = torch.randn(16, 4, generator=g, dtype=DT), torch.randn(4, generator=g, dtype=DT)

    def log_lik(x, z):
        logits = torch.tanh(z @ w1 + b1) @ w2 + b2
        return -torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)

    return log_lik


def _grid_log_px(log_lik, x, n=400, lim=6.0):
    """Dense midpoint-rule quadrature of p(x) = int p(x|z) p(z) dz over [-lim, lim]^2."""
    h = 2 * lim / n
    t = torch.linspace(-lim + h / 2, lim - h / 2, n, dtype=DT)
    z = torch.cartesian_prod(t, t)  # [n^2, 2]
    log_prior = -0.5 * (z.pow(2).sum(1) + 2 * math.log(2 * math.pi))
    out = [torch.logsumexp(log_lik(xi.expand(len(z), -1), z) + log_prior, 0) + 2 * math.log(h) for xi in x]
    return torch.stack(out)


ALL_X = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=DT)] * 4)  # all 16 binary 2x2 images


def test_nonlinear_matches_grid_quadrature():
    log_lik = _mlp_model()
    x = ALL_X[::3]  # 6 of the 16 images
    exact = _grid_log_px(log_lik, x)
    zeros, ones = torch.zeros(6, 2, dtype=DT), torch.ones(6, 2, dtype=DT)
    est, se = ais_log_likelihood(log_lik, x, zeros, ones, num_temps=300, num_chains=1024,
                                 generator=torch.Generator().manual_seed(0))
    assert (est - exact).abs().max() < 0.05, est - exact
    assert (se > 0).all() and (se < 0.05).all(), se


def test_more_temperatures_tighten_and_few_temperatures_lower_bound():
    log_lik = _mlp_model(seed=1, scale=5.0)
    exact = _grid_log_px(log_lik, ALL_X)
    zeros, ones = torch.zeros(16, 2, dtype=DT), torch.ones(16, 2, dtype=DT)
    errors = {}
    for temps in (5, 300):
        diffs = []
        for seed in range(3):
            est, _ = ais_log_likelihood(log_lik, ALL_X, zeros, ones, num_temps=temps, num_chains=2,
                                        generator=torch.Generator().manual_seed(seed))
            diffs.append(est - exact)
        errors[temps] = torch.stack(diffs)
    assert errors[300].abs().mean() < 0.5 * errors[5].abs().mean()
    assert errors[5].mean() <= 0.02  # AIS under-estimates log p(x) in expectation


def test_float32_and_image_shaped_x():
    """dtype follows q0; x may have any trailing shape (here [B, 2, 2] images)."""
    log_lik64, marginal, w, s = _linear_gaussian()
    x = _sample(marginal, 4, seed=1, scale=0.5)
    w32, c32 = w.float(), marginal.loc.float()

    def log_lik(x, z):  # x: [N, 5, 1]
        return (-0.5 * (x.flatten(1) - z @ w32.T - c32) ** 2 - 0.5 * math.log(2 * math.pi)).sum(1)

    est, se = ais_log_likelihood(log_lik, x.float().unsqueeze(-1), torch.zeros(4, 2), torch.ones(4, 2),
                                 num_temps=300, num_chains=512, generator=torch.Generator().manual_seed(0))
    assert est.dtype == se.dtype == torch.float32 and not est.requires_grad
    assert (est.double() - marginal.log_prob(x)).abs().max() < 0.05


def test_deterministic_given_generator():
    log_lik = _mlp_model()
    args = (log_lik, ALL_X[:3], torch.zeros(3, 2, dtype=DT), torch.ones(3, 2, dtype=DT))
    a = ais_log_likelihood(*args, num_temps=20, generator=torch.Generator().manual_seed(7))
    b = ais_log_likelihood(*args, num_temps=20, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_single_chain_gives_nan_std_error():
    log_lik = _mlp_model()
    est, se = ais_log_likelihood(log_lik, ALL_X[:2], torch.zeros(2, 2, dtype=DT), torch.ones(2, 2, dtype=DT),
                                 num_temps=10, num_chains=1, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(est).all() and torch.isnan(se).all()


# --- Argument validation.

def _bad_call(**kw):
    log_lik = _mlp_model()
    x, m, s = ALL_X[:2], torch.zeros(2, 2, dtype=DT), torch.ones(2, 2, dtype=DT)
    x, m, s = kw.pop("x", x), kw.pop("q0_mean", m), kw.pop("q0_std", s)
    ais_log_likelihood(log_lik, x, m, s, **kw)


@pytest.mark.parametrize("kw, name", [
    ({"num_temps": 1}, "num_temps"),
    ({"num_chains": 0}, "num_chains"),
    ({"leapfrog_steps": 0}, "leapfrog_steps"),
    ({"step_size": 0.0}, "step_size"),
    ({"target_accept": 1.0}, "target_accept"),
    ({"schedule": "cosine"}, "schedule"),
    ({"q0_mean": torch.zeros(3, 2, dtype=DT)}, "q0_mean"),
    ({"q0_mean": torch.zeros(2, dtype=DT)}, "q0_mean"),
    ({"q0_std": torch.ones(2, 3, dtype=DT)}, "q0_std"),
])
def test_bad_arguments_raise_value_error(kw, name):
    with pytest.raises(ValueError, match=name):
        _bad_call(**kw)


def test_wrong_log_likelihood_shape_raises():
    x, m, s = ALL_X[:2], torch.zeros(2, 2, dtype=DT), torch.ones(2, 2, dtype=DT)
    with pytest.raises(ValueError, match="log_likelihood"):
        ais_log_likelihood(lambda x, z: z.sum(1, keepdim=True), x, m, s, num_temps=3)
