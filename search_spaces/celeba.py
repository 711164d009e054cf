"""CelebA 64x64 with residual encoder/decoder and a z-conditioned conv adversary (section 4).

    python study/run.py --preset celeba --set data_root=/data --gpus-per-trial 1 --num-trials 16

Needs the CelebA files under DATA_ROOT/celeba (see avb/images.py); they are
never downloaded automatically. Values in [0, 1] with a Gaussian likelihood.
Splits: the official train / valid / test partition; trials are scored on
validation images by AIS (1,000 temperatures: importance sampling with a Gaussian
proposal is biased by how Gaussian each encoder is, docs/reproduction/estimators.md;
not yet checked on this decoder), the final AIS on test images.
"""

from avb.config import Config

BASE = Config(dataset="celeba", data_root="data", arch="resnet", likelihood="gaussian", encoder="basis",
              adaptive_contrast=True, latent_dim=64,
              noise_dim=64, basis_size=32, hidden=32, depth=1, adv_hidden=32, adv_depth=1, batch_size=64, lr=1e-4,
              adv_lr=1e-4, eval_samples=200, eval_points=256, eval_estimator="ais", eval_ais_temps=1000,
              eval_ais_chains=1)
ITERATIONS = 20
STEPS_PER_ITERATION = 2000

BASELINES = [
    {"adv_hidden": 32, "adv_depth": 1, "lr": 1e-4, "adv_lr": 1e-4, "adv_steps": 1, "beta1": 0.5},
]

PAPER: dict = {}  # the paper shows CelebA samples only (Figure 6), no figures to compare
FINAL_AIS = {"num_temps": 500, "num_chains": 4, "points": 64}


def space(trial, base: Config) -> None:
    """Define-by-run space (Optuna): only suggests. One method per study, BASE's AVB+AC or --set's; the method
    is not searched (docs/search.md). `adv_inner` is unused by this adversary, so it is not searched.

    Ranges, and why: learning rates log-uniform on 3e-5 to 1e-3 around the 1e-4 of the baseline (no CelebA
    study has been run: these are the MNIST preset's ranges, not measured here); adversary width 16-64 channels
    and depth 1-3 (a trial must fit one GPU at batch 64); adversary steps 1-2; beta1 0, 0.5, 0.9."""
    trial.suggest_float("lr", 3e-5, 1e-3, log=True)
    trial.suggest_categorical("beta1", [0.0, 0.5, 0.9])
    if base.objective == "vae":
        return None
    trial.suggest_int("adv_hidden", 16, 64, log=True)
    trial.suggest_int("adv_depth", 1, 3)
    trial.suggest_float("adv_lr", 3e-5, 1e-3, log=True)
    trial.suggest_int("adv_steps", 1, 2)
    return None
