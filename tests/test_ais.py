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


@pytest.mark.slow
def test_nonlinear_matches_grid_quadrature():
    log_lik = _mlp_model()
    x = ALL_X[::3]  # 6 of the 16 images
    exact = _grid_log_px(log_lik, x)
    zeros, ones = torch.zeros(6, 2, dtype=DT), torch.ones(6, 2, dtype=DT)
    est, se = ais_log_likelihood(log_lik, x, zeros, ones, num_temps=300, num_chains=1024,
                                 generator=torch.Generator().manual_seed(0))
    assert (est - exact).abs().max() < 0.05, est - exact
    assert (se > 0).all() and (se < 0.05).all(), se


@pytest.mark.slow
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


# --- The evaluation protocol (avb.evaluate): q0 from each model's own encoder, the same for every method.

def _trained(cfg, steps):
    from avb.data import load_dataset
    from avb.train import Trainer

    data = load_dataset(cfg, "cpu")
    trainer = Trainer(cfg, data.x_shape)
    for _ in range(steps):
        trainer.step(data.sample(cfg.batch_size, trainer.generator))
    return trainer, data


def _grid_log_px_of(trainer, x, n=601, lim=6.0):
    """Exact log p(x) of a 2-D latent model by midpoint quadrature over [-lim, lim]^2."""
    h = 2 * lim / n
    t = torch.linspace(-lim + h / 2, lim - h / 2, n)
    z = torch.cartesian_prod(t, t)
    log_prior = -0.5 * (z.pow(2).sum(1) + 2 * math.log(2 * math.pi))
    with torch.no_grad():
        return torch.stack([torch.logsumexp(trainer.models.decoder.log_prob(xi.expand(len(z), *xi.shape), z)
                                            .double() + log_prior.double(), 0) + 2 * math.log(h) for xi in x])


VARIANTS = {"vae": {"objective": "vae", "encoder": "gaussian"}, "avb": {},
            "avb_ac": {"encoder": "basis", "adaptive_contrast": True}}


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_ais_matches_exact_grid_value_on_synthetic(variant):
    """The synthetic set (2-D latent): AIS from the encoder's q0 within 0.01 nats of grid quadrature.

    The implicit encoders start narrow (the authors' initialisation), so after 400 steps their q0 is a
    poorer start than the VAE's: 200 temperatures x 64 chains left a Monte Carlo error of about 0.015
    nats on the mean; 500 x 256 brings it to about 0.005."""
    from avb.config import Config
    from avb.evaluate import ais_per_point

    cfg = Config(hidden=64, adv_hidden=64, adv_inner=32, batch_size=128, lr=1e-3, adv_lr=1e-3, noise_dim=4,
                 **VARIANTS[variant])
    trainer, data = _trained(cfg, 400)
    exact = _grid_log_px_of(trainer, data.test)
    est, mc_se = ais_per_point(trainer, data.test, num_temps=500, num_chains=256)
    assert est.dtype == torch.float64 and est.device.type == "cpu" and est.shape == mc_se.shape == (4,)
    assert abs(est.mean() - exact.mean()) < 0.01, (est - exact, mc_se)
    assert ((est - exact).abs() < 0.03).all(), (est - exact, mc_se)


@pytest.mark.slow
@pytest.mark.parametrize("start,temps,chains", [("posterior", 300, 64), ("prior", 500, 512)])
def test_ais_matches_known_marginal_through_the_trainer(start, temps, chains):
    """A VAE with a linear-Gaussian decoder, p(x) = N(b, W W^T + s^2 I), and an encoder near the
    exact posterior (mean off by 0.2, std 1.3x): AIS within 0.05 nats of the exact log p(x).
    The prior start needs more temperatures and chains for the same accuracy."""
    from avb.config import Config
    from avb.evaluate import ais_per_point
    from avb.train import Trainer

    g = torch.Generator().manual_seed(1)
    w, b, s = torch.randn(4, 2, generator=g), torch.randn(4, generator=g), 0.5
    trainer = Trainer(Config(objective="vae", encoder="gaussian", likelihood="gaussian", hidden=16), (1, 2, 2))
    cov = torch.linalg.inv(torch.eye(2) + w.T @ w / s**2)  # exact posterior: N(cov W^T (x - b) / s^2, cov)
    decoder, encoder = torch.nn.Linear(2, 4), torch.nn.Linear(4, 4)
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)
        trainer.models.decoder.log_scale.fill_(math.log(s))
        encoder.weight.copy_(torch.cat([cov @ w.T / s**2, torch.zeros(2, 4)]))
        encoder.bias.copy_(torch.cat([-cov @ w.T @ b / s**2 + 0.2, (1.3 * cov.diagonal().sqrt()).log()]))
    trainer.models.decoder.net, trainer.models.encoder.net = decoder, encoder
    x = (torch.randn(6, 2, generator=g) @ w.T + b + s * torch.randn(6, 4, generator=g)).view(6, 1, 2, 2)
    exact = MultivariateNormal(b, w @ w.T + s**2 * torch.eye(4)).log_prob(x.view(6, 4)).double()
    est, _ = ais_per_point(trainer, x, num_temps=temps, num_chains=chains, start=start)
    assert (est - exact).abs().max() < 0.05, est - exact


@pytest.mark.slow
def test_vae_ais_is_not_below_its_own_importance_bound():
    """On a VAE, AIS (q0 = q(z|x)) is at least the IS bound with q(z|x) as proposal, up to their errors."""
    from avb.config import Config
    from avb.evaluate import ais_per_point, posterior_is_per_point

    cfg = Config(dataset="digits", objective="vae", encoder="gaussian", latent_dim=8, hidden=64, batch_size=64,
                 lr=1e-3)
    trainer, data = _trained(cfg, 600)
    x = data.eval_batch(32)
    iwae, iwae_se = posterior_is_per_point(trainer, x, 2000)
    est, ais_se = ais_per_point(trainer, x, num_temps=200, num_chains=8)
    gap = est - iwae  # per point
    tol = 3 * (iwae_se.pow(2) + ais_se.pow(2)).sqrt()
    assert gap.mean() > -3 * tol.pow(2).mean().sqrt() / math.sqrt(len(x)), (gap.mean(), tol.mean())
    assert (gap > -tol - 0.05).all(), (gap, tol)


def test_ais_start_follows_each_encoder():
    """q0: the VAE's q(z|x), the basis encoder's known moments, a fit to black-box samples; or N(0, I)."""
    from avb.config import Config
    from avb.evaluate import ais_start, evaluating
    from avb.train import Trainer

    x = ALL_X[:3].float().view(3, 1, 2, 2)
    for changes in VARIANTS.values():
        trainer = Trainer(Config(hidden=16, adv_hidden=16, adv_inner=8, **changes), (1, 2, 2))
        with evaluating(trainer):
            mean, std = ais_start(trainer, x, torch.Generator().manual_seed(0))
            z = trainer.encode(x.repeat_interleave(4000, 0), torch.Generator().manual_seed(1)).z.view(3, 4000, 2)
            prior = ais_start(trainer, x, torch.Generator().manual_seed(0), start="prior")
        assert torch.allclose(mean, z.mean(1), atol=0.05) and torch.allclose(std, z.std(1), rtol=0.15, atol=0.02)
        assert torch.equal(prior[0], torch.zeros(3, 2)) and torch.equal(prior[1], torch.ones(3, 2))


def test_evaluate_scores_with_the_runs_estimator(tiny):
    """eval_estimator='ais' makes `log_likelihood` an AIS estimate (what image presets select with); on the 2-D
    synthetic set it agrees with importance sampling, which is exact there. (A VAE: an untrained implicit encoder
    at the authors' initialisation is a point mass, and AIS from so narrow a q0 is biased by nats.)"""
    from avb.data import synthetic
    from avb.evaluate import evaluate
    from avb.train import Trainer

    cfg = tiny.replace(objective="vae", encoder="gaussian", eval_estimator="ais", eval_ais_temps=200,
                       eval_ais_chains=4)
    trainer = Trainer(cfg, (1, 2, 2))
    by_ais = evaluate(trainer, synthetic(), 4000)
    by_is = evaluate(trainer, synthetic(), 4000, estimator="is")
    assert abs(by_ais["log_likelihood"] - by_is["log_likelihood"]) < 0.02
    assert by_ais["log_likelihood"] != by_is["log_likelihood"]  # two estimators, not one
