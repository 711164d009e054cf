"""Does the sampler pay? Searches replayed on recorded learning curves, over many seeds, budgets and concurrency.

    python benchmarks/search_replay.py --help
    python benchmarks/search_replay.py                    # 21 seeds x budgets 64/256/1024 x concurrency 1/8/32
    python benchmarks/search_replay.py --smoke            # every code path in a minute, nothing written to docs/

The decision makers are the study's own: `study.tuner.make_searcher` (Optuna's samplers exactly as the study
configures them, through the study's Tune searcher) and `study.tuner.make_scheduler` (Tune's ASHA scheduler
object), driven as Tune drives them: `suggest` when a slot frees, then per iteration the scheduler's decision,
`on_trial_result`, and `on_trial_complete` at the end. Only the training is replaced: a trial's log p(x)
after each iteration is the surrogate's (benchmarks/surrogate.py, fitted on real curves the study recorded)
plus Gaussian noise of --noise nats per iteration (default 0.004: the spread of one configuration's final
value between two real studies, docs/search.md), and an iteration takes the surrogate's seconds for that
configuration
(x0.9-1.1), so at concurrency 8 or 32 trials end out of order and the sampler proposes while others run.

Per seed and strategy, the anytime curve is the best full-fidelity value (a trial that ran all 8 iterations)
against trial-iterations spent. The target at budget B is the median over seeds of random search's best at B;
the budget to reach it is the first budget at which a strategy's curve gets there (infinite if it does not
within 2B). Ratios are of medians over seeds, with a bootstrap 95% interval over seeds.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import heapq
import itertools
import json
import math
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.surrogate import CURVES, FLOOR, ITERATIONS, Surrogate, load_curves, write_block  # noqa: E402

# strategy -> (the study's --sampler, extra sampler settings, ASHA on)
STRATEGIES = {
    "tpe_asha": ("tpe", {}, True),  # the study's default
    "random_asha": ("random", {}, True),
    "random": ("random", {}, False),
    "tpe_asha_independent": ("tpe", {"multivariate": False}, True),
    "tpe_asha_no_liar": ("tpe", {"constant_liar": False}, True),
    "tpe_asha_startup10": ("tpe", {"n_startup_trials": 10}, True),
    "gp_asha": ("gp", {}, True),
}
LABELS = {"tpe_asha": "TPE + ASHA (default)", "random_asha": "random + ASHA", "random": "random search",
          "tpe_asha_independent": "TPE (independent) + ASHA", "tpe_asha_no_liar": "TPE without constant liar + ASHA",
          "tpe_asha_startup10": "TPE (10 start-up) + ASHA", "gp_asha": "GP + ASHA"}
OUT = ROOT / "results" / "search-replay.json"
DOC = ROOT / "docs" / "search.md"


@dataclass
class Sim:
    trial_id: str
    values: np.ndarray
    seconds: float
    done: int = 0


def make_sampler(name: str, seed: int, extra: dict):
    import optuna

    from study.searcher import SAMPLERS

    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=4, **extra)
    return SAMPLERS[name](seed=seed, **extra)


def replay(strategy: str, seed: int, concurrency: int, cap: int, surrogate: Surrogate, noise: float) -> dict:
    """One search of `cap` trial-iterations: its trace, [(trial-iterations spent, best full-fidelity value so
    far)] at each new best, the fates the searcher recorded in Optuna ({fate: trials}) and the iterations at
    which ASHA stopped trials ({iteration: trials})."""
    import optuna
    from ray.tune.schedulers import TrialScheduler

    warnings.filterwarnings("ignore", message="Define-by-run function passed")  # GP's proposals take seconds

    from study.settings import StudySettings
    from study.tuner import make_scheduler, make_searcher

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sampler, extra, asha = STRATEGIES[strategy]
    settings = StudySettings(preset="synthetic", study_name=f"replay-{strategy}-{seed}", baselines=False,
                             scheduler="asha" if asha else "none", seed=seed, iterations=ITERATIONS,
                             overrides={"hidden": 128, "batch_size": 128})
    searcher = make_searcher(settings, sampler=make_sampler(sampler, seed, extra),
                             storage=optuna.storages.InMemoryStorage())
    scheduler = make_scheduler(settings)
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # ASHA's bracket draw (one bracket here) uses NumPy's global generator
    events, now, spent, best, trace, count, order = [], 0.0, 0, -math.inf, [], 0, itertools.count()

    def start() -> None:
        nonlocal count
        trial_id = f"t{count:05d}"
        count += 1
        config = searcher.suggest(trial_id)
        params = {k: v for k, v in config.items() if k in surrogate.params}
        pred = surrogate.predict(params)[0]
        sim = Sim(trial_id, pred[:ITERATIONS] + rng.normal(0.0, noise, ITERATIONS), pred[ITERATIONS])
        if scheduler:
            scheduler.on_trial_add(None, sim)
        heapq.heappush(events, (now + sim.seconds * rng.uniform(0.9, 1.1), next(order), sim))

    for _ in range(concurrency):
        start()
    while spent < cap:
        now, _, sim = heapq.heappop(events)
        sim.done += 1
        spent += 1
        value = float(sim.values[sim.done - 1])
        result = {"log_likelihood": value, "training_iteration": sim.done}
        if value <= FLOOR + 0.05:  # the recorded trials that diverged end here
            result.update(log_likelihood=-math.inf, diverged=True)
        decision = scheduler.on_trial_result(None, sim, result) if scheduler else TrialScheduler.CONTINUE
        if result.get("diverged") or sim.done >= ITERATIONS or decision == TrialScheduler.STOP:
            if scheduler:
                scheduler.on_trial_complete(None, sim, result)
            searcher.on_trial_complete(sim.trial_id, result)
            if sim.done >= ITERATIONS and not result.get("diverged") and value > best:
                best = value
                trace.append((spent, best))
            start()
        else:
            searcher.on_trial_result(sim.trial_id, result)
            heapq.heappush(events, (now + sim.seconds * rng.uniform(0.9, 1.1), next(order), sim))
    trials = searcher._ot_study.get_trials(deepcopy=False)
    fates = collections.Counter(t.user_attrs.get("fate", "running") for t in trials)
    stopped = collections.Counter(t.user_attrs["iterations"] for t in trials
                                  if t.user_attrs.get("fate") == "stopped_early")
    return {"trace": trace, "fates": dict(fates), "stopped_at": dict(stopped)}


def best_at(trace: list, budget: int) -> float:
    return max((v for s, v in trace if s <= budget), default=-math.inf)


def reach(trace: list, target: float, cap: int) -> float:
    return next((s for s, v in trace if v >= target and s <= cap), math.inf)


def median_ratio(a: list, b: list, rng: np.random.Generator, draws: int = 2000) -> tuple[float, float, float]:
    """median(a) / median(b), and a bootstrap 95% interval over seeds (resampled independently)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    with np.errstate(invalid="ignore"):  # inf / inf: neither reached the target
        point = float(np.median(a) / np.median(b))
        boot = np.asarray([np.median(rng.choice(a, len(a))) / np.median(rng.choice(b, len(b)))
                           for _ in range(draws)], float)
    if np.isnan(boot).all():
        return point, math.nan, math.nan
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return point, float(lo), float(hi)


def analyse(traces: dict, budgets: list[int], concurrencies: list[int], strategies: list[str]) -> dict:
    """traces[(strategy, concurrency)] = [trace per seed] -> per (budget, concurrency): target, budgets to reach
    it, best at the budget, and the ratios against random + ASHA and random search."""
    rng = np.random.default_rng(0)
    cells = {}
    for c in concurrencies:
        for b in budgets:
            target = float(np.median([best_at(t, b) for t in traces[("random", c)]]))
            row = {"target": target, "strategies": {}}
            for s in strategies:
                reached = [reach(t, target, 2 * b) for t in traces[(s, c)]]
                row["strategies"][s] = {"reach": reached, "median_reach": float(np.median(reached)),
                                        "best": float(np.median([best_at(t, b) for t in traces[(s, c)]]))}
            for s in strategies:
                for ref, key in (("random_asha", "r1"), ("random", "r2")):
                    if ref in strategies:
                        row["strategies"][s][key] = median_ratio(row["strategies"][s]["reach"],
                                                                 row["strategies"][ref]["reach"], rng)
            cells[f"{b}/{c}"] = row
    return cells


def fmt_ratio(r: tuple) -> str:
    point, lo, hi = r
    show = lambda x: "∞" if math.isinf(x) else "—" if math.isnan(x) else f"{x:.2f}"  # noqa: E731
    return f"{show(point)} [{show(lo)}, {show(hi)}]"


def render(data: dict) -> str:
    cells, a = data["cells"], data["args"]
    lines = [f"Measured {data['when']} (`{data['command']}`): {a['seeds']} seeds, surrogate {data['surrogate']} "
             f"fitted on {data['trials']} recorded trials, Gaussian noise of {a['noise']} nats per iteration.", ""]
    key, needed = "256/8", {"tpe_asha", "random_asha", "random"}
    if data.get("block", "replay") == "replay" and key in cells and needed <= set(cells[key]["strategies"]):
        d = cells[key]["strategies"]["tpe_asha"]
        lines += ["    sampler ratio (TPE+ASHA / random+ASHA): " + fmt_ratio(d["r1"]),
                  "    budget ratio (TPE+ASHA / random search): " + fmt_ratio(d["r2"]), "",
                  "(budget 256, concurrency 8; median over seeds [bootstrap 95% interval])", ""]
    lines += ["| budget | concurrency | target (random search's median best) | strategy | trial-iterations to reach "
              "it (median) | best at the budget (median) | / random + ASHA | / random search |",
              "|---:|---:|---:|---|---:|---:|---|---|"]
    for key, row in cells.items():
        b, c = key.split("/")
        for s, d in row["strategies"].items():
            reach_ = "∞" if math.isinf(d["median_reach"]) else f"{d['median_reach']:.0f}"
            lines.append(f"| {b} | {c} | {row['target']:.4f} | {LABELS[s]} | {reach_} | {d['best']:.4f} | "
                         f"{fmt_ratio(d['r1']) if 'r1' in d else ''} | {fmt_ratio(d['r2']) if 'r2' in d else ''} |")
    return "\n".join(lines)


def plot(traces: dict, args, path: Path) -> None:
    """Median over seeds (line) and quartiles (band) of the best full-fidelity value against budget, per
    strategy, at each concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.unique(np.geomspace(8, 2 * max(args.budget_list), 60).astype(int))
    fig, axes = plt.subplots(1, len(args.concurrency_list), figsize=(5 * len(args.concurrency_list), 4),
                             sharey=True, squeeze=False)
    for ax, c in zip(axes[0], args.concurrency_list):
        for s in args.strategy_list:
            curves = np.array([[best_at(t, b) for b in grid] for t in traces[(s, c)]])
            curves[~np.isfinite(curves)] = np.nan
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # no seed finished a trial yet
                lo, mid, hi = np.nanpercentile(curves, [25, 50, 75], axis=0)
            few = np.isnan(curves).mean(axis=0) > 0.5  # drawn once most seeds have a full-fidelity trial
            lo[few], mid[few], hi[few] = np.nan, np.nan, np.nan
            ax.plot(grid, mid, label=LABELS[s])
            ax.fill_between(grid, lo, hi, alpha=0.15)
        for b in args.budget_list:
            ax.axvline(b, color="grey", lw=0.5, ls=":")
        ax.set(xscale="log", xlabel="trial-iterations spent", title=f"concurrency {c}")
    axes[0][0].set_ylabel("best full-fidelity log p(x) (validation)")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"Replayed searches, synthetic space: {args.seeds} seeds (line: median, band: quartiles)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _job(args: tuple) -> tuple:
    strategy, seed, concurrency, cap, curves_path, kind, noise = args
    surrogate = _surrogate(curves_path, kind)
    return strategy, concurrency, seed, replay(strategy, seed, concurrency, cap, surrogate, noise)["trace"]


_CACHE: dict = {}


def _surrogate(path: str, kind: str) -> Surrogate:
    if (path, kind) not in _CACHE:
        _CACHE[(path, kind)] = Surrogate(load_curves(Path(path)), kind)
    return _CACHE[(path, kind)]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--curves", type=Path, default=CURVES, help="recorded curves (default: %(default)s)")
    p.add_argument("--surrogate", default="extra_trees", help="surrogate model (default: %(default)s, bounded by the "
                   "recorded values; benchmarks/surrogate.py)")
    p.add_argument("--seeds", type=int, default=21, help="(default: %(default)s; odd, so a median is a seed's)")
    p.add_argument("--budgets", default="64,256,1024")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help=f"of {', '.join(STRATEGIES)}")
    p.add_argument("--noise", type=float, default=0.004, help="nats of Gaussian noise per iteration (default: "
                   "%(default)s, the spread of one configuration's final value between two real studies)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--block", default="replay", help="the marked block of --doc to write (default: %(default)s)")
    p.add_argument("--figure", type=Path, help="anytime curves at the largest concurrency (default: "
                   "docs/search-BLOCK.png)")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--smoke", action="store_true", help="3 seeds, budget 32, concurrency 1 and 4; no docs")
    args = p.parse_args(argv)
    if args.smoke:
        args.seeds, args.budgets, args.concurrency = 3, "32", "1,4"
        args.strategies = "tpe_asha,random_asha,random"
    args.budget_list = [int(b) for b in args.budgets.split(",")]
    args.concurrency_list = [int(c) for c in args.concurrency.split(",")]
    args.strategy_list = args.strategies.split(",")
    unknown = [s for s in args.strategy_list if s not in STRATEGIES]
    if unknown or "random" not in args.strategy_list:
        p.error(f"--strategies: unknown {unknown}; known: {', '.join(STRATEGIES)} (random is needed: it sets "
                "the target)")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    cap = 2 * max(args.budget_list)
    jobs = [(s, seed, c, cap, str(args.curves), args.surrogate, args.noise)
            for c in args.concurrency_list for s in args.strategy_list for seed in range(args.seeds)]
    traces = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for i, (s, c, seed, trace) in enumerate(pool.map(_job, jobs, chunksize=1), 1):
            traces.setdefault((s, c), []).append(trace)
            print(f"[{i}/{len(jobs)}] {s} concurrency {c} seed {seed}: best {best_at(trace, cap):.4f}", flush=True)
    cells = analyse(traces, args.budget_list, args.concurrency_list, args.strategy_list)
    surrogate = _surrogate(str(args.curves), args.surrogate)
    data = {"when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cells": cells, "trials": surrogate.n,
            "surrogate": args.surrogate, "args": {"seeds": args.seeds, "noise": args.noise}, "block": args.block,
            "command": "python benchmarks/search_replay.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    print(render(data))
    if not args.smoke:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**data, "traces": {f"{s}/{c}": t for (s, c), t in traces.items()}}))
        figure = args.figure or args.doc.parent / f"search-{args.block}.png"
        plot(traces, args, figure)
        write_block(args.doc, args.block, render(data) + f"\n\n![anytime curves]({figure.name})")
        print(f"wrote {args.doc} (block {args.block!r}), {figure} and {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
