"""Running the project's own study entry as a subprocess, and reading its records back: the shared half of
benchmarks/search_efficiency.py (the search part) and benchmarks/tune_cost.py (Tune's overhead, packing).

Each study runs as `python study/run.py` on a Ray of its own, with its stores under one folder; its trials are
read back from MLflow (per-iteration values, timestamps, fates) and checked against Optuna."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN_PY = ROOT / "study" / "run.py"
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
