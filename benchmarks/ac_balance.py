"""What restores the balance of the four regions once a synthetic AVB+AC run has lost it?

    python benchmarks/ac_balance.py --seed 19 --steps 0                        # train and keep the trunk
    python benchmarks/ac_balance.py --seed 2019 19 1019 --steps 0 --picture regions.png   # trunks side by side
    python benchmarks/ac_balance.py --seed 19 --steps 9000                     # go on at the recipe's rates
    python benchmarks/ac_balance.py --seed 19 --steps 9000 --primal-factor 0.25  # encoder and decoder / 4
    python benchmarks/ac_balance.py --seed 19 --steps 9000 --set adv_steps=4    # 4 adversary updates a step

Trains AVB+AC under benchmarks/ac_schedules.py's recipe (one CPU thread) to `--trunk` steps, keeps that
state in `--cache` (later calls with the same seed and trunk load it), then trains `--steps` more from it
under one change: the encoder's and decoder's learning rate times `--primal-factor`, the adversary's times
`--adversary-factor`, `--set FIELD=VALUE` (a field the step reads each time, e.g. adv_steps), a KL weight
(`--kl-weight`) or a fresh adversary (`--new-adversary`). Every `--trace-every` steps it prints the exact
log p(x) (grid integration) split into its two shortfalls from -log 4, the four data points' shares of the
model's mass on the data (0.25 each at the optimum) and, per point, the adversary's ELBO estimate (not a
bound) minus the exact log p(x_i); `--picture` draws the regions of z-space each point owns. Branches from
one trunk differ only in the change, so they say which change moves the balance; a fresh seed is a new
draw (fidelity.md, "A seed is a draw per machine"). Results: fidelity.md, "Restoring the balance".
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ac_schedules import exact_log_px, minutes, shortfalls  # noqa: E402
from reproduce_table1 import METHODS, RECIPE  # noqa: E402

from avb import checkpoint  # noqa: E402
from avb import objectives as obj  # noqa: E402
from avb.config import Config, ConfigError  # noqa: E402
from avb.data import Dataset, load_dataset  # noqa: E402
from avb.fit import fit  # noqa: E402
from avb.train import Trainer  # noqa: E402
from study.cli import parse_overrides  # noqa: E402
from study.settings import StudyError  # noqa: E402

PER_STEP = {"adv_steps", "batch_size"}  # fields the step reads each time: --set changes them at the branch
ADVERSARY = {"adv_hidden", "adv_depth", "adv_inner", "adv_prior_term", "adv_lr", "adv_beta1", "adv_beta2"}  # only
# with --new-adversary, which builds the adversary and its optimiser from them


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, nargs="+", default=[19], help="one seed; several only with --steps 0, to "
                   "read and draw their trunks (default: 19, whose first start had unequal regions)")
    p.add_argument("--trunk", type=int, default=15000, help="steps at the recipe's rates before the branch "
                   "(default: 15000)")
    p.add_argument("--steps", type=int, default=9000, help="steps after the trunk; 0 only makes the trunk "
                   "(default: 9000)")
    p.add_argument("--trace-every", type=int, default=1500, metavar="K", help="(default: 1500)")
    p.add_argument("--primal-factor", type=float, default=1.0, help="encoder's and decoder's rate x (default: 1)")
    p.add_argument("--adversary-factor", type=float, default=1.0, help="adversary's rate x, from the branch on "
                   "(after any --new-adversary steps) (default: 1)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"a Config change from the branch on: {', '.join(sorted(PER_STEP))}; with --new-adversary "
                   f"also {', '.join(sorted(ADVERSARY))} (default: none)")
    p.add_argument("--kl-weight", type=float, default=1.0, metavar="W",
                   help="weight of the KL estimate in the encoder's and decoder's loss during the branch; W > 1 "
                   "pulls each q(z|x) towards the prior (default: 1, the ELBO)")
    p.add_argument("--new-adversary", type=int, default=0, metavar="K",
                   help="replace the adversary by a fresh one (built with the --set changes, e.g. adv_hidden=512) "
                   "and train it alone for K steps before the branch (default: 0, keep the trunk's)")
    p.add_argument("--picture", type=Path, default=None, metavar="PNG",
                   help="draw the regions of z-space each data point owns, at the trunk and at the end "
                   "(default: none)")
    p.add_argument("--picture-at", type=int, nargs="+", default=[], metavar="STEP",
                   help="more panels, at these trace steps (default: none)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/ac_balance"), help="where trunks are kept "
                   "(default: /tmp/ac_balance)")
    args = p.parse_args(argv)
    traced = check(p, args)
    torch.set_num_threads(1)
    try:
        changes = parse_overrides(args.set)
        cfgs = [RECIPE.replace(**{**METHODS["AVB+AC"], "seed": seed}) for seed in args.seed]
        cfgs[0].replace(**changes)  # validated now, applied at the branch
    except (StudyError, ConfigError) as e:
        p.error(str(e))
    allowed = PER_STEP | (ADVERSARY if args.new_adversary else set())
    if set(changes) - allowed:
        p.error(f"--set {', '.join(sorted(set(changes) - allowed))}: a branch can change only "
                f"{', '.join(sorted(allowed))}")
    data = load_dataset(cfgs[0], "cpu")
    t0 = time.perf_counter()
    maps = []
    for cfg in cfgs:
        try:
            trainer = trunk(cfg, data, args.trunk, args.cache / f"seed{cfg.seed}-{args.trunk}.pt")
        except ValueError as e:  # a kept trunk that is unreadable (CheckpointError) or of another run
            p.error(str(e))
        print(f"trunk, step {trainer.step_count}: {balance(trainer, data.test)}  [{minutes(t0)}]", flush=True)
        if args.picture:
            maps.append((f"seed {cfg.seed}, step {trainer.step_count:,}", regions(trainer, data.test)))
    trainer = branch(trainer, changes, args, data)
    end = args.trunk + args.steps
    for until in [*traced] + ([end] if args.steps and end not in traced else []):  # the trace steps and the end
        fit(trainer, data, until)
        print(f"step {trainer.step_count:>6}: {balance(trainer, data.test)}  [{minutes(t0)}]", flush=True)
        if args.picture and (until in args.picture_at or until == end):
            maps.append((f"seed {args.seed[0]}, step {until:,}", regions(trainer, data.test)))
    if args.picture:
        print(f"regions: {draw(maps, args.picture)}")
    return 0


def check(p: argparse.ArgumentParser, args: argparse.Namespace) -> range:
    """The flags' values checked together; the trace steps."""
    if args.trunk < 1 or args.steps < 0 or args.trace_every < 1 or args.new_adversary < 0 or args.kl_weight < 0 \
            or min(args.primal_factor, args.adversary_factor) <= 0:
        p.error(f"--trunk and --trace-every must be >= 1, --steps and --new-adversary >= 0, --kl-weight >= 0 and "
                f"both factors > 0; got {args.trunk}, {args.trace_every}, {args.steps}, {args.new_adversary}, "
                f"{args.kl_weight}, {args.primal_factor}, {args.adversary_factor}")
    if len(args.seed) > 1 and args.steps:
        p.error(f"several seeds ({' '.join(map(str, args.seed))}) only with --steps 0: a branch goes on from one")
    traced = range(args.trunk + args.trace_every, args.trunk + args.steps + 1, args.trace_every)
    if args.picture_at and not args.picture:
        p.error("--picture-at needs --picture PNG")
    if any(step not in traced for step in args.picture_at):
        p.error(f"--picture-at takes trace steps ({args.trunk} + a multiple of --trace-every, up to "
                f"{args.trunk + args.steps}); got {' '.join(map(str, args.picture_at))}")
    return traced


def branch(trainer: Trainer, changes: dict, args: argparse.Namespace, data: Dataset) -> Trainer:
    """The trunk's trainer with the branch's change made."""
    trainer = new_adversary(trainer, changes, args.new_adversary, data) if args.new_adversary else trainer
    trainer.cfg = trainer.cfg.replace(**changes)
    for opt, factor in ((trainer.opt_primal, args.primal_factor), (trainer.opt_adv, args.adversary_factor)):
        for group in opt.param_groups:
            group["lr"] *= factor
    if args.kl_weight != 1:  # the recipe has no KL warm-up (weight 1 throughout); this process runs one branch
        obj.kl_weight = lambda step, warmup: args.kl_weight
    return trainer


def trunk(cfg: Config, data: Dataset, steps: int, path: Path) -> Trainer:
    """The run at the recipe's rates to `steps`, loaded from `path` if an earlier call kept it."""
    if path.exists():
        trainer = checkpoint.load(path)
        if trainer.cfg.to_dict() != cfg.to_dict() or trainer.step_count != steps:
            raise ValueError(f"{path} holds another run (its config or step differs from this recipe's); "
                             "delete it or pass another --cache")
        return trainer
    trainer = Trainer(cfg, data.x_shape, "cpu")
    fit(trainer, data, steps)
    checkpoint.save(trainer, path)  # written to a temporary file, then renamed
    return trainer


def new_adversary(old: Trainer, changes: dict, steps: int, data: Dataset) -> Trainer:
    """The trunk's encoder, decoder, their optimiser and random state, with a fresh adversary trained alone."""
    trainer = Trainer(old.cfg.replace(**changes), data.x_shape, "cpu")
    state = old.state_dict()
    for part in ("encoder", "decoder"):
        getattr(trainer.models, part).load_state_dict(getattr(old.models, part).state_dict())
    trainer.opt_primal.load_state_dict(state["opt_primal"])
    trainer.step_count = old.step_count
    trainer.generator.set_state(state["generator"])
    for _ in range(steps):
        trainer.adversary_update(data.sample(trainer.cfg.batch_size, trainer.generator))
    return trainer


def balance(trainer: Trainer, x: torch.Tensor, samples: int = 20000) -> str:
    """The exact log p(x) and its shortfalls, the four shares, and per point the adversary's ELBO estimate minus
    the exact log p(x_i): KL(q_i || p) - KL estimate_i - KL(q_i || p(z|x_i)). A positive value is at least how
    far the adversary underrates KL(q_i || p); a negative one mixes an overrating with the inference gap."""
    log_px = exact_log_px(trainer, x)
    exact, off, unequal = shortfalls(log_px)
    g = torch.Generator().manual_seed(trainer.cfg.seed)
    gaps = []
    with torch.no_grad():
        for xi, log_pxi in zip(x, log_px.tolist()):
            xs = xi.expand(samples, *xi.shape)
            q = trainer.encode(xs, g)
            kl = trainer.kl_and_scores(xs, q, g)[0]
            gaps.append((trainer.models.decoder.log_prob(xs, q.z) - kl).mean().item() - log_pxi)
    return (f"log p(x) exact {exact:.4f} [-log 4 - {off:.4f} off the data - {unequal:.4f} unequal], "
            f"shares {' '.join(f'{s:.3f}' for s in torch.softmax(log_px, 0).tolist())}, "
            f"estimate - exact {' '.join(f'{d:+.3f}' for d in gaps)}")


LIM, CELLS = 3.0, 241


def regions(trainer: Trainer, x: torch.Tensor) -> torch.Tensor:
    """Which data point the decoder explains best at each z of a CELLS x CELLS grid over [-LIM, LIM]^2."""
    z = torch.cartesian_prod(*[torch.linspace(-LIM, LIM, CELLS)] * 2).flip(1)  # rows: z2, columns: z1
    with torch.no_grad():
        log_p = torch.stack([trainer.models.decoder.log_prob(xi.expand(len(z), *xi.shape), z) for xi in x])
    return log_p.argmax(0).view(CELLS, CELLS)


def draw(maps: list[tuple[str, torch.Tensor]], path: Path) -> Path:
    """One panel per (title, regions): each data point's region in its own colour, prior circles in white."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(3.6 * len(maps), 3.6), squeeze=False)
    circle = torch.linspace(0, 2 * torch.pi, 200)
    for ax, (title, owner) in zip(axes[0], maps):
        ax.imshow(owner.numpy(), origin="lower", extent=(-LIM, LIM, -LIM, LIM), cmap="tab10", vmin=0, vmax=9,
                  interpolation="nearest")
        for r in (1.0, 2.0):  # prior contours: 39% and 86% of p(z)'s mass inside
            ax.plot(r * circle.cos(), r * circle.sin(), color="white", lw=0.6, alpha=0.7)
        ax.set(title=title, xlabel="$z_1$", ylabel="$z_2$")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
