"""Train and evaluate one configuration, without Ray.

    python -m avb --help
    python -m avb --objective avb --steps 20000 --out runs/avb     # the synthetic set, CPU or GPU
    python -m avb --out runs/avb --steps 40000 --resume             # continue that run to 40k steps

Writes OUT/trainer.pt (complete, resumable), OUT/metrics.json and OUT/latent.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from avb import checkpoint
from avb.config import Config, ConfigError
from avb.data import DataError, load_dataset
from avb.evaluate import evaluate
from avb.figures import save_pictures
from avb.train import DivergedError, Trainer, resolve_device

HELP = {
    "objective": "avb (Algorithm 1) or vae (analytic KL baseline)",
    "encoder": "blackbox z=f(x,eps), basis (known moments, for AC) or gaussian",
    "adaptive_contrast": "Adaptive Contrast: adversary compares q(z|x) with a moment-matched Gaussian",
    "adversary_input": "xz: T(x,z) (AVB); z: T(z) (adversarial autoencoder)",
    "adversary_loss": "logistic (eq. 3.3) or kl (eq. 5.10)",
    "kl_warmup_steps": "linear KL warm-up length in steps; 0 = off",
    "adv_steps": "adversary updates per encoder/decoder update",
    "adv_prior_term": "add 0.5||z||^2 (= -log p(z)) to T",
    "eval_samples": "importance samples per data point for log p(x)",
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


def train(trainer: Trainer, data, steps: int, out: Path, log_every: int, checkpoint_every: int) -> None:
    """Train until `steps`, printing progress and checkpointing along the way."""
    start, t0 = trainer.step_count, time.perf_counter()
    while trainer.step_count < steps:
        trainer.step(data.sample(trainer.cfg.batch_size, trainer.generator))
        done = trainer.step_count
        if done % log_every == 0 or done == steps:
            rate = (done - start) / (time.perf_counter() - t0)
            parts = "  ".join(f"{k} {v:.3f}" for k, v in trainer.pop_metrics().items())
            print(f"step {done:>7}/{steps}  {rate:6.1f} it/s  eta {(steps - done) / rate:5.0f}s  {parts}", flush=True)
        if done % checkpoint_every == 0:
            checkpoint.save(trainer, out / checkpoint.FILENAME)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)}
    try:
        device = resolve_device(values["device"])
        if args.resume:
            trainer = checkpoint.load(out / checkpoint.FILENAME, device)
            cfg = trainer.cfg.replace(steps=values["steps"])
            trainer.cfg = cfg
        else:
            cfg = Config.from_dict(values)
        data = load_dataset(cfg, device)
        if not args.resume:
            trainer = Trainer(cfg, data.x_shape, device)
        print(f"training {cfg.objective}{' + AC' if cfg.adaptive_contrast else ''} on {cfg.dataset} "
              f"({device}), {cfg.steps} steps from step {trainer.step_count}", flush=True)
        train(trainer, data, cfg.steps, out, args.log_every, args.checkpoint_every)
    except (ConfigError, DataError, FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DivergedError as err:
        print(f"diverged: {err}", file=sys.stderr)
        return 1
    metrics = evaluate(trainer, data.eval_batch(cfg.eval_points), cfg.eval_samples)
    checkpoint.save(trainer, out / checkpoint.FILENAME, metrics=metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    pictures = save_pictures(trainer, data.eval_batch(min(cfg.eval_points, 32)), out, title=cfg.objective)
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out}/trainer.pt, metrics.json, " + ", ".join(p.name for p in pictures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
