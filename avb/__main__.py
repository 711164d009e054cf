"""Train and evaluate one configuration, without Ray.

    python -m avb --help
    python -m avb --objective avb --steps 20000 --out runs/avb     # the synthetic set, CPU or GPU
    python -m avb --out runs/avb --steps 40000 --resume             # continue that run to 40k steps

Writes OUT/trainer.pt (complete, resumable), OUT/metrics.json (evaluated on the
validation split) and OUT/latent.png. Bad input (a flag value, --out naming a
file, --resume without a readable checkpoint, data that cannot be read) is one
line on stderr and exit code 2, before any training and without touching OUT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from avb import checkpoint
from avb.checkpoint import CheckpointError
from avb.config import Config, ConfigError
from avb.data import DataError, load_dataset
from avb.evaluate import evaluate
from avb.figures import save_pictures
from avb.fit import fit
from avb.models import parameter_counts
from avb.train import DivergedError, Trainer, resolve_device

HELP = {
    "objective": "avb (Algorithm 1) or vae (analytic KL baseline)",
    "encoder": "blackbox z=f(x,eps), basis (known moments, for AC) or gaussian",
    "adaptive_contrast": "Adaptive Contrast: adversary compares q(z|x) with a moment-matched Gaussian",
    "adversary_input": "xz: T(x,z) (AVB); z: T(z) (adversarial autoencoder)",
    "adversary_loss": "logistic (eq. 3.3) or kl (eq. 5.10)",
    "kl_warmup_steps": "linear KL warm-up length in steps; 0 = off",
    "basis_hidden": "width of each noise network v_i of the basis encoder",
    "basis_depth": "hidden layers of each noise network v_i of the basis encoder",
    "basis_activation": "activation of the noise networks v_i: elu (the authors') or leaky_relu (0.2)",
    "adv_steps": "adversary updates per encoder/decoder update",
    "adv_prior_term": "add 0.5||z||^2 (= -log p(z)) to T",
    "eval_samples": "importance samples per data point for log p(x)",
    "eval_points": "validation points evaluated at the end",
    "split_seed": "seed of the train/validation/test split",
    "amp": "bf16 autocast (CUDA only)",
    "device": "auto picks CUDA when present",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m avb", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Config()
    for f in dataclasses.fields(Config):
        flag, default = "--" + f.name.replace("_", "-"), getattr(defaults, f.name)
        help_text = f"{HELP.get(f.name, f.name.replace('_', ' '))} (default: {default})"
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag, type={"str": str, "int": int, "float": float}[f.type], default=default,
                                help=help_text)
    parser.add_argument("--out", default="runs/default", help="output folder (default: runs/default)")
    parser.add_argument("--log-every", type=int, default=500, help="progress line every N steps (default: 500)")
    parser.add_argument("--checkpoint-every", type=int, default=5000, help="checkpoint every N steps (default: 5000)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/trainer.pt (with its config)")
    return parser


def check_out(out: Path, resume: bool) -> None:
    """OUT must be (or become) a folder; a new run never overwrites another run's checkpoint."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file, not a folder; choose another --out")
    parent = next((p for p in [out, *out.parents] if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"--out {out} cannot be created: {parent} is a file; choose another --out")
    if not resume and (out / checkpoint.FILENAME).exists():
        raise ConfigError(f"{out / checkpoint.FILENAME} exists: pass --resume to continue that run, "
                          "or choose another --out")


def progress(until: int):
    def on_log(step: int, metrics: dict[str, float], rate: float) -> None:
        parts = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        print(f"step {step:>7}/{until}  {rate:6.1f} it/s  eta {(until - step) / rate:5.0f}s  {parts}", flush=True)
    return on_log


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    try:
        if args.log_every < 1 or args.checkpoint_every < 1:
            raise ConfigError("--log-every and --checkpoint-every must be positive step counts (>= 1)")
        cfg = Config.from_dict(values)  # flags checked even when resuming (the run keeps its own config)
        device = resolve_device(values["device"])
        check_out(out, args.resume)
        if args.resume:
            trainer = checkpoint.load(out / checkpoint.FILENAME, device)
            cfg = trainer.cfg = trainer.cfg.replace(steps=values["steps"])
        data = load_dataset(cfg, device)
        if not args.resume:
            trainer = Trainer(cfg, data.x_shape, device)
    except (ConfigError, DataError, CheckpointError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    counts = parameter_counts(trainer.models)
    print(f"training {cfg.objective}{' + AC' if cfg.adaptive_contrast else ''} on {cfg.dataset} "
          f"(train/valid/test {'/'.join(str(n) for n in data.sizes.values())}, {device}), "
          f"{cfg.steps} steps from step {trainer.step_count}", flush=True)
    print("parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), flush=True)
    try:
        fit(trainer, data, cfg.steps, log_every=args.log_every, on_log=progress(cfg.steps),
            checkpoint_every=args.checkpoint_every, checkpoint_path=out / checkpoint.FILENAME)
    except DivergedError as err:
        print(f"diverged: {err}", file=sys.stderr)
        return 1
    metrics = evaluate(trainer, data.eval_batch(cfg.eval_points), cfg.eval_samples)
    checkpoint.save(trainer, out / checkpoint.FILENAME, metrics=metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    pictures = save_pictures(trainer, data.eval_batch(min(cfg.eval_points, 32)), out, title=cfg.objective)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out}/trainer.pt, metrics.json, " + ", ".join(p.name for p in pictures) + " (validation split)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
