"""Running study/run.py as users do: a separate process, real Ray, real MLflow and Optuna stores."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna

ROOT = Path(__file__).resolve().parents[1]
# Tiny networks, short trials and a cheap KL diagnostic: a study of 4 trials takes about a minute on 2 CPU cores.
FAST = ["--iterations", "2", "--steps-per-iteration", "20", "--concurrency", "2", "--cpus-per-trial", "1",
        "--set", "hidden=16", "--set", "adv_hidden=16", "--set", "adv_inner=8", "--set", "batch_size=32",
        "--set", "eval_samples=1000", "--set", "eval_points=4", "--set", "eval_kl_samples=500"]
STORE_ENV = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "AVB_OPTUNA_STORAGE", "AVB_DATA_ROOT")


def study_env(**extra: str) -> dict:
    """The environment without anything that would point a study at another store or cluster. RAY_ADDRESS=local:
    a study without --address starts a Ray of its own even while another test's cluster runs here (tests run two
    at a time, pytest-xdist; without it, ray.init() joins the cluster `ray start` or a test Cluster last started)."""
    env = {k: v for k, v in os.environ.items() if k not in STORE_ENV}
    env |= {"RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": "local"}
    return env | extra


def copy_run_py(where: Path) -> Path:
    """study/run.py alone in a folder, as `ray submit` copies it to the head node."""
    where.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(ROOT / "study" / "run.py", where / "run.py"))


def run_study(args: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    script = copy_run_py(cwd / "submitted")
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=study_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def start_study(args: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    script = copy_run_py(cwd / "submitted")
    return subprocess.Popen([sys.executable, str(script), *args], cwd=cwd, env=study_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def checkpoints(storage: Path) -> list[Path]:
    """Every trial checkpoint under a Ray storage folder."""
    return sorted(storage.glob("*/*/checkpoint_*/trainer.pt"))


def wait_for_checkpoint(storage: Path, proc: subprocess.Popen, timeout: float = 240,
                        besides: list[Path] = ()) -> Path:
    """The first checkpoint under a Ray storage folder that is not one of `besides` (polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in checkpoints(storage) if p not in besides]
        if found:
            return found[0]
        assert proc.poll() is None, f"the study ended before a new checkpoint (rc {proc.returncode})"
        time.sleep(0.2)
    raise AssertionError(f"no new checkpoint under {storage} within {timeout} s")


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 180) -> str:
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=timeout)
    return out


def trial_runs(tracking_uri: str, study: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    """The study's parent run and its nested trial runs."""
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None, f"no MLflow experiment {study}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(runs) - 1, "a run outside the study's parent"
    return parents[0], children


def run_summary(tracking_uri: str, study: str) -> Counter:
    """(MLflow status, fate tag) -> number of trial runs."""
    _, runs = trial_runs(tracking_uri, study)
    return Counter((r.info.status, r.data.tags.get("fate")) for r in runs)


def optuna_states(storage: str, study: str) -> Counter:
    """(Optuna state name, fate user attribute) -> number of trials."""
    trials = optuna.load_study(study_name=study, storage=storage).trials
    return Counter((t.state.name, t.user_attrs.get("fate")) for t in trials)


def metric_steps(tracking_uri: str, run: mlflow.entities.Run, key: str = "log_likelihood") -> list[int]:
    return [m.step for m in mlflow.MlflowClient(tracking_uri).get_metric_history(run.info.run_id, key)]


def sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


def fault_figures(tracking_uri: str, storage: str, study: str, scenario: str, seconds: float) -> dict:
    """The figures docs/reliability.md records for a fault test; printed (run pytest with -s to see them)."""
    _, runs = trial_runs(tracking_uri, study)
    numbers = [r.data.tags.get("trial_number") for r in runs]
    fates = Counter(r.data.tags.get("fate") for r in runs)
    states = optuna_states(storage, study)
    figures = {"scenario": scenario, "trials finished": fates["finished"], "trials lost": fates["lost"],
               "duplicate runs": len(numbers) - len(set(numbers)),
               "runs left RUNNING": sum(r.info.status == "RUNNING" for r in runs),
               "Optuna COMPLETE": states[("COMPLETE", "finished")], "seconds": round(seconds, 1)}
    print("FIGURES " + "; ".join(f"{k}: {v}" for k, v in figures.items()), flush=True)
    return figures
