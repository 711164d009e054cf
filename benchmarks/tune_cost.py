"""Parts 2 and 3 of benchmarks/search_efficiency.py: Tune's overhead over the plain loop, and how many trials to
pack onto this machine's CPUs (or one GPU). Run them through that script (`--parts overhead,packing`)."""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

from benchmarks.study_records import load, run_study, sqlite


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
