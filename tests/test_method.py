"""The method's core claims, checked on CPU in seconds."""

import math

import pytest
import torch

from avb import objectives as obj
from avb.config import Config
from avb.data import load_dataset, synthetic
from avb.evaluate import log_likelihood
from avb.networks import build_models
from avb.train import Trainer


@pytest.mark.parametrize("loss", ["logistic", "kl"])
def test_adversary_learns_log_density_ratio(loss):
    """Proposition 1: trained alone against fixed q(z|x) and p(z), T -> log q(z|x) - log p(z)."""
    torch.manual_seed(0)
    cfg = Config(adv_hidden=64, adv_inner=32, adversary_loss=loss)
    adversary = build_models(cfg, (1, 2, 2)).adversary
    x_all = synthetic()
    mu = torch.tensor([[1.5, 0.0], [-1.5, 0.0], [0.0, 1.5], [0.0, -1.5]])
    sd = torch.tensor([[0.5, 0.8], [0.8, 0.5], [0.6, 0.6], [0.4, 0.7]])
    opt = torch.optim.Adam(adversary.parameters(), lr=2e-3, betas=(0.5, 0.999))

    def batch(n):
        i = torch.randint(4, (n,))
        z_q = mu[i] + sd[i] * torch.randn(n, 2)
        return x_all[i], z_q, obj.log_normal(z_q, mu[i], sd[i]) - obj.log_standard_normal(z_q)

    for _ in range(2500):
        x, z_q, _ = batch(512)
        t_q, t_p = adversary(x, z_q, torch.randn(512, 2))
        opt.zero_grad()
        obj.adversary_loss(t_q, t_p, loss).backward()
        opt.step()
    x, z_q, true_ratio = batch(4000)
    with torch.no_grad():
        (t_q,) = adversary(x, z_q)
    # tolerance: mean absolute error under q within 0.25 nats, the KL (mean ratio) within 0.15 nats
    assert (t_q - true_ratio).abs().mean() < 0.25
    assert abs(t_q.mean() - true_ratio.mean()) < 0.15


def _linear_gaussian_trainer(w, b, log_scale):
    cfg = Config(objective="vae", encoder="gaussian", likelihood="gaussian", latent_dim=2, hidden=16)
    trainer = Trainer(cfg, (1, 2, 2))
    linear = torch.nn.Linear(2, 4)
    with torch.no_grad():
        linear.weight.copy_(w)
        linear.bias.copy_(b)
        trainer.models.decoder.log_scale.fill_(log_scale)
    trainer.models.decoder.net = linear
    return trainer


def test_importance_sampling_matches_exact_linear_gaussian():
    """p(x|z) = N(Wz + b, s^2 I), p(z) = N(0, I)  =>  p(x) = N(b, W W^T + s^2 I) exactly."""
    torch.manual_seed(1)
    w, b, log_s = torch.randn(4, 2), torch.randn(4), math.log(0.5)
    trainer = _linear_gaussian_trainer(w, b, log_s)
    x = (torch.randn(6, 2) @ w.T + b + 0.5 * torch.randn(6, 4)).view(6, 1, 2, 2)
    exact = torch.distributions.MultivariateNormal(b, w @ w.T + 0.25 * torch.eye(4)).log_prob(x.view(6, 4))
    est, se = log_likelihood(trainer, x, 50000, torch.Generator().manual_seed(0))
    assert (est - exact).abs().max() < 0.02
    assert (est - exact).abs().mean() < 0.005
    assert ((est - exact).abs() < 5 * se + 1e-3).all()  # the reported error bar is honest


def test_importance_sampling_matches_quadrature_on_synthetic_model(tiny):
    """For the 2-D synthetic model, IS agrees with dense grid quadrature to better than 0.005 nats."""
    trainer = Trainer(tiny.replace(hidden=64), (1, 2, 2))
    data = load_dataset(tiny, "cpu")
    for _ in range(300):  # train briefly so the decoder is not trivial
        trainer.step(data.sample(64, trainer.generator))
    x = data.test
    grid = torch.linspace(-7, 7, 701)
    z = torch.cartesian_prod(grid, grid)
    cell = (grid[1] - grid[0]) ** 2
    with torch.no_grad():
        exact = torch.stack([
            torch.logsumexp(trainer.models.decoder.log_prob(xi.expand(len(z), 1, 2, 2), z)
                            + obj.log_standard_normal(z), 0) + cell.log() for xi in x])
    est, se = log_likelihood(trainer, x, 100000, torch.Generator().manual_seed(0))
    assert (est.mean() - exact.mean()).abs() < 0.005
    assert se.max() < 0.01


def test_basis_encoder_moments_match_samples(tiny):
    """The noise-basis encoder's mean and std are those of its samples (what AC relies on)."""
    cfg = tiny.replace(encoder="basis", adaptive_contrast=True)
    enc = build_models(cfg, (1, 2, 2)).encoder
    x = synthetic()[[2]].expand(20000, 1, 2, 2)
    with torch.no_grad():
        out = enc(x, torch.randn(20000, enc.noise_size))
    assert torch.allclose(out.mean[0], out.z.mean(0), atol=0.02)
    assert torch.allclose(out.std[0], out.z.std(0), rtol=0.03)


def test_adaptive_contrast_identity():
    """KL(q||p) = E_q[log q - log r] + E_q[log r - log p]: with q = r exactly the adversary's part is 0."""
    mean, std = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 2.0]])
    z = mean + std * torch.randn(200000, 2)
    z_tilde, analytic = obj.contrast(z, mean.expand_as(z), std.expand_as(z))
    assert torch.allclose(z_tilde.std(0), torch.ones(2), atol=0.01)
    assert abs(analytic.mean() - obj.gaussian_kl(mean, std)[0]) < 0.02


def test_short_avb_beats_short_vae_on_synthetic():
    """The paper's Table 1 ordering, on a budget: AVB's log-likelihood is higher than the VAE's."""
    from avb.evaluate import evaluate

    base = Config(hidden=64, adv_hidden=64, adv_inner=64, batch_size=256, lr=1e-3, adv_lr=2e-3, noise_dim=4,
                  eval_samples=20000)
    scores = {}
    for name, cfg in {"avb": base, "vae": base.replace(objective="vae", encoder="gaussian")}.items():
        data = load_dataset(cfg, "cpu")
        trainer = Trainer(cfg, data.x_shape)
        for _ in range(2500):
            trainer.step(data.sample(cfg.batch_size, trainer.generator))
        scores[name] = evaluate(trainer, data.test, cfg.eval_samples)["log_likelihood"]
    assert scores["avb"] > scores["vae"] + 0.02, scores


def test_compiled_step_matches_eager(tiny):
    """Config.compile=True (torch.compile of encoder, decoder and adversary) trains exactly like eager mode."""
    cfg = tiny.replace(encoder="basis", adaptive_contrast=True, compile=True)
    data = load_dataset(cfg, "cpu")
    compiled, eager = Trainer(cfg, data.x_shape), Trainer(cfg.replace(compile=False), data.x_shape)
    for i in range(5):
        x = data.sample(cfg.batch_size, torch.Generator().manual_seed(i))
        compiled.step(x)
        eager.step(x)
    assert compiled.pop_metrics() == pytest.approx(eager.pop_metrics(), rel=1e-4)
