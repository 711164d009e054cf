"""Which estimate of log p(x) can a study select with? Cheap estimators against a long AIS, per method.

    python benchmarks/estimators.py --help
    python benchmarks/estimators.py VAE=runs/images/VAE_lr0.0003_seed0/trainer.pt \\
        AVB=runs/images/AVB_lr0.0003_seed0/trainer.pt AVB+AC=runs/images/AVB+AC_lr0.0003_seed0/trainer.pt
    python benchmarks/estimators.py --smoke VAE=... --out ""           # seconds: checks the script only

A study ranks trials, and keeps checkpoints, by an estimate of log p(x) on validation images.
An estimate that is biased by different amounts for different encoders ranks methods by its
own error: importance sampling with a Gaussian fitted to an implicit encoder lies tens of
nats below AIS in 32 dimensions, and AIS with few temperatures is biased low most where the
Gaussian q0 fits the true posterior worst. This benchmark measures, on the same validation
images for every model, each candidate's difference to a long AIS (the reference: by default
2,000 temperatures x 8 chains, the authors' protocol), paired over images, and its cost in
decoder evaluations (forward + gradient) per image, which is what a trial pays on any device.

Candidates (all from `avb.evaluate`): importance sampling (the study's old objective), and
AIS with q0 from each model's own encoder, over temperatures x chains x leapfrog steps.
Writes docs/reproduction/estimators.md (by default). Nothing here reads test images.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from avb import checkpoint  # noqa: E402
from avb.data import load_dataset  # noqa: E402
from avb.evaluate import ais_per_point, paired_difference, per_point_log_likelihood  # noqa: E402
from avb.train import resolve_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# name: (kind, options); AIS options: temperatures, chains, leapfrog steps
CANDIDATES = {
    "IS, 1000 samples": ("is", dict(samples=1000)),
    "AIS 50 x 2 chains": ("ais", dict(temps=50, chains=2, leapfrog=10)),
    "AIS 100 x 1": ("ais", dict(temps=100, chains=1, leapfrog=10)),
    "AIS 200 x 1": ("ais", dict(temps=200, chains=1, leapfrog=10)),
    "AIS 500 x 1": ("ais", dict(temps=500, chains=1, leapfrog=10)),
    "AIS 500 x 1, 5 leapfrog": ("ais", dict(temps=500, chains=1, leapfrog=5)),
    "AIS 1000 x 1, 5 leapfrog": ("ais", dict(temps=1000, chains=1, leapfrog=5)),
    "AIS 1000 x 1": ("ais", dict(temps=1000, chains=1, leapfrog=10)),
    "AIS 500 x 1, q0 sd x 1.5": ("ais", dict(temps=500, chains=1, leapfrog=10, q0_scale=1.5)),
    "AIS 500 x 1, q0 sd x 2": ("ais", dict(temps=500, chains=1, leapfrog=10, q0_scale=2.0)),
    "AIS 500 x 1, sigmoid schedule": ("ais", dict(temps=500, chains=1, leapfrog=10, schedule="sigmoid")),
}
SMOKE = dict(points=4, ref_temps=20, ref_chains=2, scale=0.02)


def cost(kind: str, o: dict) -> int:
    """Decoder evaluations per image: IS one forward per sample; AIS one forward + gradient per leapfrog
    step and per temperature and chain (plus the start)."""
    return o["samples"] if kind == "is" else o["chains"] * ((o["temps"] - 2) * o["leapfrog"] + 1)


def estimate(trainer, x: torch.Tensor, kind: str, o: dict, seed: int) -> torch.Tensor:
    if kind == "is":
        return per_point_log_likelihood(trainer, x, o["samples"], seed=seed)[0]
    return ais_per_point(trainer, x, num_temps=o["temps"], num_chains=o["chains"], leapfrog_steps=o["leapfrog"],
                         q0_scale=o.get("q0_scale", 1.0), schedule=o.get("schedule", "linear"), seed=seed)[0]


def scaled(o: dict, factor: float) -> dict:
    return {k: max(2, int(v * factor)) if k in ("temps", "samples") else v for k, v in o.items()}


def measure(name: str, path: Path, args: argparse.Namespace, device: torch.device) -> dict:
    trainer = checkpoint.load(path, device)
    data = load_dataset(trainer.cfg, device)
    x = data.eval_batch(args.points, "valid")
    t0 = time.perf_counter()
    ref = ais_per_point(trainer, x, num_temps=args.ref_temps, num_chains=args.ref_chains, seed=args.seed + 1)
    out = {"step": trainer.step_count, "reference": ref[0], "reference_mc": ref[1],
           "reference_seconds": time.perf_counter() - t0, "candidates": {}}
    print(f"--- {name} (step {trainer.step_count}): reference {ref[0].mean():.2f} ({out['reference_seconds']:.0f}s)",
          flush=True)
    for label, (kind, o) in CANDIDATES.items():
        o = scaled(o, args.scale)
        t0 = time.perf_counter()
        values = estimate(trainer, x, kind, o, args.seed)
        seconds = time.perf_counter() - t0
        diff, se = paired_difference(values, ref[0])
        out["candidates"][label] = {"mean": values.mean().item(), "bias": diff, "se": se, "seconds": seconds,
                                    "cost": cost(kind, o)}
        print(f"   {label:28s} {values.mean():9.2f}  minus reference {diff:+7.2f} ± {se:.2f}  ({seconds:.1f}s)",
              flush=True)
    return out


def report(results: dict, args: argparse.Namespace, cmd: str, device_name: str, seconds: float) -> str:
    methods = list(results)
    lines = ["# Selecting with an estimate of log p(x): bias per method against a long AIS", "",
             f"`{cmd}` — {time.strftime('%Y-%m-%d')}, {device_name}, {seconds / 60:.0f} min.", "",
             f"Reference: AIS with {args.ref_temps} temperatures x {args.ref_chains} chains (10 leapfrog steps, q0 "
             f"from each model's own encoder) on the first {args.points} validation images. Each cell: candidate minus "
             "reference, mean over the images ± the standard error of the paired difference (nats; negative = "
             "the candidate is pessimistic). AIS is biased low, so the reference is itself a little low; a "
             "candidate's bias against the true log p(x) is at least its figure here.", "",
             "Models: " + "; ".join(f"{m} step {r['step']}, reference {r['reference'].mean():.2f} "
                                    f"(± Monte Carlo {r['reference_mc'].pow(2).mean().sqrt():.2f} per image)"
                                    for m, r in results.items()) + ".", "",
             "| estimator | decoder evaluations per image | " + " | ".join(methods) + " | spread across methods |",
             "|---|---:|" + "---:|" * (len(methods) + 1)]
    for label in CANDIDATES:
        cells = [results[m]["candidates"][label] for m in methods]
        biases = [c["bias"] for c in cells]
        lines.append(f"| {label} | {cells[0]['cost']:,} | " + " | ".join(f"{c['bias']:+.2f} ± {c['se']:.2f}"
                                                                         for c in cells)
                     + f" | {max(biases) - min(biases):.2f} |")
    lines += ["", "Seconds per candidate on this device, all images: " + "; ".join(
        f"{m}: " + ", ".join(f"{label} {c['seconds']:.1f}" for label, c in r["candidates"].items())
        for m, r in results.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="METHOD=CHECKPOINT", help="trainer.pt of each model")
    parser.add_argument("--points", type=int, default=100, help="validation images (default: 100)")
    parser.add_argument("--ref-temps", type=int, default=2000, help="reference AIS temperatures (default: 2000)")
    parser.add_argument("--ref-chains", type=int, default=8, help="reference AIS chains (default: 8)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every candidate's temperatures / samples (default: 1)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reproduction" / "estimators.md"),
                        help="markdown report; '' = none (default: docs/reproduction/estimators.md)")
    parser.add_argument("--smoke", action="store_true", help="4 images, tiny AIS: checks the script only")
    args = parser.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    device = resolve_device(args.device)
    models = {}
    for item in args.models:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"{item!r}: expected METHOD=CHECKPOINT with an existing trainer.pt")
        models[name] = Path(path)
    t0 = time.perf_counter()
    results = {name: measure(name, path, args, device) for name, path in models.items()}
    name = "CPU" if device.type == "cpu" else torch.cuda.get_device_name(device)
    cmd = "python benchmarks/estimators.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(results, args, cmd, name, time.perf_counter() - t0)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if not all(math.isfinite(c["bias"]) for r in results.values() for c in r["candidates"].values()):
        print("error: a non-finite estimate (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
