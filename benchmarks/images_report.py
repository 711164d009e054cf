"""The report of benchmarks/images.py: images.md (headline, tables, convergence check) and images.png."""

from __future__ import annotations

import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from avb.evaluate import paired_difference, summary  # noqa: E402

SEARCHED = ("lr", "adv_lr", "beta1", "adv_steps", "adv_hidden", "adv_depth", "adv_inner", "objective", "encoder")
CHECK_FACTOR = 2  # convergence check: AIS with this many times the test temperatures
GPU_COMMAND = ("python benchmarks/images.py --dataset mnist --arch conv --steps 100000 --valid-every 5000 "
               "--valid-points 1000 --valid-temps 1000 --test-points 10000 --ais-temps 1000 --ais-chains 8 "
               "--device cuda --out docs/reproduction/mnist --runs runs/images-mnist")


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


def mc(se: float) -> str:
    """The Monte Carlo SE column: none with one AIS chain (it needs two)."""
    return "— (1 chain)" if math.isnan(se) else f"{se:.3f}"


def fmt(mean: float, se: float) -> str:
    return f"{mean:.2f} ± {se:.2f}"


def reused(runs: dict) -> str:
    """The note on training time when finished runs were reused from --runs."""
    before = sum(r["seconds"] for r in runs.values() if r.get("reused"))
    return f" here, plus {before / 60:.0f} min in runs trained earlier and reused from --runs" if before else ""


def report(args, data, runs, chosen, tests, per_method, diffs, conv, seconds, cmd) -> str:
    methods = list(per_method)
    steps = " / ".join(sorted({f"{runs[(m, chosen[m], 0)]['protocol'][4]['steps']:,}" for m in methods}))
    headline = (["AVB+AC - VAE: {:.2f} ± {:.2f} nats".format(*paired_difference(per_method["AVB+AC"],
                                                                                 per_method["VAE"])), "",
                 "(paired over the test images: per-image AIS log-likelihoods averaged over the seeds, then the "
                 "standard error of the mean difference over images; positive favours AVB+AC.)", ""]
                if {"VAE", "AVB+AC"} <= set(methods) else [])
    lines = ["# Real images: " + ", ".join(methods) + " on held-out MNIST digits", "",
             f"`{cmd}` — {time.strftime('%Y-%m-%d')}, {args.device_name}, {torch.get_num_threads()} threads, "
             f"{seconds['total'] / 60:.0f} min in all here (training and validation {seconds['train'] / 60:.0f} min"
             f"{reused(runs)}, "
             f"test AIS {sum(t['ais_seconds'] for t in tests.values()) / 60:.0f} min of computation (earlier ones kept "
             f"beside the checkpoints included), convergence check {seconds['check'] / 60:.0f} min).", "",
             f"Data: `{args.dataset}`, {data.sizes['train']:,} train / {data.sizes['valid']:,} validation / "
             f"{data.sizes['test']:,} test images (split_seed 0), dynamically binarized. Networks: "
             + ("each study's best trial's (below); " if set(methods) <= set(args.study_configs) else
                f"`{args.arch}` ({', '.join(f'{k}={v}' for k, v in args.shared_sizes.items())}); ")
             + f"{steps} steps per run, "
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
        lines.append(f"| {method} | {s['x']:.2f} | {s['x_se']:.2f} | {mc(s['x_mc_se'])} | {chosen[method]:g} | "
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
