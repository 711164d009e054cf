"""The AVB training step (Algorithm 1) and the state that makes a run resumable.

`Trainer.step(x)` performs one update of both players on one batch:

  adversary  psi:        min  -E log sigma(T(x, z_q)) - E log(1 - sigma(T(x, z_p)))   (eq. 3.3)
  encoder/decoder phi, theta:  max  E[ log p(x | z_q) - T(x, z_q) ]                    (eq. 3.9)

with z_q = f_phi(x, eps) and z_p ~ p(z). As in the authors' code, both
players' gradients come from one forward pass on the same batch and are
applied together; `adv_steps - 1` extra adversary-only updates come first.
The VAE baseline uses the same step with the analytic KL in place of T.

Metrics stay on the device; `Trainer.pop_metrics()` syncs once per call.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from avb import objectives as obj
from avb.config import Config
from avb.models import build_models
from avb.networks import EncoderOutput

TRAIN_METRICS = ("loss_primal", "loss_adversary", "train_reconstruction", "train_kl")


BLOW_UP_NATS_PER_DIM = 100.0  # a training loss beyond this many nats per data dimension is a blow-up


class DivergedError(FloatingPointError):
    """A loss became NaN or infinite, or blew up: its magnitude passed BLOW_UP_NATS_PER_DIM x data dimensions
    (78,400 nats for an MNIST digit, whose coin-flip model costs 543)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA GPU is visible; use device='cpu' or 'auto'")
    return torch.device(name)


def weights_finite(trainer: Trainer) -> bool:
    """True when every parameter of every network is finite (one host sync)."""
    params = list(trainer.models.parameters())
    return bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True


class Trainer:
    """Networks, optimisers, step counter and random state of one run."""

    def __init__(self, cfg: Config, x_shape: tuple[int, ...], device: torch.device | str = "cpu"):
        self.cfg, self.device, self.x_shape = cfg, torch.device(device), tuple(x_shape)
        with torch.random.fork_rng(devices=[]):  # parameter init from the run's seed, global RNG untouched
            torch.manual_seed(cfg.seed)
            self.models = build_models(cfg, x_shape).to(self.device)
        self.generator = torch.Generator(self.device).manual_seed(cfg.seed)  # all sampling in the run
        m = self.models
        self.opt_primal = torch.optim.Adam([*m.encoder.parameters(), *m.decoder.parameters()],
                                           lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.opt_adv = None
        if m.adversary is not None:
            self.opt_adv = torch.optim.Adam(m.adversary.parameters(), lr=cfg.adv_lr,
                                            betas=(cfg.adv_beta1, cfg.adv_beta2))
        self.step_count = 0
        self._sums = torch.zeros(len(TRAIN_METRICS), device=self.device)
        self._n = 0
        self._autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and self.device.type == "cuda"
                          else contextlib.nullcontext())
        self._encoder, self._decoder, self._adversary = m.encoder, m.decoder, m.adversary
        if cfg.compile:
            self._encoder, self._decoder = torch.compile(m.encoder), torch.compile(m.decoder)
            self._adversary = m.adversary and torch.compile(m.adversary)

    # ----------------------------------------------------------------- sampling
    # Evaluation passes a generator of its own, so that it never shifts the training run's random stream.
    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        size = (n, self.models.encoder.noise_size)
        return torch.randn(size, device=self.device, generator=generator or self.generator)

    def prior(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.cfg.latent_dim, device=self.device, generator=generator or self.generator)

    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> EncoderOutput:
        return self._encoder(x, self.noise(len(x), generator))

    # --------------------------------------------------------------------- step
    def kl_and_scores(self, x: Tensor, q: EncoderOutput, generator: torch.Generator | None = None
                      ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """KL(q(z|x) || p(z)) estimate per example, and T on posterior and prior samples."""
        if self.cfg.objective == "vae":
            return obj.gaussian_kl(q.mean, q.std), None, None
        z_adv, kl_analytic = q.z, 0.0
        if self.cfg.adaptive_contrast:  # the adversary estimates only log q - log r
            z_adv, kl_analytic = obj.contrast(q.z, q.mean, q.std)
        t_q, t_p = self._adversary(x, z_adv, self.prior(len(x), generator))  # contrast samples: N(0, I)
        return t_q + kl_analytic, t_q, t_p

    def adversary_update(self, x: Tensor) -> None:
        """One update of T alone on fresh samples (the extra adversary steps)."""
        with torch.no_grad(), self._autocast:
            q = self.encode(x)
        with self._autocast:
            _, t_q, t_p = self.kl_and_scores(x, q)
        self.opt_adv.zero_grad(set_to_none=True)
        obj.adversary_loss(t_q, t_p, self.cfg.adversary_loss).backward()
        self.opt_adv.step()

    def step(self, x: Tensor) -> None:
        """One iteration of Algorithm 1 on the batch x (data already on the device)."""
        cfg, adv = self.cfg, self._adversary
        for _ in range(cfg.adv_steps - 1 if adv is not None else 0):
            self.adversary_update(x)

        # --- forward: z_q = f(x, eps), T on posterior and prior samples, log p(x|z_q)
        with self._autocast:
            q = self.encode(x)
            kl, t_q, t_p = self.kl_and_scores(x, q)
            log_px_z = self._decoder(x, q.z)  # log p(x|z_q)

        # --- encoder/decoder: maximise E[log p(x|z) - KL estimate] (eq. 3.9); T's weights get no gradient
        loss_primal = (-log_px_z + obj.kl_weight(self.step_count, cfg.kl_warmup_steps) * kl).mean()
        self.opt_primal.zero_grad(set_to_none=True)
        loss_primal.backward(inputs=list(self.opt_primal.param_groups[0]["params"]), retain_graph=adv is not None)

        # --- adversary: minimise eq. 3.3 (or 5.10) on the same samples; no gradient into the encoder
        loss_adv = torch.zeros((), device=self.device)
        if adv is not None:
            loss_adv = obj.adversary_loss(t_q, t_p, cfg.adversary_loss)
            self.opt_adv.zero_grad(set_to_none=True)
            loss_adv.backward(inputs=list(self.opt_adv.param_groups[0]["params"]))
            self.opt_adv.step()
        self.opt_primal.step()

        # --- bookkeeping on the device (no host sync)
        parts = torch.stack([loss_primal.detach(), loss_adv.detach(), -log_px_z.detach().mean(), kl.detach().mean()])
        self._sums += parts
        self._n += 1
        self.step_count += 1

    def pop_metrics(self) -> dict[str, float]:
        """Mean training metrics since the last call (one host sync); raises DivergedError on NaN/inf or a blow-up."""
        values = (self._sums / max(self._n, 1)).tolist()
        self._sums.zero_()
        self._n = 0
        metrics = dict(zip(TRAIN_METRICS, values))
        if not all(math.isfinite(v) for v in values):
            raise DivergedError(f"non-finite training loss at step {self.step_count}: {metrics}")
        bound = BLOW_UP_NATS_PER_DIM * math.prod(self.x_shape)
        if any(abs(v) > bound for v in values):
            raise DivergedError(f"training loss beyond {bound:g} nats ({BLOW_UP_NATS_PER_DIM:g} per data dimension) "
                                f"at step {self.step_count}: {metrics}")
        if self.cfg.objective == "vae":  # no adversary: its loss is a constant 0, not a metric
            del metrics["loss_adversary"]
        return metrics

    # -------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {
            "config": self.cfg.to_dict(),
            "x_shape": self.x_shape,
            "models": self.models.state_dict(),
            "opt_primal": self.opt_primal.state_dict(),
            "opt_adv": self.opt_adv.state_dict() if self.opt_adv else None,
            "step": self.step_count,
            "generator": self.generator.get_state(),
            "generator_device": self.device.type,
            "metric_sums": self._sums.clone(),
            "metric_n": self._n,
        }

    def load_state_dict(self, state: dict) -> None:
        if Config.from_dict(state["config"]).to_dict() != self.cfg.to_dict():  # fields added since: defaults
            raise ValueError("checkpoint was written by a different config; build the Trainer from its config "
                             "(Config.from_dict(state['config']))")
        self.models.load_state_dict(state["models"])  # strict: every tensor must match
        self.opt_primal.load_state_dict(state["opt_primal"])
        if self.opt_adv:
            self.opt_adv.load_state_dict(state["opt_adv"])
        self.step_count = state["step"]
        if state["generator_device"] == self.device.type:  # RNG streams do not carry across device types
            self.generator.set_state(state["generator"].cpu())  # RNG states are CPU byte tensors
        self._sums.copy_(state["metric_sums"])
        self._n = state["metric_n"]
