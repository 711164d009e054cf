"""One typed, validated config for a single AVB training run.

Everything a run needs flows through `Config`: the CLI builds one, the Ray
trainable builds one from the search space's values, the checkpoint stores it.
Invalid values raise `ConfigError` naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from typing import Any

OBJECTIVES = ("avb", "vae")  # AVB (Algorithm 1) or the VAE baseline with analytic KL
ENCODERS = ("blackbox", "basis", "gaussian")  # z = f(x, eps) / noise basis (known moments) / diagonal Gaussian
ADVERSARY_INPUTS = ("xz", "z")  # T(x, z) as in AVB, or T(z) as in an adversarial autoencoder (section 5.2)
ADVERSARY_LOSSES = ("logistic", "kl")  # eq. 3.3, or the f-divergence (KL) form eq. 5.10
LIKELIHOODS = ("bernoulli", "gaussian")
ARCHS = ("mlp", "conv", "resnet")
BASIS_ACTIVATIONS = ("elu", "leaky_relu")  # the noise networks v_i: the authors' ELU, or leaky ReLU (0.2)
ESTIMATORS = ("is", "ais")  # log p(x) during training: importance sampling, or annealed importance sampling
DATASETS = ("synthetic", "digits", "mnist_sample", "mnist", "celeba", "folder")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config field holds a value that is not allowed."""


@dataclass
class Config:
    # --- method
    objective: str = "avb"
    encoder: str = "blackbox"
    adaptive_contrast: bool = False
    adversary_input: str = "xz"
    adversary_loss: str = "logistic"
    kl_warmup_steps: int = 0  # 0: no KL annealing (the default, as in the official code)
    # --- data and networks
    dataset: str = "synthetic"
    data_root: str = ""
    arch: str = "mlp"
    likelihood: str = "bernoulli"
    latent_dim: int = 2
    noise_dim: int = 2  # per noise vector; the basis encoder uses `basis_size` of them
    basis_size: int = 4  # noise basis vectors v_i(eps_i) of the basis encoder (authors' MNIST code: 32)
    basis_hidden: int = 128  # width of each noise network v_i (authors' code: 3 x 128, ELU)
    basis_depth: int = 3  # hidden layers of each noise network v_i
    basis_activation: str = "elu"  # of the noise networks v_i (authors' code: ELU)
    hidden: int = 512  # width of encoder and decoder layers
    depth: int = 2  # hidden layers of encoder and decoder
    # --- adversary capacity: T(x,z) = <a(x), b(z)> + t_x(x) + t_z(z) [+ 0.5||z||^2]
    adv_hidden: int = 512
    adv_depth: int = 2
    adv_inner: int = 512
    adv_prior_term: bool = True
    # --- optimisation (Adam per player; the official code uses beta1 = 0.5)
    batch_size: int = 512
    steps: int = 20000
    lr: float = 1e-4  # encoder and decoder
    adv_lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    adv_beta1: float = 0.5
    adv_beta2: float = 0.999
    adv_steps: int = 1  # adversary updates per encoder/decoder update
    # --- evaluation
    eval_samples: int = 20000  # importance samples per data point for log p(x)
    eval_points: int = 512  # validation points evaluated during training (all of the synthetic set)
    eval_kl_samples: int = 10000  # samples of q(z) and of p(z) for the kl_qz_pz diagnostic (k-NN estimate)
    eval_estimator: str = "is"  # the validation log p(x) that trials, ASHA and checkpoints rank by: is / ais
    eval_ais_temps: int = 500  # eval_estimator='ais': temperatures ...
    eval_ais_chains: int = 1  # ... and chains per point (docs/reproduction/estimators.md)
    # --- run
    seed: int = 0
    split_seed: int = 0  # seeded train / validation / test split of the data set (avb.data)
    device: str = "auto"
    amp: bool = False  # bf16 autocast on CUDA
    compile: bool = False  # torch.compile the training step's networks

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        _coerce_types(self)
        choices = {
            "objective": OBJECTIVES,
            "encoder": ENCODERS,
            "adversary_input": ADVERSARY_INPUTS,
            "adversary_loss": ADVERSARY_LOSSES,
            "likelihood": LIKELIHOODS,
            "arch": ARCHS,
            "dataset": DATASETS,
            "device": DEVICES,
            "eval_estimator": ESTIMATORS,
            "basis_activation": BASIS_ACTIVATIONS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is unknown; allowed: {', '.join(allowed)}")
        for name in ("latent_dim", "noise_dim", "basis_size", "basis_hidden", "basis_depth", "hidden", "depth",
                     "adv_hidden", "adv_depth", "adv_inner", "batch_size", "steps", "adv_steps",
                     "eval_samples", "eval_points", "eval_ais_chains"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer (>= 1)")
        for name in ("lr", "adv_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive learning rate (> 0)")
        for name in ("beta1", "beta2", "adv_beta1", "adv_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be an Adam beta in [0, 1)")
        if self.eval_kl_samples < 10:
            raise ConfigError(f"eval_kl_samples={self.eval_kl_samples} is too few for the k-NN KL estimate; use >= 10")
        if self.eval_ais_temps < 2:
            raise ConfigError(f"eval_ais_temps={self.eval_ais_temps} must be >= 2 (AIS needs both ends of the path)")
        if self.split_seed < 0:
            raise ConfigError(f"split_seed={self.split_seed} must be >= 0")
        if self.kl_warmup_steps < 0:
            raise ConfigError(f"kl_warmup_steps={self.kl_warmup_steps} must be >= 0 (0 turns warm-up off)")
        if self.objective == "vae" and self.encoder != "gaussian":
            raise ConfigError(f"encoder={self.encoder!r} cannot be used with objective='vae': "
                              "the VAE's analytic KL needs encoder='gaussian'")
        if self.encoder == "basis" and self.batch_size < 2:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 2 with encoder='basis' "
                              "(the moments of v_i are estimated over the batch)")
        if self.adaptive_contrast and self.encoder == "blackbox":
            raise ConfigError("adaptive_contrast=True needs an encoder with known moments: "
                              "use encoder='basis' (or 'gaussian'), not 'blackbox'")
        if self.adaptive_contrast and self.objective != "avb":
            raise ConfigError("adaptive_contrast=True only applies to objective='avb'")
        if self.adaptive_contrast and self.adversary_input != "xz":
            raise ConfigError("adaptive_contrast=True needs adversary_input='xz' (r(z|x) depends on x)")
        if self.dataset == "synthetic" and self.arch != "mlp":
            raise ConfigError(f"arch={self.arch!r} does not fit dataset='synthetic' (2x2 images): use arch='mlp'")
        if self.dataset == "folder" and not self.data_root:
            raise ConfigError("dataset='folder' needs data_root=PATH (a folder of images)")

    # ------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {', '.join(unknown)}; "
                              f"known fields: {', '.join(sorted(known))}")
        return cls(**values)

    def replace(self, **changes: Any) -> Config:
        return Config.from_dict({**self.to_dict(), **changes})


def _coerce_types(cfg: Config) -> None:
    """Accept ints for floats and numpy scalars; reject anything else of the wrong type."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        kind = {"str": str, "int": int, "float": float, "bool": bool}[f.type]
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(cfg, f.name, float(value))
        elif kind is int and hasattr(value, "item") and not isinstance(value, bool):
            setattr(cfg, f.name, int(value.item()))
        elif kind is bool and hasattr(value, "item") and not isinstance(value, (bool, int)):
            setattr(cfg, f.name, bool(value.item()))
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{f.name}={value!r} must be of type {f.type}")


def parse_value(raw: str) -> Any:
    """A value written as text (a --set flag, an MLflow param): '64' -> 64, '1e-3' -> 0.001,
    'true'/'True' -> True; anything else stays a string."""
    try:
        return json.loads(raw.lower() if raw in ("True", "False") else raw)
    except json.JSONDecodeError:
        return raw


def field_names() -> list[str]:
    return [f.name for f in fields(Config)]


__all__ = ["Config", "ConfigError", "field_names", "parse_value"]
