"""A study's MLflow runs as two Parquet tables: one row per trial, one row per logged metric value.

    python -m analysis.export --study NAME                  # reads sqlite:///results/mlflow.db
    python -m analysis.export --study NAME --tracking-uri http://HEAD_IP:5000 --out exports/NAME

Writes OUT/trials.parquet (trial_id, run_id, status, method, every Config field
as a typed column, final_METRIC and best_METRIC of every metric, iterations,
fidelity, full_fidelity, diverged, stopped_early) and OUT/history.parquet
(run_id, trial_id, metric, step, value, timestamp). In a notebook:

    from analysis.export import load_trials, load_history
    trials = load_trials("sqlite:////abs/results/mlflow.db", "NAME")
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from dataclasses import dataclass, fields
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Run

from avb.config import Config, parse_value

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
FINISHED = ("FINISHED", "FAILED", "KILLED")  # terminal MLflow run states (KILLED: stopped early by ASHA)
HIGHER_IS_BETTER = ("log_likelihood", "ais_log_likelihood", "elbo", "steps_per_s", "examples_per_s")  # others: lower
HISTORY_COLUMNS = ("run_id", "trial_id", "metric", "step", "value", "timestamp")
NULLABLE = {int: "Int64", bool: "boolean"}  # pandas dtypes that hold a missing value without changing type
CONFIG_TYPES = {f.name: {"str": str, "int": int, "float": float, "bool": bool}[f.type] for f in fields(Config)}


class AnalysisError(RuntimeError):
    """The study cannot be read; the message says what is wrong and what to do."""


@dataclass
class StudyRuns:
    """A study as MLflow holds it: the client, the parent run (tag kind=study) and the nested trial runs."""

    name: str
    uri: str
    client: mlflow.MlflowClient
    experiment_id: str
    parent: Run
    trials: list[Run]

    @property
    def info(self) -> dict:
        """The study's settings, from the parent run's params and tags."""
        params = {k: parse_value(v) for k, v in self.parent.data.params.items()}
        return {"study": self.name, "tracking_uri": self.uri, "experiment_id": self.experiment_id,
                "parent_run_id": self.parent.info.run_id, "preset": self.parent.data.tags.get("preset"),
                **params}


# ----------------------------------------------------------------------------- finding the study
def resolve_uri(uri: str, what: str = "MLflow store", flag: str = "--tracking-uri") -> str:
    """A relative sqlite:/// URI made absolute; a missing SQLite file or a server that does not answer is an error."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
                response.read()
        except OSError as err:
            raise AnalysisError(f"MLflow tracking server {uri} is unreachable ({err}); start it or fix {flag}") from err
        return uri
    if not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
    if not path.is_file():
        raise AnalysisError(f"no {what} at {path}; run a study first (python study/run.py) or pass {flag}")
    return f"sqlite:///{path}"


def all_runs(client: mlflow.MlflowClient, experiment_id: str) -> list[Run]:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def list_studies(uri: str) -> list[str]:
    """Names of the studies (MLflow experiments tagged `study`) in the store, newest first."""
    client = mlflow.MlflowClient(uri)
    exps = client.search_experiments(order_by=["creation_time DESC"])
    return [e.name for e in exps if "study" in e.tags]


def latest_study(uri: str) -> str:
    """The most recently created study in the store (a notebook's default)."""
    studies = list_studies(resolve_uri(uri))
    if not studies:
        raise AnalysisError(f"no study in {uri}; run one first: python study/run.py")
    return studies[0]


def studies_hint(uri: str) -> str:
    studies = list_studies(uri)
    if not studies:
        return "the store holds no study yet; run one with python study/run.py"
    return f"studies there: {', '.join(studies)} (pass one with --study)"


def open_study(uri: str, study: str) -> StudyRuns:
    """The study's runs; AnalysisError when it does not exist or has no finished trial."""
    uri = resolve_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise AnalysisError(f"no study named {study!r} in {uri}; {studies_hint(uri)}")
    runs = all_runs(client, exp.experiment_id)
    parents = [r for r in runs if r.data.tags.get("kind") == "study"]
    if not parents:
        raise AnalysisError(f"experiment {study!r} in {uri} is not a study (no run tagged kind=study); "
                            f"{studies_hint(uri)}")
    parent = parents[0]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    if not any(r.info.status in FINISHED for r in trials):
        raise AnalysisError(f"study {study!r} has no finished trial yet ({len(trials)} trial runs, none finished); "
                            f"wait for it, or continue it with python study/run.py --resume --study-name {study}")
    return StudyRuns(study, uri, client, exp.experiment_id, parent, trials)


# ----------------------------------------------------------------------------- tables
def param_value(name: str, raw: str):
    """A logged param with its Config type (bool, int, float, str), guessed for names Config does not know."""
    kind = CONFIG_TYPES.get(name)
    if kind is None:
        return parse_value(raw)
    if kind is bool:
        return raw.lower() == "true"
    return kind(raw)


def method_of(params: dict) -> str:
    """The paper's method names: VAE (objective vae), AVB+AC (Adaptive Contrast), else AVB."""
    if params.get("objective") == "vae":
        return "VAE"
    return "AVB+AC" if params.get("adaptive_contrast") is True else "AVB"


def history_frame(runs: StudyRuns) -> pd.DataFrame:
    """Every logged value of every metric of every trial run."""
    rows = []
    for run in runs.trials:
        trial_id = run.data.tags.get("trial_id", "")
        for key in sorted(run.data.metrics):
            for m in runs.client.get_metric_history(run.info.run_id, key):
                rows.append((run.info.run_id, trial_id, key, int(m.step), float(m.value), m.timestamp))
    df = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    df["step"] = df["step"].astype("int64")
    df["value"] = df["value"].astype("float64")
    df["timestamp"] = pd.to_datetime(df["timestamp"].astype("int64"), unit="ms", utc=True)
    return df.sort_values(["trial_id", "metric", "step"], ignore_index=True)


def metric_columns(history: pd.DataFrame) -> dict[str, float]:
    """final_METRIC (last step) and best_METRIC (max or min, see HIGHER_IS_BETTER) for one run's history."""
    out = {}
    for key, h in history.groupby("metric", sort=True):
        if key == "fidelity":  # its own column
            continue
        h = h.sort_values("step")
        out[f"final_{key}"] = h["value"].iloc[-1]
        out[f"best_{key}"] = h["value"].max() if key in HIGHER_IS_BETTER else h["value"].min()
    return out


def trial_row(run: Run, history: pd.DataFrame, full_iterations: int) -> dict:
    params = {k: param_value(k, v) for k, v in run.data.params.items()}
    tags = run.data.tags
    diverged = tags.get("diverged") == "true"
    fidelity = history.loc[history["metric"] == "fidelity"].sort_values("step")["value"]
    iterations = len(fidelity)  # logged once per iteration (a resumed trial never logs one twice)
    row = {"trial_id": tags.get("trial_id", ""), "run_id": run.info.run_id, "run_name": run.info.run_name,
           "status": run.info.status, "method": method_of(params), "iterations": iterations,
           "fidelity": float(fidelity.iloc[-1]) if len(fidelity) else 0.0,
           "full_fidelity": iterations >= full_iterations and not diverged,
           "diverged": diverged, "stopped_early": tags.get("stopped_early") == "true",
           "searched": tags.get("searched", ""),
           "start_time": run.info.start_time, "end_time": run.info.end_time}
    clash = set(row) & set(params)
    if clash:
        raise AnalysisError(f"params {sorted(clash)} clash with the table's own columns; rename them")
    return row | metric_columns(history) | params


def trials_frame(runs: StudyRuns, history: pd.DataFrame) -> pd.DataFrame:
    """One row per trial run, params typed, metrics summarised (see the module docstring)."""
    full_iterations = int(runs.info["iterations"])
    by_run = dict(iter(history.groupby("run_id")))
    empty = history.iloc[:0]
    rows = [trial_row(r, by_run.get(r.info.run_id, empty), full_iterations) for r in runs.trials]
    df = pd.DataFrame(rows)
    for col in ("start_time", "end_time"):
        df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
    for col, kind in CONFIG_TYPES.items():  # a param missing in some run keeps its type (nullable)
        if kind in NULLABLE and col in df and df[col].isna().any():
            df[col] = df[col].astype(NULLABLE[kind])
    return df.sort_values("start_time", ignore_index=True)


def load_history(uri: str, study: str) -> pd.DataFrame:
    """history.parquet's table: run_id, trial_id, metric, step, value, timestamp (UTC)."""
    return history_frame(open_study(uri, study))


def load_trials(uri: str, study: str) -> pd.DataFrame:
    """trials.parquet's table: one row per trial run."""
    runs = open_study(uri, study)
    return trials_frame(runs, history_frame(runs))


def study_info(uri: str, study: str) -> dict:
    """The study's settings: preset, iterations, steps_per_iteration, scheduler, parent_run_id, ..."""
    return open_study(uri, study).info


def write_parquet(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


def export(uri: str, study: str, out: str | Path) -> dict[str, Path]:
    """Write OUT/trials.parquet and OUT/history.parquet; returns their paths."""
    runs = open_study(uri, study)
    history = history_frame(runs)
    out = Path(out)
    return {"trials": write_parquet(trials_frame(runs, history), out / "trials.parquet"),
            "history": write_parquet(history, out / "history.parquet")}


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                   help=f"MLflow tracking URI, SQLite file or server (default: {DEFAULT_TRACKING_URI}, "
                        "made absolute)")
    p.add_argument("--study", required=True, help="the study's name (its MLflow experiment)")
    p.add_argument("--out", help="output folder (default: results/analysis/STUDY)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out or f"results/analysis/{args.study}").resolve()
    try:
        paths = export(args.tracking_uri, args.study, out)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path} ({pq.read_metadata(path).num_rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
