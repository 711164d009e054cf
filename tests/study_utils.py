"""Running study/run.py as users do: a separate process, real Ray, real MLflow and Optuna stores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow

ROOT = Path(__file__).resolve().parents[1]
# Tiny networks and short trials: a study of 4 trials takes well under a minute on 2 CPU cores.
FAST = ["--iterations", "2", "--steps-per-iteration", "20", "--concurrency", "2", "--cpus-per-trial", "1",
        "--set", "hidden=16", "--set", "adv_hidden=16", "--set", "adv_inner=8", "--set", "batch_size=32",
        "--set", "eval_samples=1000", "--set", "eval_points=4"]


def study_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_DEDUP_LOGS": "0", "PYTHONUNBUFFERED": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    return env


def copy_run_py(where: Path) -> Path:
    """study/run.py alone in a folder, as `ray submit` copies it to the head node."""
    where.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(ROOT / "study" / "run.py", where / "run.py"))


def run_study(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    script = copy_run_py(cwd / "submitted")
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=study_env(), capture_output=True,
                          text=True, timeout=timeout)


def trial_runs(tracking_uri: str, study: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    """The study's parent run and its nested trial runs."""
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(study)
    assert exp is not None, f"no MLflow experiment {study}"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], children
