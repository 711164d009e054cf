"""Reproduce the paper's Table 1 and Figure 3: VAE, AVB and AVB+AC on the synthetic set.

    python benchmarks/reproduce_table1.py --help
    python benchmarks/reproduce_table1.py                # ~15 minutes on 2 CPU cores
    python benchmarks/reproduce_table1.py --smoke --out /tmp/t1 --runs /tmp/t1/runs   # seconds, misses the targets

Writes docs/reproduction/table1.md (our figures next to the paper's) and
docs/reproduction/latent_*.png (Figure 3). Fixed seeds; checkpoints go to
--runs (default runs/reproduction/, reused by benchmarks/posterior.py).
Targets (issue 2): AVB and AVB+AC log-likelihood >= -1.44, AVB reconstruction
error <= 0.03, VAE within 0.05 of the paper's -1.593.

The table also answers why our VAE's reconstruction error is not the paper's
0.091: it is measured under four readings of the paper's definition, for the
three models and for VAEs from further seeds (--vae-seeds).

Deviation from the paper, for the time budget: 256 hidden units instead of 512
and learning rates 5e-4 / 1e-3 instead of 2e-5 / 1e-4 (100k iterations), which
converge in 15k steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from avb import checkpoint  # noqa: E402
from avb.config import Config  # noqa: E402
from avb.data import load_dataset  # noqa: E402
from avb.evaluate import evaluate, evaluating, posterior_samples  # noqa: E402
from avb.figures import latent_figure  # noqa: E402
from avb.fit import fit  # noqa: E402
from avb.train import Trainer, resolve_device  # noqa: E402
from search_spaces.synthetic import PAPER  # noqa: E402  Table 1; the paper reports no AVB+AC on this set

ROOT = Path(__file__).resolve().parents[1]
DEVICE_NAME = [f"{torch.get_num_threads()} CPU threads"]  # set by main for --device cuda
RECIPE = Config(hidden=256, adv_hidden=256, adv_inner=256, batch_size=256, lr=5e-4, adv_lr=1e-3, noise_dim=4,
                eval_samples=100000)
NOTEBOOK_VAE = {"objective": "vae", "encoder": "gaussian", "hidden": 64, "depth": 3, "batch_size": 512, "lr": 2e-5,
                "steps": 100000}  # the authors' toy notebook VAE: 3 x 64 units, batch 512, lr 2e-5, 100k iterations
METHODS = {
    "VAE": {"objective": "vae", "encoder": "gaussian"},
    "AVB": {},
    "AVB+AC": {"encoder": "basis", "adaptive_contrast": True},
}
ROWS = {"log_likelihood": "log-likelihood", "reconstruction_error": "reconstruction error",
        "elbo": "ELBO (exact, a bound: VAE only)",
        "adversary_elbo": "adversary's ELBO estimate (not a bound: AVB only)", "kl_qz_pz": "KL(q(z), p(z))"}
DEFINITIONS = {  # readings of "the mean cross-entropy between an input x and its reconstruction" (section 4)
    "sampled": "E_q[-log p(x\\|z)], summed over the 4 pixels (ours, above)",
    "per_pixel": "the same, per pixel (/4)",
    "at_mean": "-log p(x\\|z = E[z\\|x]): through the posterior mean, summed",
    "mean_image": "cross-entropy of x with E_q[p(x=1\\|z)] (the mean reconstruction), summed",
}


def slug(name: str) -> str:
    return name.lower().replace("+", "_")


def targets(ours: dict, ac_seeds: dict) -> list[tuple[str, bool]]:
    return [
        (f"AVB+AC log-likelihood >= -1.395 on each of {len(ac_seeds)} seeds",
         all(r["log_likelihood"] >= -1.395 for r in ac_seeds.values())),
        ("AVB log-likelihood >= -1.44", ours["AVB"]["log_likelihood"] >= -1.44),
        ("AVB+AC log-likelihood >= -1.44", ours["AVB+AC"]["log_likelihood"] >= -1.44),
        ("AVB reconstruction error <= 0.03", ours["AVB"]["reconstruction_error"] <= 0.03),
        ("VAE log-likelihood within 0.05 of -1.593", abs(ours["VAE"]["log_likelihood"] + 1.593) <= 0.05),
        ("VAE does not beat AVB", ours["VAE"]["log_likelihood"] < ours["AVB"]["log_likelihood"]),
    ]


def reconstruction_readings(trainer: Trainer, x: torch.Tensor, n: int = 20000, seed: int = 0) -> dict[str, float]:
    """The reconstruction error of the four data points under each reading of DEFINITIONS."""
    g = torch.Generator(trainer.device).manual_seed(seed)
    with evaluating(trainer):
        z = posterior_samples(trainer, x, n, g)  # [B, n, D]
        dec = trainer.models.decoder
        sampled = torch.stack([-dec.log_prob(xi.expand(n, *xi.shape), zi) for xi, zi in zip(x, z)]).mean()
        at_mean = -dec.log_prob(x, z.mean(1)).mean()  # E[z|x] of n samples (exact for the VAE up to noise)
        probs = torch.stack([dec.mean(zi).mean(0) for zi in z])  # [B, C, H, W]
        mean_image = F.binary_cross_entropy(probs, x, reduction="none").flatten(1).sum(1).mean()
    return {"sampled": sampled.item(), "per_pixel": sampled.item() / x[0].numel(), "at_mean": at_mean.item(),
            "mean_image": mean_image.item()}


def findings(ours: dict, readings: dict, seeds: dict) -> str:
    """What the measurements say about the paper's VAE reconstruction error of 0.091 (computed, not hand-typed)."""
    paper = PAPER["VAE"]
    pixels = 4
    summed = [r["reconstruction_error"] for r in seeds.values()]
    kls = [-r["elbo"] - r["reconstruction_error"] for r in seeds.values()]
    kl_if_summed = -paper["elbo"] - paper["reconstruction_error"]
    kl_if_per_pixel = -paper["elbo"] - pixels * paper["reconstruction_error"]
    per_pixel_fits = min(summed) / pixels - 0.02 <= paper["reconstruction_error"] <= max(summed) / pixels + 0.02
    kl_fits = min(kls) - 0.05 <= kl_if_per_pixel <= max(kls) + 0.05
    summed_reached = min(summed) <= paper["reconstruction_error"] + 0.05
    verdict = ("**A different definition, most likely a per-pixel mean, not a weaker model.**"
               if per_pixel_fits and kl_fits and not summed_reached else "**Inconclusive on this run.**")
    elbos = [r["elbo"] for r in seeds.values()]
    return " ".join([
        f"{verdict} Summed over the four pixels, our VAEs (every row above) reconstruct with "
        f"{min(summed):.3f}-{max(summed):.3f} nats, i.e. {min(summed) / pixels:.3f}-{max(summed) / pixels:.3f} "
        f"per pixel (paper: {paper['reconstruction_error']:.3f}), with KL(q(z|x) || p(z)) {min(kls):.3f}-"
        f"{max(kls):.3f} at ELBOs {min(elbos):.3f} to {max(elbos):.3f} (paper: {paper['elbo']:.3f}).",
        f"Read per pixel, the paper's ELBO implies KL = {kl_if_per_pixel:.3f}; read as a sum, KL = "
        f"{kl_if_summed:.3f} with a reconstruction error of {paper['reconstruction_error']:.3f}, against our "
        f"lowest {min(summed):.3f}.",
        f"Through the posterior mean (third reading) our VAE's error is {readings['VAE']['at_mean']:.3f}.",
        f"AVB's {PAPER['AVB']['reconstruction_error']:.3f} does not decide it: summed, ours is "
        f"{readings['AVB']['sampled']:.3f}; per pixel it would mean about "
        f"{pixels * PAPER['AVB']['reconstruction_error']:.3f} nats summed, plausible for the paper's weaker AVB "
        f"(log-likelihood {PAPER['AVB']['log_likelihood']:.3f}, ours {ours['AVB']['log_likelihood']:.3f}).",
        "The authors' training code scales its loss by 1/pixels (`factor` in avb/avb/__init__.py) while its "
        "`get_reconstr_err` sums; the script behind Table 1 is not published, so this is the reading the "
        "numbers support, not a certainty.",
    ])


def cell(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" ± {se:.3f}" if se is not None else "")


def table(ours: dict, readings: dict, seeds: dict, ac_seeds: dict, seconds: dict, command: str) -> str:
    cols = ["VAE (paper)", "VAE (ours)", "AVB (paper)", "AVB (ours)", "AVB+AC (ours)"]
    sources = [(PAPER["VAE"], None), (ours["VAE"], "VAE"), (PAPER["AVB"], None), (ours["AVB"], "AVB"),
               (ours["AVB+AC"], "AVB+AC")]
    lines = ["# Table 1, reproduced", "", f"`{command}` — {time.strftime('%Y-%m-%d')}, "
             f"{DEVICE_NAME[0]}, total {sum(seconds.values()) / 60:.1f} min "
             f"({', '.join(f'{k} {v:.0f}s' for k, v in seconds.items())}).", "",
             "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for key, label in ROWS.items():
        cells = []
        for values, method in sources:
            se = ours[method]["log_likelihood_mc_se"] if key == "log_likelihood" and method else None
            cells.append(cell(values.get(key), se))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Optimum: -log 4 = -1.386. ± is the importance-sampling (Monte Carlo) standard error "
              f"({RECIPE.eval_samples} samples per data point). The synthetic set's four images are its "
              "training, validation and test points alike (the paper's setting). The paper calls AVB's "
              "figure an ELBO; it is E log p(x|z) - E T(x, z), the adversary's estimate, which is not a bound "
              "and can exceed log p(x) when T is off.", "", "Targets:", ""]
    lines += [f"- [{'x' if ok else ' '}] {name}" for name, ok in targets(ours, ac_seeds)]
    lines += ["", "AVB+AC over seeds (same recipe and steps; the encoder as the authors initialise it: "
              "a_i = elu(h - 5) + 1, z0 weights at sd 1e-5, x centred):", "",
              "| AVB+AC | log-likelihood | reconstruction error | adversary's ELBO estimate | KL(q(z), p(z)) |",
              "|---|---:|---:|---:|---:|"]
    for seed, r in ac_seeds.items():
        lines.append(f"| seed {seed} | {cell(r['log_likelihood'], r['log_likelihood_mc_se'])} | "
                     f"{r['reconstruction_error']:.3f} | {r['adversary_elbo']:.3f} | {r['kl_qz_pz']:.3f} |")
    values = torch.tensor([r["log_likelihood"] for r in ac_seeds.values()])
    if len(values) > 1:
        lines.append(f"| mean ± sd over seeds | {values.mean():.3f} ± {values.std():.3f} | | | |")
    lines += ["", "## The VAE's reconstruction error: definition or model?", "",
              "The same models under four readings of the paper's \"mean cross-entropy between an input x and "
              "its reconstruction using the encoder and decoder networks\" (20,000 posterior samples per point; "
              "E[z|x] is the mean of those samples):",
              "", "| reading | VAE (paper: 0.091) | AVB (paper: 0.021) | AVB+AC |", "|---|---:|---:|---:|"]
    for key, label in DEFINITIONS.items():
        lines.append(f"| {label} | " + " | ".join(f"{readings[m][key]:.3f}" for m in METHODS) + " |")
    paper_kl = -PAPER["VAE"]["elbo"] - PAPER["VAE"]["reconstruction_error"]
    lines += ["", "VAEs from more seeds (same recipe and steps); the KL column is the analytic KL(q(z|x) || p(z)) "
              "= -ELBO - reconstruction error:", "",
              "| VAE | log-likelihood | reconstruction error (sampled) | at the posterior mean | KL | ELBO |",
              "|---|---:|---:|---:|---:|---:|",
              f"| paper | {PAPER['VAE']['log_likelihood']:.3f} | {PAPER['VAE']['reconstruction_error']:.3f} | — | "
              f"{paper_kl:.3f} | {PAPER['VAE']['elbo']:.3f} |"]
    for seed, r in seeds.items():
        label = f"seed {seed}" if isinstance(seed, int) else seed
        lines.append(f"| {label} | {r['log_likelihood']:.3f} | {r['reconstruction_error']:.3f} | "
                     f"{r['at_mean']:.3f} | {-r['elbo'] - r['reconstruction_error']:.3f} | {r['elbo']:.3f} |")
    lines += ["", findings(ours, readings, seeds)]
    lines += ["", "Figure 3 (samples of q(z|x), one colour per data point):", ""]
    lines += [f"![{m}](latent_{slug(m)}.png)" for m in METHODS]
    return "\n".join(lines) + "\n"


def train_and_evaluate(cfg: Config, runs: Path | None, name: str) -> tuple[Trainer, dict, float]:
    device = resolve_device(cfg.device)
    data = load_dataset(cfg, device)
    trainer = Trainer(cfg, data.x_shape, device)
    t0 = time.perf_counter()

    def progress(step: int, metrics: dict, rate: float) -> None:
        print(f"   step {step:>6}/{cfg.steps}  {rate:6.1f} it/s  " +
              "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()), flush=True)

    fit(trainer, data, cfg.steps, log_every=max(cfg.steps // 5, 1), on_log=progress)
    seconds = time.perf_counter() - t0
    metrics = evaluate(trainer, data.test, cfg.eval_samples, seed=cfg.seed)
    if runs is not None:
        checkpoint.save(trainer, runs / name / checkpoint.FILENAME, metrics=metrics)
    return trainer, metrics, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15000, help="training steps per method (default: 15000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    parser.add_argument("--vae-seeds", type=int, default=3, help="further VAE seeds for the reconstruction-error "
                        "question (default: 3)")
    parser.add_argument("--ac-seeds", type=int, default=3, help="AVB+AC seeds, the first one included "
                        "(default: 3)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: cpu)")
    parser.add_argument("--notebook-vae", action="store_true", help="also train the authors' toy-notebook VAE "
                        "(3 x 64 units, batch 512, lr 2e-5, 100k steps; ~10 more minutes) (default: off)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reproduction"),
                        help="where the table and PNGs go (default: docs/reproduction)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "reproduction"),
                        help="where the checkpoints go (default: runs/reproduction)")
    parser.add_argument("--smoke", action="store_true", help="30 steps, 2000 IS samples, one extra VAE seed: "
                        "checks the script, not the method (default: off)")
    args = parser.parse_args(argv)
    recipe = RECIPE.replace(steps=30, eval_samples=2000) if args.smoke else RECIPE.replace(steps=args.steps)
    recipe = recipe.replace(device=args.device)
    if args.device == "cuda":
        DEVICE_NAME[0] = torch.cuda.get_device_name(resolve_device("cuda"))
    vae_seeds = 1 if args.smoke else args.vae_seeds
    out, runs = Path(args.out), Path(args.runs)
    ours, readings, seconds, seeds, ac_seeds = {}, {}, {}, {}, {}
    for name, changes in METHODS.items():
        print(f"--- {name}", flush=True)
        cfg = recipe.replace(**changes, seed=args.seed)
        trainer, ours[name], seconds[name] = train_and_evaluate(cfg, runs, slug(name))
        x = load_dataset(cfg, trainer.device).test
        readings[name] = reconstruction_readings(trainer, x, 2000 if args.smoke else 20000)
        print("   " + ", ".join(f"{k} {v:.4f}" for k, v in ours[name].items()), flush=True)
        latent_figure(trainer, x, out / f"latent_{slug(name)}.png", title=name)
        if name == "VAE":
            seeds[args.seed] = {**ours[name], "at_mean": readings[name]["at_mean"]}
        if name == "AVB+AC":
            ac_seeds[args.seed] = ours[name]
    for seed in range(args.seed + 1, args.seed + (1 if args.smoke else args.ac_seeds)):
        print(f"--- AVB+AC, seed {seed}", flush=True)
        cfg = recipe.replace(**METHODS["AVB+AC"], seed=seed)
        _, ac_seeds[seed], seconds[f"AVB+AC seed {seed}"] = train_and_evaluate(cfg, runs, f"avb_ac_seed{seed}")
        print(f"   log-likelihood {ac_seeds[seed]['log_likelihood']:.4f}", flush=True)
    for seed in range(args.seed + 1, args.seed + 1 + vae_seeds):
        print(f"--- VAE, seed {seed}", flush=True)
        cfg = recipe.replace(**METHODS["VAE"], seed=seed)
        trainer, metrics, seconds[f"VAE seed {seed}"] = train_and_evaluate(cfg, None, "")
        seeds[seed] = {**metrics, "at_mean": reconstruction_readings(trainer, load_dataset(cfg, trainer.device).test,
                                                                     2000 if args.smoke else 20000)["at_mean"]}
    if args.notebook_vae:
        print("--- VAE, the authors' toy-notebook setting", flush=True)
        cfg = recipe.replace(**NOTEBOOK_VAE, seed=args.seed)
        cfg = cfg.replace(steps=30) if args.smoke else cfg
        trainer, metrics, seconds["notebook VAE"] = train_and_evaluate(cfg, None, "")
        seeds["notebook setting (3 x 64, lr 2e-5, 100k steps)"] = {
            **metrics, "at_mean": reconstruction_readings(trainer, load_dataset(cfg, trainer.device).test,
                                                          2000 if args.smoke else 20000)["at_mean"]}
    command = "python benchmarks/reproduce_table1.py" + (" --smoke" if args.smoke else
                                                         f" --steps {args.steps}" if args.steps != 15000 else "")
    command += " --notebook-vae" if args.notebook_vae else ""
    command += f" --device {args.device}" if args.device != "cpu" else ""
    (out / "table1.md").write_text(table(ours, readings, seeds, ac_seeds, seconds, command))
    print((out / "table1.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
