"""Does the search pay? TPE + ASHA against random search, Tune's overhead, and how many trials to pack.

    python benchmarks/search_efficiency.py --help
    python benchmarks/search_efficiency.py                     # all three parts; writes docs/search.md (+ PNG)
    python benchmarks/search_efficiency.py --parts search      # the comparison only (quality: load-independent)
    python benchmarks/search_efficiency.py --parts overhead,packing   # the timing parts: run on a QUIET machine
    python benchmarks/search_efficiency.py --parts packing --gpu-fractions 1,0.5,0.25   # on a GPU machine
    python benchmarks/search_efficiency.py --smoke             # every code path at a tiny budget, nothing in docs/

Parts (each runs the project's own entry, `python study/run.py ...`, as a subprocess, and reads the records
back from MLflow and Optuna):

search    (a) TPE + ASHA (the study's default), (b) random + ASHA, (c) random without early stopping, for each
          seed, on the synthetic preset with the same search space and the same budget in trial-iterations
          (Tune iterations actually trained, summed over trials; a diverged trial's last iteration counts).
          The ASHA studies are given more trials than the budget can hold and are stopped (SIGTERM, the
          study's graceful stop) once the budget is spent; everything after the budget is ignored. Anytime
          curve: the best FULL-fidelity validation log-likelihood among trials that completed the full budget
          of iterations, against the trial-iterations spent (events ordered by their MLflow timestamps).
          Budget to target: the first budget at which that curve reaches --target.
overhead  the same configuration (the reproduction recipe, the preset's 3rd baseline, with --set applied)
          trained (i) by the plain loop (`avb.fit.fit` + `avb.evaluate.evaluate` per iteration, in this
          process, one torch thread) and (ii) as a one-trial study (Tune + checkpoints + MLflow + pictures at
          the default cadence, one CPU), alternately (plain, tune, tune, plain, ...). Steady-state seconds per
          iteration: (i) timed directly, (ii) the spacing of the trial's MLflow metric timestamps.
packing   studies of that configuration with 1, 2, 4 concurrent trials on this machine's CPUs (--cpus-per-trial
          = CPUs / concurrency), throughput in trial-iterations per minute from the first trial's start to the
          last logged iteration; with --gpu-fractions, trials sharing one GPU instead.

Results go to RESULTS/search-benchmark.json and are rendered into the marked blocks of --doc (text outside
the blocks is kept), the figure next to it. Timing parts record the load average they ran under.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.study_records import (  # noqa: E402
    StudyRun,
    anytime_curve,
    budget_to_target,
    fates_at_budget,
    finished_methods,
    median_budget,
    read_trials,
    run_study,
    sqlite,
)
from benchmarks.surrogate import write_block  # noqa: E402
from benchmarks.tune_cost import render_overhead, render_packing, run_overhead, run_packing  # noqa: E402

STRATEGIES = {  # name: (label, study flags)
    "tpe_asha": ("TPE + ASHA (default)", ["--sampler", "tpe", "--scheduler", "asha"]),
    "random_asha": ("random + ASHA", ["--sampler", "random", "--scheduler", "asha"]),
    "random": ("random search", ["--sampler", "random", "--scheduler", "none"]),
}
DEFAULT_SET = ["hidden=128", "batch_size=128"]  # encoder/decoder 128 units (the preset: 256), batch 128
SMOKE_SET = ["hidden=16", "adv_hidden=16", "adv_inner=8", "batch_size=32", "eval_samples=1000",
             "eval_kl_samples=500"]
OPTIMUM = -math.log(4)  # the synthetic set's best possible log p(x)


# ----------------------------------------------------------------------------- part 1: the search
def study_flags(args, strategy: str, seed: int, num_trials: int) -> list[str]:
    flags = [*STRATEGIES[strategy][1], "--seed", str(seed), "--num-trials", str(num_trials),
             "--concurrency", str(args.concurrency), "--cpus-per-trial", f"{args.cpus_per_trial:g}",
             "--iterations", str(args.iterations), "--steps-per-iteration", str(args.steps_per_iteration),
             "--baselines" if args.baselines else "--no-baselines", "--set", f"seed={seed}"]
    for item in args.set:
        flags += ["--set", item]
    return flags


def run_search(args, results: Path) -> dict:
    out = {"budget": args.budget, "target": args.target, "seeds": args.seeds, "iterations": args.iterations,
           "steps_per_iteration": args.steps_per_iteration, "set": args.set, "baselines": args.baselines,
           "concurrency": args.concurrency, "label": args.label, "strategies": {}}
    full_trials = math.ceil(args.budget / args.iterations)
    seeds_of = {strategy: [] for strategy in args.strategies}
    for seed in args.seeds:  # seed by seed: an aborted run leaves complete seeds
        for strategy in args.strategies:
            label, per_seed = STRATEGIES[strategy][0], seeds_of[strategy]
            name = f"{args.label_for.get(strategy, args.label)}-{strategy}-s{seed}".replace("_", "-")
            store = results / "search" / name
            early_stopping = "asha" in strategy
            # without early stopping the budget holds exactly `full_trials` trials; with ASHA, more than the
            # budget could ever hold (every trial spends >= 1 iteration), stopped once the budget is spent
            num_trials = 2 * args.budget if early_stopping else full_trials
            store.parent.mkdir(parents=True, exist_ok=True)
            saved = store.with_suffix(".run.json")
            if args.analyse_only or (args.reuse and saved.exists()):
                record = StudyRun(**json.loads(saved.read_text()))
            else:
                if store.exists():  # a study that an interrupted benchmark left unfinished: its budget is unknown
                    print(f"[search] {name}: removing the unfinished study of an earlier run", flush=True)
                    shutil.rmtree(store)
                print(f"[search] {label}, seed {seed}: study {name} ...", flush=True)
                record = run_study(name, study_flags(args, strategy, seed, num_trials), store,
                                   budget=args.budget if early_stopping else None, log=store.with_suffix(".log"))
                saved.write_text(json.dumps(record.__dict__))
            trials = read_trials(sqlite(store / "mlflow.db"), sqlite(store / "optuna.db"), name,
                                 args.steps_per_iteration)
            curve = anytime_curve(trials, args.iterations, args.budget)
            fates = fates_at_budget(trials, args.iterations, args.budget)
            reached = budget_to_target(curve, args.target)
            finite = [v for v in curve if math.isfinite(v)]
            per_seed.append({
                "seed": seed, "study": name, "budget_to_target": reached, "curve": [
                    None if not math.isfinite(v) else round(v, 5) for v in curve],
                "best_at_budget": finite[-1] if finite else None, "trials": sum(fates.values()),
                "spent": min(args.budget, sum(len(t.events) for t in trials)),
                "spent_total": sum(len(t.events) for t in trials), "fates": fates, "wall_s": record.wall_s,
                "stopped_at_budget": record.stopped_at_budget,
                "finished_methods": finished_methods(trials, args.iterations, args.budget),
                "load": [record.load_before, record.load_after]})
            shown = "not reached" if reached is None else f"reached at {reached}"
            print(f"[search]   {sum(fates.values())} trials within the budget {fates}, "
                  f"{per_seed[-1]['spent_total']} trial-iterations run ({record.wall_s:.0f} s); "
                  f"target {args.target} {shown}; best at the budget "
                  f"{per_seed[-1]['best_at_budget']}", flush=True)
    for strategy, per_seed in seeds_of.items():
        out["strategies"][strategy] = {"label": STRATEGIES[strategy][0], "seeds": per_seed,
                                       "median_budget": median_budget([s["budget_to_target"] for s in per_seed])}
    if "tpe_asha" in out["strategies"] and "random" in out["strategies"]:
        a, c = out["strategies"]["tpe_asha"]["median_budget"], out["strategies"]["random"]["median_budget"]
        out["ratio"] = ratio(a, c, args.budget)
    return out


def ratio(a: float, c: float, budget: int) -> str:
    """a / c as text: a number, or a bound when one strategy's median never reached the target within the
    budget (its budget to target is then more than `budget`)."""
    if math.isinf(a) and math.isinf(c):
        return "undefined (neither reached the target in the median seed)"
    if math.isinf(c):
        return f"< {a / budget:.2f} (random search's median seed did not reach the target within {budget})"
    if math.isinf(a):
        return f"> {budget / c:.2f} (TPE + ASHA's median seed did not reach the target within {budget})"
    return f"{a / c:.2f}"


# ----------------------------------------------------------------------------- the document
def plot(search: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    budget = search["budget"]
    xs = np.arange(1, budget + 1)
    floor = -1.8
    for s, color in zip(search["strategies"].values(), ["C0", "C1", "C2", "C3"]):
        curves = np.array([[floor if v is None else max(v, floor) for v in seed["curve"]]
                           + [seed["curve"][-1] if seed["curve"] and seed["curve"][-1] is not None else floor]
                           * (budget - len(seed["curve"])) for seed in s["seeds"]], dtype=float)
        median = np.median(curves, axis=0)
        ax.step(xs, median, where="post", color=color, label=f"{s['label']} (median of {len(curves)} seeds)")
        ax.fill_between(xs, curves.min(0), curves.max(0), step="post", color=color, alpha=0.15)
    ax.axhline(search["target"], color="k", ls="--", lw=1, label=f"target {search['target']}")
    ax.axhline(OPTIMUM, color="grey", ls=":", lw=1, label="optimum -log 4")
    ax.set_ylim(floor, -1.37)
    ax.set_xlim(1, budget)
    ax.set_xlabel("budget spent (trial-iterations)")
    ax.set_ylabel("best full-fidelity validation log p(x)")
    ax.set_title("Synthetic preset: best full-fidelity result vs budget\n(line: median over seeds, band: min-max; "
                 "bottom edge: none yet)", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(value, digits=3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}f}"


def render_search(s: dict, figure: str) -> list[str]:
    budget = s["budget"]
    lines = [f"Measured {s['when']} (`{s['command']}`): budget {budget} trial-iterations per study "
             f"({budget // s['iterations']} full trials of {s['iterations']} x {s['steps_per_iteration']} steps), "
             f"target {s['target']}, seeds {', '.join(map(str, s['seeds']))}, concurrency {s['concurrency']}, "
             f"baselines {'on' if s['baselines'] else 'off'}, fixed: {', '.join(s['set']) or 'nothing'}.", "",
             f"![anytime curves]({figure})", "",
             "| strategy | budget to reach the target, per seed | median | best at budget/4, /2, full (median of "
             "seeds) | trials started (median) | fates over all seeds | wall time per study (median) |",
             "|---|---|---:|---|---:|---|---:|"]
    for strat in s["strategies"].values():
        seeds = strat["seeds"]
        reached = ", ".join("—" if x["budget_to_target"] is None else str(x["budget_to_target"]) for x in seeds)
        at = []
        for frac in (4, 2, 1):
            b = max(1, budget // frac)
            vals = [x["curve"][b - 1] if len(x["curve"]) >= b else (x["curve"][-1] if x["curve"] else None)
                    for x in seeds]
            vals = [-math.inf if v is None else v for v in vals]
            at.append(fmt(statistics.median(vals)))
        fates = {}
        for x in seeds:
            for k, v in x["fates"].items():
                fates[k] = fates.get(k, 0) + v
        med = strat["median_budget"]
        lines.append(f"| {strat['label']} | {reached} | {'> ' + str(budget) if math.isinf(med) else f'{med:g}'} | "
                     f"{' / '.join(at)} | {statistics.median(x['trials'] for x in seeds):g} | "
                     + ", ".join(f"{v} {k}" for k, v in sorted(fates.items()))
                     + f" | {statistics.median(x['wall_s'] for x in seeds) / 60:.1f} min |")
    lines += ["", "'—': the target was not reached within the budget (counted as infinite for the median).", ""]
    if "ratio" in s:
        lines += [f"budget ratio (TPE+ASHA / random search): {s['ratio']}", ""]
    return lines


BLOCKS = ("search", "overhead", "packing")


def write_doc(doc: Path, data: dict, new: list[str] | None = None) -> None:
    """Fill the marked blocks of `doc` from `data` (one per key: `search*`, `overhead`, `packing`), appending the
    blocks named in `new` that the document lacks; text outside the blocks stays as it is."""
    if not doc.exists():
        doc.write_text("# Does the search pay?\n\n" + "\n".join(
            f"## {b}\n\n<!-- {b}:begin -->\n<!-- {b}:end -->\n" for b in BLOCKS))
    renderers = {"overhead": render_overhead, "packing": render_packing}
    for block, values in data.items():
        present = f"<!-- {block}:begin -->" in doc.read_text()
        if not (present or block in (new or ())) or not (block.startswith("search") or block in renderers):
            continue
        if block.startswith("search"):
            body = render_search(values, values.get("figure", ""))
        else:
            body = renderers[block](values)
        write_block(doc, block, "\n".join(body))


# ----------------------------------------------------------------------------- command line
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/search_efficiency.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="search,overhead,packing",
                   help="comma-separated: search, overhead, packing; 'render' runs nothing and only fills --doc "
                        "from RESULTS/search-benchmark.json (default: all three)")
    p.add_argument("--strategies", default=",".join(STRATEGIES),
                   help=f"comma-separated, of {', '.join(STRATEGIES)} (default: all)")
    p.add_argument("--seeds", default="0,1,2", help="sampler and trial seeds, one study each (default: 0,1,2)")
    p.add_argument("--budget", type=int, default=64,
                   help="trial-iterations per study, the same for every strategy (default: 64 = 8 full trials)")
    p.add_argument("--target", type=float, default=-1.42, help="log p(x) to reach (default: -1.42)")
    p.add_argument("--iterations", type=int, default=8, help="Tune iterations per trial (default: 8, the preset's)")
    p.add_argument("--steps-per-iteration", type=int, default=500, help="(default: 500, the preset's)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once in the search part (default: 2)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0, help="search part (default: 1)")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=False,
                   help="enqueue the preset's published settings first in every study (default: off: they would "
                        "measure the baselines, not the search)")
    p.add_argument("--set", action="append", default=None, metavar="FIELD=VALUE",
                   help=f"fixed Config fields for every study (default: {' '.join(DEFAULT_SET)})")
    p.add_argument("--overhead-iterations", type=int, default=8, help="iterations per overhead run (default: 8)")
    p.add_argument("--overhead-repeats", type=int, default=2,
                   help="runs of each kind in the overhead part, alternated (default: 2)")
    p.add_argument("--packing", default="1,2,4", help="concurrent trials to measure (default: 1,2,4)")
    p.add_argument("--packing-iterations", type=int, default=4, help="iterations per packing trial (default: 4)")
    p.add_argument("--packing-rounds", type=int, default=2, help="trials per slot in the packing part (default: 2)")
    p.add_argument("--gpu-fractions", default="",
                   help="packing on one GPU: --gpus-per-trial values, e.g. 1,0.5,0.25 (default: off, CPU packing)")
    p.add_argument("--label", default="", help="prefix of the study names (default: 'bench', or 'smoke')")
    p.add_argument("--results-dir", default="results/search-benchmark",
                   help="stores of every study run here (default: results/search-benchmark)")
    p.add_argument("--doc", default="docs/search.md", help="markdown to fill (default: docs/search.md)")
    p.add_argument("--figure", default="docs/search.png", help="anytime-curve figure (default: docs/search.png)")
    p.add_argument("--label-for", action="append", default=[], metavar="STRATEGY=LABEL",
                   help="another label for one strategy's studies, e.g. random=r1 to use (with --reuse) the random "
                        "search of an earlier run whose search space was the same (default: none)")
    p.add_argument("--reuse", action="store_true",
                   help="read a study that already ran under RESULTS (same name) instead of running it again "
                        "(default: off)")
    p.add_argument("--block", default="search",
                   help="name of the search part's block in --doc and in the results file, e.g. search-before for "
                        "a study's earlier defaults (default: search)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny budget (2 iterations x 20 steps, tiny networks, budget 4, one seed), results, doc and "
                        "figure under RESULTS/smoke/: checks the code paths, measures nothing")
    p.add_argument("--analyse-only", action="store_true",
                   help="search part: read the studies already in RESULTS again (e.g. with another --target or "
                        "--budget up to the one they ran with) instead of running them (default: off)")
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    args.strategies = [x for x in args.strategies.split(",") if x]
    unknown = (set(args.parts) - set(BLOCKS) - {"render"}) | (set(args.strategies) - set(STRATEGIES))
    if unknown:
        p.error(f"unknown part or strategy: {', '.join(sorted(unknown))}")
    args.seeds = [int(x) for x in args.seeds.split(",") if x]
    args.label_for = dict(item.split("=", 1) for item in args.label_for)
    args.packing = [int(x) for x in args.packing.split(",") if x]
    args.gpu_fractions = [float(x) for x in args.gpu_fractions.split(",") if x]
    if args.smoke:
        args.set = args.set or SMOKE_SET
        args.iterations, args.steps_per_iteration, args.budget, args.seeds = 2, 20, 4, args.seeds[:1]
        args.overhead_iterations, args.overhead_repeats, args.packing_iterations, args.packing_rounds = 3, 1, 2, 1
        args.packing = [c for c in args.packing if c <= 2]
        args.label = args.label or "smoke"
        args.results_dir = str(Path(args.results_dir) / "smoke")
        args.doc = str(Path(args.results_dir) / "search.md")
        args.figure = str(Path(args.results_dir) / "search.png")
    args.set = args.set if args.set is not None else list(DEFAULT_SET)
    args.label = args.label or "bench"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results = Path(args.results_dir).resolve()
    results.mkdir(parents=True, exist_ok=True)
    data_file = results / "search-benchmark.json"
    data = {}
    command = "python benchmarks/search_efficiency.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    stamp = {"when": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "command": command.strip()}
    figure = Path(args.figure)
    if "search" in args.parts:
        where = {"figure": os.path.relpath(figure, Path(args.doc).parent)}
        data[args.block] = run_search(args, results) | stamp | where
        figure.parent.mkdir(parents=True, exist_ok=True)
        plot(data[args.block], figure)
    if "overhead" in args.parts:
        data["overhead"] = run_overhead(args, results) | stamp
    if "packing" in args.parts:
        data["packing"] = run_packing(args, results) | stamp
    ours = {key: data[key] for key in [args.block if part == "search" else part for part in args.parts]
            if key in data}
    data = (json.loads(data_file.read_text()) if data_file.exists() else {}) | ours  # another run may have written
    data_file.write_text(json.dumps(data, indent=1, default=str))
    doc = Path(args.doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    write_doc(doc, data, list(ours))
    print(f"results: {data_file}\ndocument: {doc}" + (f", figure: {figure}" if "search" in args.parts else ""))
    for key, line in ((args.block, "budget ratio (TPE+ASHA / random search): {ratio}"),
                      ("overhead", "Tune overhead: {overhead_percent}%")):
        if key in data and (key != args.block or "ratio" in data[key]):
            print(line.format(**data[key]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
