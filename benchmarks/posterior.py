"""The exact-posterior check: on the synthetic set, how close is each encoder's q(z|x) to p(z|x)?

    python benchmarks/posterior.py --help
    python benchmarks/posterior.py                 # ~2 min with reproduce_table1.py's checkpoints, else ~9 min
    python benchmarks/posterior.py --smoke --out /tmp/posterior    # seconds: tiny training, coarse grid

With a 2-D latent the true posterior p(z|x) = p(x|z) p(z) / p(x) of each trained decoder is
computable on a grid. For VAE, AVB and AVB+AC (the models of benchmarks/reproduce_table1.py,
loaded from its --runs folder when present there, else trained with its recipe) this writes
docs/reproduction/posterior.md and posterior.png with:

- the exact posterior on a grid next to a histogram of many encoder samples (the figure);
- the total variation TV(q(.|x), p(.|x)) = 0.5 sum_cells |Q - P| per data point, next to its
  sampling floor: the TV of a histogram of as many draws from p(z|x) itself (the value a
  perfect encoder would get with this many samples on this grid), at each bin width of
  --cells (TV depends on it: fine bins see detail that coarse bins average away);
- the exact log p(x) by grid integration next to the project's estimates: importance
  sampling (avb.evaluate, as in Table 1) and AIS (one protocol for every model).
"""

from __future__ import annotations

import argparse
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
from avb import objectives as obj  # noqa: E402
from avb.checkpoint import CheckpointError  # noqa: E402
from avb.data import load_dataset  # noqa: E402
from avb.evaluate import ais_per_point, evaluating, per_point_log_likelihood, posterior_samples  # noqa: E402
from avb.fit import fit  # noqa: E402
from avb.train import Trainer  # noqa: E402
from benchmarks.reproduce_table1 import METHODS, RECIPE, slug  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COLOURS = torch.tensor([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17], [0.84, 0.15, 0.16]])


def grid(lim: float, n: int) -> tuple[torch.Tensor, float]:
    """Cell centres [n*n, 2] of [-lim, lim]^2 (row-major: z1 fastest) and the cell side."""
    h = 2 * lim / n
    t = torch.linspace(-lim + h / 2, lim - h / 2, n, dtype=torch.float64)
    z2, z1 = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([z1.flatten(), z2.flatten()], 1), h


def exact_posterior(trainer: Trainer, x: torch.Tensor, z: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell probabilities of p(z|x) [B, cells] and log p(x) [B] by midpoint quadrature."""
    with evaluating(trainer):
        log_joint = torch.stack([trainer.models.decoder.log_prob(xi.expand(len(z), *xi.shape), z.float()).double()
                                 + obj.log_standard_normal(z) for xi in x])  # [B, cells]
    log_px = torch.logsumexp(log_joint, 1) + 2 * math.log(h)
    return torch.softmax(log_joint, 1), log_px


def histogram(z: torch.Tensor, lim: float, n: int) -> torch.Tensor:
    """Fractions of the samples z [S, 2] in each grid cell [cells]; samples off the grid count nowhere."""
    idx = ((z.double() + lim) / (2 * lim / n)).floor().long()
    inside = ((idx >= 0) & (idx < n)).all(1)
    cells = idx[inside, 1] * n + idx[inside, 0]
    return torch.bincount(cells, minlength=n * n).double() / len(z)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """0.5 sum |p - q| over cells, plus half the mass either puts off the grid: [B]."""
    off = (1 - p.sum(-1)).clamp_min(0) + (1 - q.sum(-1)).clamp_min(0)
    return 0.5 * ((p - q).abs().sum(-1) + off)


def sampling_floor(p: torch.Tensor, samples: int, repeats: int, g: torch.Generator) -> torch.Tensor:
    """Mean TV between p [B, cells] and a histogram of `samples` draws from p itself: [B]."""
    tvs = []
    for _ in range(repeats):
        counts = torch.stack([torch.bincount(torch.multinomial(pi, samples, replacement=True, generator=g),
                                             minlength=p.shape[1]) for pi in p.float()])
        tvs.append(total_variation(p, counts.double() / samples))
    return torch.stack(tvs).mean(0)


def trained(name: str, changes: dict, runs: Path, steps: int, seed: int, device: str) -> tuple[Trainer, str]:
    """The reproduction's checkpoint of this method when it has the recipe's config, else a fresh run."""
    cfg = RECIPE.replace(**changes, steps=steps, seed=seed)
    path = runs / name / checkpoint.FILENAME
    try:
        trainer = checkpoint.load(path, device)
        same = trainer.cfg.replace(eval_samples=cfg.eval_samples, eval_points=cfg.eval_points,
                                   device=cfg.device) == cfg  # the model
        if same and trainer.step_count == steps:
            return trainer, f"loaded {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
    except CheckpointError:
        pass
    data = load_dataset(cfg, device)
    trainer = Trainer(cfg, data.x_shape, device)
    fit(trainer, data, steps)
    return trainer, f"trained here ({steps} steps)"


def figure(rows: dict, lim: float, n: int, path: Path) -> None:
    """One row per method: exact posterior | encoder histogram, the four data points in four colours."""
    fig, axes = plt.subplots(len(rows), 2, figsize=(6.4, 3.2 * len(rows)), squeeze=False)
    for r, (name, (p, q)) in enumerate(rows.items()):
        for c, (dens, label) in enumerate([(p, "exact p(z|x)"), (q, "encoder q(z|x), histogram")]):
            img = torch.ones(n, n, 3, dtype=torch.float64)
            for i in range(len(dens)):  # darken towards each point's colour by its relative density
                d = (dens[i] / dens[i].max().clamp_min(1e-300)).view(n, n, 1)
                img = img * (1 - d) + d * COLOURS[i % len(COLOURS)].double()
            axes[r, c].imshow(img.numpy(), origin="lower", extent=(-lim, lim, -lim, lim))
            axes[r, c].set(title=f"{name}: {label}", xlabel="$z_1$", ylabel="$z_2$")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results: dict, args: argparse.Namespace, seconds: float) -> str:
    cmd = "python benchmarks/posterior.py" + (" --smoke" if args.smoke else "") + (
        f" --device {args.device}" if args.device != "cpu" else "")
    lines = ["# The exact-posterior check (synthetic set)", "",
             f"`{cmd}` — {time.strftime('%Y-%m-%d')}, {args.device_name}, {seconds / 60:.1f} min. "
             f"Grid [-{args.lim}, {args.lim}]^2 in {' and '.join(f'{n}x{n}' for n in args.cells)} cells (the exact "
             f"log p(x) from the first); {args.samples:,} encoder "
             f"samples per data point; the sampling floor is the mean TV of {args.samples:,} draws from p(z|x) "
             f"itself ({args.repeats} repeats).", "",
             "Models: " + "; ".join(f"{k}: {v['source']}" for k, v in results.items()) + ".", "",
             "## Total variation between q(z|x) and the exact p(z|x)", ""]
    for n in args.cells:
        lines += [f"Bins of width {2 * args.lim / n:.3f} ({n} x {n} cells):", "",
                  "| method | " + " | ".join(f"x{i + 1}" for i in range(4)) + " | mean | sampling floor |",
                  "|---|" + "---:|" * 6]
        for name, r in results.items():
            tv, floor = r["tv"][n], r["floor"][n]
            lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in tv) + f" | {tv.mean():.3f} | "
                         f"{floor.mean():.3f} |")
        lines.append("")
    lines += ["TV is in [0, 1]: 0 is a perfect encoder, 1 disjoint supports. Above the floor by "
              "more than a few thousandths means q(z|x) differs from p(z|x), not just sampling noise.", "",
              "## log p(x): exact (grid) against the estimators", "",
              "| method | exact (grid) | IS (avb.evaluate) | IS - exact | AIS (encoder start) | AIS - exact |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        ex, is_, ais = r["exact"].mean(), r["is"].mean(), r["ais"].mean()
        lines.append(f"| {name} | {ex:.4f} | {is_:.4f} ± {r['is_mc'].pow(2).mean().sqrt() / 2:.4f} | "
                     f"{is_ - ex:+.4f} | {ais:.4f} ± {r['ais_mc'].pow(2).mean().sqrt() / 2:.4f} | {ais - ex:+.4f} |")
    lines += ["", f"Means over the four data points; ± is the Monte Carlo standard error ({args.is_samples:,} "
              f"importance samples; AIS: {args.ais_temps} temperatures x {args.ais_chains} chains). The synthetic "
              "set's four images are its training, validation and test points (the paper's setting).", "",
              "![exact posterior against encoder samples](posterior.png)", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=15000, help="training steps of each model (default: 15000, "
                        "as reproduce_table1.py)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "reproduction"),
                        help="reproduce_table1.py's checkpoints, reused when their config matches "
                             "(default: runs/reproduction)")
    parser.add_argument("--lim", type=float, default=5.0, help="grid half-width (default: 5.0)")
    parser.add_argument("--cells", type=int, nargs="+", default=[200, 60],
                        help="grid cells per side, one TV table per value (default: 200 60: bins of 0.05 and 0.167)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: cpu)")
    parser.add_argument("--samples", type=int, default=1_000_000, help="encoder samples per point (default: 1000000)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the sampling floor (default: 5)")
    parser.add_argument("--is-samples", type=int, default=100_000, help="importance samples (default: 100000)")
    parser.add_argument("--ais-temps", type=int, default=500, help="AIS temperatures (default: 500)")
    parser.add_argument("--ais-chains", type=int, default=64, help="AIS chains (default: 64)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reproduction"),
                        help="folder for posterior.md and posterior.png (default: docs/reproduction)")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 30 steps, coarse grid, few samples "
                        "(default: off)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.cells, args.samples, args.repeats = 30, [40, 20], 2000, 1
        args.is_samples, args.ais_temps, args.ais_chains = 2000, 10, 2
    args.device_name = (torch.cuda.get_device_name() if args.device == "cuda"
                        else f"{torch.get_num_threads()} CPU threads")
    t0, g = time.perf_counter(), torch.Generator().manual_seed(args.seed)
    g_device = torch.Generator(args.device).manual_seed(args.seed)
    grids = {n: grid(args.lim, n) for n in args.cells}
    results, rows = {}, {}
    for name, changes in METHODS.items():
        trainer, source = trained(slug(name), changes, Path(args.runs), args.steps, args.seed, args.device)
        x = load_dataset(trainer.cfg, trainer.device).test  # the four images
        exact_p = {n: exact_posterior(trainer, x, z.to(trainer.device), h) for n, (z, h) in grids.items()}
        with evaluating(trainer):
            samples = torch.cat([posterior_samples(trainer, x, 100_000, g_device).cpu() for _ in
                                 range(math.ceil(args.samples / 100_000))], 1)[:, : args.samples] \
                if args.samples > 100_000 else posterior_samples(trainer, x, args.samples, g_device).cpu()
        q = {n: torch.stack([histogram(s, args.lim, n) for s in samples]) for n in args.cells}
        p = {n: exact_p[n][0].cpu() for n in args.cells}
        exact = exact_p[args.cells[0]][1].cpu()
        is_, is_mc = per_point_log_likelihood(trainer, x, args.is_samples, seed=args.seed)
        ais, ais_mc = ais_per_point(trainer, x, num_temps=args.ais_temps, num_chains=args.ais_chains, seed=args.seed)
        results[name] = {"source": source, "tv": {n: total_variation(p[n], q[n]) for n in args.cells},
                         "floor": {n: sampling_floor(p[n], args.samples, args.repeats, g) for n in args.cells},
                         "exact": exact, "is": is_, "is_mc": is_mc, "ais": ais, "ais_mc": ais_mc}
        rows[name] = (p[args.cells[0]], q[args.cells[0]])
        print(f"{name} ({source}): " + "; ".join(
            f"{n}x{n}: TV {results[name]['tv'][n].mean():.3f} floor {results[name]['floor'][n].mean():.3f}"
            for n in args.cells) + f"; log p(x) exact {exact.mean():.4f} IS {is_.mean():.4f} AIS {ais.mean():.4f}",
              flush=True)
    out = Path(args.out)
    figure(rows, args.lim, args.cells[0], out / "posterior.png")
    (out / "posterior.md").write_text(report(results, args, time.perf_counter() - t0))
    print(f"wrote {out / 'posterior.md'} and {out / 'posterior.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
