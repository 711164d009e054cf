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
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "study" / "run.py"

STRATEGIES = {  # name: (label, study flags)
    "tpe_asha": ("TPE + ASHA (default)", ["--sampler", "tpe", "--scheduler", "asha"]),
    "random_asha": ("random + ASHA", ["--sampler", "random", "--scheduler", "asha"]),
    "random": ("random search", ["--sampler", "random", "--scheduler", "none"]),
}
DEFAULT_SET = ["hidden=128", "batch_size=128"]  # encoder/decoder 128 units (the preset: 256), batch 128
SMOKE_SET = ["hidden=16", "adv_hidden=16", "adv_inner=8", "batch_size=32", "eval_samples=1000",
             "eval_kl_samples=500"]
OPTIMUM = -math.log(4)  # the synthetic set's best possible log p(x)
STORE_ENV = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AVB_OPTUNA_STORAGE", "AVB_DATA_ROOT")


# ----------------------------------------------------------------------------- running a study
def study_env() -> dict:
    """Each study on a Ray of its own (RAY_ADDRESS=local): never one that happens to run on this machine."""
    env = {k: v for k, v in os.environ.items() if k not in STORE_ENV}
    return env | {"PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0",
                  "RAY_ADDRESS": "local"}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


@dataclass
class StudyRun:
    name: str
    args: list[str]
    returncode: int = 0
    wall_s: float = 0.0
    stopped_at_budget: bool = False
    load_before: list = field(default_factory=list)
    load_after: list = field(default_factory=list)
    note: str = ""


def sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


def spent_so_far(db: Path, study: str) -> int:
    """Trial-iterations a running study has logged so far: its `log_likelihood` values in the MLflow SQLite file,
    + 1 per diverged trial. Read-only SQL, not an MlflowClient: a client opening a store the study is still
    creating would race it for the schema."""
    import sqlite3

    runs = ("SELECT r.run_uuid FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
            "WHERE e.name = ?")
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            logged = con.execute(f"SELECT COUNT(*) FROM metrics WHERE key = 'log_likelihood' AND run_uuid IN ({runs})",
                                 (study,)).fetchone()[0]
            diverged = con.execute(f"SELECT COUNT(*) FROM tags WHERE key = 'fate' AND value = 'diverged' AND "
                                   f"run_uuid IN ({runs})", (study,)).fetchone()[0]
    except sqlite3.Error:  # not created yet, or locked: ask again later
        return 0
    return logged + diverged


def run_study(name: str, flags: list[str], results: Path, *, budget: int | None = None, log: Path | None = None,
              timeout: float = 4 * 3600) -> StudyRun:
    """`python study/run.py` in a subprocess with its stores under `results`; with `budget`, the study is
    stopped (SIGTERM: Tune's graceful stop) as soon as that many trial-iterations are logged."""
    args = ["--results-dir", str(results), "--study-name", name, "--final-ais", "0", "--address", "local", *flags]
    record = StudyRun(name, args, load_before=load())
    log_file = open(log or os.devnull, "w")  # noqa: SIM115 (closed below)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(RUN_PY), *args], cwd=ROOT, env=study_env(), stdout=log_file,
                            stderr=subprocess.STDOUT, text=True)
    try:
        while proc.poll() is None:
            time.sleep(3)
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"study {name} ran longer than {timeout:.0f} s")
            if budget and proc.poll() is None and (results / "mlflow.db").exists():
                if spent_so_far(results / "mlflow.db", name) >= budget:
                    record.stopped_at_budget = True
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=600)
                    except subprocess.TimeoutExpired:  # the records up to the budget are written already
                        proc.kill()
                        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log_file.close()
    record.returncode, record.wall_s = proc.returncode, round(time.perf_counter() - t0, 1)
    record.load_after = load()
    if record.returncode != 0 and not record.stopped_at_budget:
        tail = Path(log).read_text()[-3000:] if log else ""
        raise RuntimeError(f"study {name} exited with {record.returncode}:\n{tail}")
    return record


# ----------------------------------------------------------------------------- reading the records back
@dataclass
class Trial:
    number: int
    fate: str  # from the MLflow tag (finished, stopped_early, diverged, interrupted, ...)
    events: list  # (timestamp ms, iteration, log_likelihood or None for the iteration that diverged)
    method: str = ""
    optuna_state: str = ""
    optuna_value: float | None = None


def read_trials(tracking_uri: str, optuna_storage: str, study: str, steps_per_iteration: int) -> list[Trial]:
    """Every trial of a study from MLflow (per-iteration values and their timestamps, fate tags) checked
    against Optuna (state, value, user attributes `fate` and `iterations`)."""
    import mlflow
    import optuna

    from trainables import tracking

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    parent = tracking.find_study_run(client, exp.experiment_id)
    trials = {}
    for run in tracking.trial_runs(client, exp.experiment_id, parent.info.run_id):
        number = int(run.data.tags[tracking.TRIAL_NUMBER])
        history = client.get_metric_history(run.info.run_id, "log_likelihood")
        events = sorted((m.timestamp, m.step // steps_per_iteration, m.value) for m in history)
        fate = run.data.tags.get(tracking.FATE, "")
        if fate == "diverged":
            last = events[-1][1] if events else 0
            events.append((run.info.end_time or (events[-1][0] if events else run.info.start_time), last + 1, None))
        trials[number] = Trial(number, fate, events, run.data.tags.get(tracking.METHOD, ""))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for t in optuna.load_study(study_name=study, storage=optuna_storage).get_trials(deepcopy=False):
        if t.number not in trials:
            continue  # asked for, never started (the study was stopped at the budget)
        trial = trials[t.number]
        trial.optuna_state, trial.optuna_value = t.state.name, t.value
        if t.state.name == "COMPLETE":  # the two stores agree on every full-fidelity value
            final = [v for _, _, v in trial.events if v is not None][-1]
            assert abs(final - t.value) < 1e-9, (study, t.number, final, t.value)
        if "iterations" in t.user_attrs and trial.fate != "interrupted":
            assert t.user_attrs["iterations"] == len(trial.events), (study, t.number, t.user_attrs, trial.events)
    return sorted(trials.values(), key=lambda t: t.number)


def anytime_curve(trials: list[Trial], iterations: int, budget: int) -> list[float]:
    """best[b-1] = the best full-fidelity log-likelihood once b trial-iterations were spent (-inf: none yet).
    Iterations are ordered by when they were logged; a trial's value counts once its last iteration is."""
    best, curve = -math.inf, []
    for _, _, it, value in ordered_events(trials)[:budget]:
        if value is not None and it >= iterations and math.isfinite(value):
            best = max(best, value)
        curve.append(best)
    return curve


def budget_to_target(curve: list[float], target: float) -> int | None:
    return next((b + 1 for b, value in enumerate(curve) if value >= target), None)


def ordered_events(trials: list[Trial]) -> list[tuple]:
    """Every trial-iteration of a study as (timestamp ms, trial number, iteration, value), in logged order."""
    return sorted((ts, t.number, it, value) for t in trials for ts, it, value in t.events)


def fates_at_budget(trials: list[Trial], iterations: int, budget: int) -> dict[str, int]:
    """How the trials that spent part of the budget stood when it was spent: finished, stopped_early,
    diverged, or cut (still running when the budget ran out)."""
    inside = {}
    for _, number, _, _ in ordered_events(trials)[:budget]:
        inside[number] = inside.get(number, 0) + 1
    fates = {}
    for t in trials:
        if t.number not in inside:
            continue
        complete = inside[t.number] == len(t.events) and t.fate in ("finished", "stopped_early", "diverged")
        fate = t.fate if complete else "cut"
        fates[fate] = fates.get(fate, 0) + 1
    return fates


def finished_methods(trials: list[Trial], iterations: int, budget: int) -> dict[str, int]:
    """Methods (VAE, AVB, AVB+AC) of the trials that ran the full budget of iterations within the budget."""
    methods = {}
    for _, number, it, value in ordered_events(trials)[:budget]:
        if it >= iterations and value is not None:
            method = next(t.method for t in trials if t.number == number)
            methods[method] = methods.get(method, 0) + 1
    return methods


def median_budget(budgets: list[int | None]) -> float:
    """Median over seeds; a seed that never reached the target counts as infinitely expensive."""
    return statistics.median([math.inf if b is None else b for b in budgets])


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


# ----------------------------------------------------------------------------- the fixed configuration
def recipe(args) -> dict:
    """The configuration the timing parts train: the preset's 3rd baseline (the reproduction recipe), with the
    benchmark's --set on top."""
    from search_spaces import load_preset
    from study.cli import parse_overrides

    return {**load_preset("synthetic").BASELINES[2], **parse_overrides(args.set)}


def fixed_flags(config: dict) -> list[str]:
    """--set flags that fix every searched field to `config`: a study whose every trial is that config."""
    flags = []
    for key, value in config.items():
        flags += ["--set", f"{key}={value}"]
    return flags


# ----------------------------------------------------------------------------- part 2: Tune's overhead
def plain_loop(config: dict, iterations: int, steps_per_iteration: int) -> dict:
    """(i) the plain loop, in this process with one torch thread: seconds per iteration after the first."""
    import torch

    from avb.data import load_dataset
    from avb.evaluate import evaluate
    from avb.fit import fit
    from avb.train import Trainer
    from search_spaces import load_preset

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a one-CPU Tune trial gets (Ray sets OMP_NUM_THREADS=1)
    try:
        cfg = load_preset("synthetic").BASE.replace(**config, steps=iterations * steps_per_iteration)
        t0 = time.perf_counter()
        data = load_dataset(cfg, "cpu")
        trainer = Trainer(cfg, data.x_shape, torch.device("cpu"))
        x = data.eval_batch(cfg.eval_points, "valid")
        stamps = [time.perf_counter()]
        for i in range(1, iterations + 1):
            fit(trainer, data, i * steps_per_iteration)
            evaluate(trainer, x, cfg.eval_samples)
            stamps.append(time.perf_counter())
    finally:
        torch.set_num_threads(threads)
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    return {"s_per_iteration": statistics.mean(gaps), "gaps": [round(g, 3) for g in gaps],
            "total_s": round(stamps[-1] - t0, 2)}


def tune_trial_timing(tracking_uri: str, study: str) -> tuple[list[float], float]:
    """Gaps between a study's consecutive logged iterations (one trial), and its run's start to last log."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("kind") != "study"]
    stamps = sorted(m.timestamp for m in client.get_metric_history(runs[0].info.run_id, "log_likelihood"))
    return [(b - a) / 1000 for a, b in zip(stamps, stamps[1:])], (stamps[-1] - runs[0].info.start_time) / 1000


def run_overhead(args, results: Path) -> dict:
    config = recipe(args)
    plain, tune, walls = [], [], []
    order = ["plain", "tune", "tune", "plain"] * math.ceil(args.overhead_repeats / 2)
    load_before = load()
    for i, kind in enumerate(order[: 2 * args.overhead_repeats]):
        if kind == "plain":
            print(f"[overhead] plain loop, {args.overhead_iterations} iterations ...", flush=True)
            plain.append(plain_loop(config, args.overhead_iterations, args.steps_per_iteration))
            print(f"[overhead]   {plain[-1]['s_per_iteration']:.3f} s/iteration", flush=True)
            continue
        name = f"overhead-{args.label}-{i}"
        store = results / "overhead" / name
        store.parent.mkdir(parents=True, exist_ok=True)
        print(f"[overhead] one-trial study {name} ...", flush=True)
        flags = ["--num-trials", "1", "--concurrency", "1", "--cpus-per-trial", "1", "--scheduler", "none",
                 "--sampler", "random", "--no-baselines", "--iterations", str(args.overhead_iterations),
                 "--steps-per-iteration", str(args.steps_per_iteration), *fixed_flags(config)]
        record = run_study(name, flags, store, log=store.with_suffix(".log"))
        gaps, trial_s = tune_trial_timing(sqlite(store / "mlflow.db"), name)
        tune.append({"s_per_iteration": statistics.mean(gaps), "gaps": [round(g, 3) for g in gaps],
                     "trial_s": round(trial_s, 2), "study_wall_s": record.wall_s})
        walls.append(record.wall_s)
        print(f"[overhead]   {tune[-1]['s_per_iteration']:.3f} s/iteration; study wall {record.wall_s:.0f} s",
              flush=True)
    p = statistics.median(t["s_per_iteration"] for t in tune)
    q = statistics.median(t["s_per_iteration"] for t in plain)
    return {"config": config, "iterations": args.overhead_iterations, "steps_per_iteration": args.steps_per_iteration,
            "plain": plain, "tune": tune, "plain_s_per_iteration": q, "tune_s_per_iteration": p,
            "overhead_percent": round(100 * (p / q - 1), 1), "load": [load_before, load()], "label": args.label}


# ----------------------------------------------------------------------------- part 3: packing
def run_packing(args, results: Path) -> dict:
    config = recipe(args)
    cpus = os.cpu_count() or 1
    rows = []
    if args.gpu_fractions:
        settings = [(round(1 / g), g) for g in args.gpu_fractions]
    else:
        settings = [(c, 0.0) for c in args.packing]
    for concurrency, gpus in settings:
        name = f"packing-{args.label}-c{concurrency}" + (f"-g{gpus:g}" if gpus else "")
        store = results / "packing" / name
        store.parent.mkdir(parents=True, exist_ok=True)
        cpus_per_trial = cpus / concurrency
        trials = args.packing_rounds * concurrency
        flags = ["--num-trials", str(trials), "--concurrency", str(concurrency), "--cpus-per-trial",
                 f"{cpus_per_trial:g}", "--gpus-per-trial", f"{gpus:g}", "--scheduler", "none", "--sampler",
                 "random", "--no-baselines", "--iterations", str(args.packing_iterations), "--steps-per-iteration",
                 str(args.steps_per_iteration), *fixed_flags(config)]
        print(f"[packing] {concurrency} concurrent trial(s), {cpus_per_trial:g} CPU(s)"
              + (f", {gpus:g} GPU" if gpus else "") + f" each, {trials} trials ...", flush=True)
        record = run_study(name, flags, store, log=store.with_suffix(".log"))
        throughput, window = packing_throughput(sqlite(store / "mlflow.db"), name)
        rows.append({"concurrency": concurrency, "cpus_per_trial": cpus_per_trial, "gpus_per_trial": gpus,
                     "trials": trials, "trial_iterations_per_min": round(throughput, 2), "window_s": round(window, 1),
                     "study_wall_s": record.wall_s, "load": [record.load_before, record.load_after]})
        print(f"[packing]   {throughput:.1f} trial-iterations/min", flush=True)
    best = max(rows, key=lambda r: r["trial_iterations_per_min"])
    return {"config": config, "cpus": cpus, "rows": rows, "best_concurrency": best["concurrency"],
            "gpu": bool(args.gpu_fractions), "iterations": args.packing_iterations, "rounds": args.packing_rounds,
            "label": args.label}


def packing_throughput(tracking_uri: str, study: str) -> tuple[float, float]:
    """Trial-iterations per minute from the first trial run's start to the last logged iteration."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=1000) if r.data.tags.get("kind") != "study"]
    stamps = [m.timestamp for r in runs for m in client.get_metric_history(r.info.run_id, "log_likelihood")]
    window = (max(stamps) - min(r.info.start_time for r in runs)) / 1000
    return len(stamps) / window * 60, window


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


def render_overhead(o: dict) -> list[str]:
    config = ", ".join(f"{k}={v}" for k, v in sorted(o["config"].items()))

    def runs(kind: str) -> str:
        return ", ".join(f"{r['s_per_iteration']:.3f}" for r in o[kind])

    return [f"Measured {o['when']} (`{o['command']}`), load average (1/5/15 min) before {o['load'][0]}, after "
            f"{o['load'][1]}. Configuration: the reproduction recipe with {config}; {o['iterations']} iterations "
            f"of {o['steps_per_iteration']} steps, each followed by the validation evaluation; seconds per "
            "iteration after the first (steady state), median of the runs:", "",
            "| run | s per iteration (each run) | median |", "|---|---|---:|",
            f"| (i) plain loop (`avb.fit.fit` + `evaluate`) | {runs('plain')} | {o['plain_s_per_iteration']:.3f} |",
            f"| (ii) one-trial Tune study (report, checkpoint, MLflow, pictures) | {runs('tune')} | "
            f"{o['tune_s_per_iteration']:.3f} |", "",
            f"Tune overhead: {o['overhead_percent']:g}%", "",
            "Fixed cost on top, once per study (Ray start-up, stores, the study's end): the one-trial study took "
            + ", ".join(f"{t['study_wall_s']:.0f} s" for t in o["tune"]) + " of wall time against the plain loop's "
            + ", ".join(f"{p['total_s']:.0f} s" for p in o["plain"]) + ".", ""]


def render_packing(p: dict) -> list[str]:
    kind = "GPU" if p["gpu"] else "CPU"
    lines = [f"Measured {p['when']} (`{p['command']}`) on {p['cpus']} CPU cores; each study: the reproduction "
             f"recipe, {p['iterations']} iterations per trial, {p['rounds']} trial(s) per slot.", "",
             "| concurrent trials | CPUs per trial | GPUs per trial | trial-iterations per minute "
             "| load before / after |",
             "|---:|---:|---:|---:|---|"]
    for r in p["rows"]:
        lines.append(f"| {r['concurrency']} | {r['cpus_per_trial']:g} | {r['gpus_per_trial']:g} | "
                     f"{r['trial_iterations_per_min']:.1f} | {r['load'][0][0]} / {r['load'][1][0]} |")
    lines += ["", f"Best on this machine ({kind}): {p['best_concurrency']} concurrent trial(s).", ""]
    return lines


BLOCKS = ("search", "overhead", "packing")


def write_doc(doc: Path, data: dict, new: list[str] | None = None) -> None:
    """Fill the marked blocks of `doc` from `data` (one per key: `search*`, `overhead`, `packing`), appending the
    blocks named in `new` that the document lacks; text outside the blocks stays as it is."""
    text = doc.read_text() if doc.exists() else "# Does the search pay?\n\n" + "\n".join(
        f"## {b}\n\n<!-- {b}:begin -->\n<!-- {b}:end -->\n" for b in BLOCKS)
    renderers = {"overhead": render_overhead, "packing": render_packing}
    for block, values in data.items():
        pattern = re.compile(rf"<!-- {block}:begin -->.*?<!-- {block}:end -->", re.S)
        present = pattern.search(text) is not None
        if not (present or block in (new or ())) or not (block.startswith("search") or block in renderers):
            continue
        if block.startswith("search"):
            body = "\n".join(render_search(values, values.get("figure", "")))
        else:
            body = "\n".join(renderers[block](values))
        replacement = f"<!-- {block}:begin -->\n{body}\n<!-- {block}:end -->"
        text = pattern.sub(lambda _, r=replacement: r, text) if present else text + f"\n{replacement}\n"
    doc.write_text(text)


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
