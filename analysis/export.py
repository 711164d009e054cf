"""A study's MLflow runs as two Parquet tables: one row per trial, one row per logged metric value.

    python -m analysis.export --study NAME                       # the stores in ./results
    python -m analysis.export --study NAME --results-dir /path/to/results
    python -m analysis.export --study NAME --tracking-uri http://HEAD_IP:5000 --out exports/NAME

The MLflow store is --tracking-uri, else $MLFLOW_TRACKING_URI, else RESULTS/mlflow.db (see analysis.stores);
the output folder --out, else RESULTS/analysis/STUDY. Writes:

- trials.parquet, one row per trial run: trial_number (the Optuna trial number), trial_id (Tune's), run_id,
  run_name, status (MLflow), fate (finished, stopped_early, diverged, crashed, lost, interrupted; "running"
  while a trial has none yet) and the booleans full_fidelity, stopped_early, diverged, crashed, failed;
  method (VAE, AVB, AVB+AC), iterations, fidelity, best_step, searched, fixed, error, start_time,
  end_time; final_METRIC and best_METRIC of every per-iteration metric (validation split; best_ of a
  `_se` is the one at the best step of its metric); test_* (image presets: the test-set evaluation at the
  end, once); every param the run logged as a typed column (a VAE run has no adv_* params: empty there).
- history.parquet: run_id, trial_number, trial_id, metric, step, value, timestamp (UTC).

In a notebook:

    from analysis.export import load_trials, load_history
    trials = load_trials("sqlite:////abs/results/mlflow.db", "NAME")

Every bad input is one line on stderr and exit code 2; nothing in the study is changed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Run

from analysis.stores import (
    AnalysisError,
    OneLineParser,
    Stores,
    add_store_flags,
    check_out_dir,
    find_stores,
    masked,
    open_mlflow,
    run_cli,
)
from avb.config import Config, parse_value
from trainables import tracking
from trainables.tracking import Fate, method_of

RUNNING = "running"  # the fate column of a trial that has not ended yet (no fate tag)
HIGHER_IS_BETTER = ("log_likelihood", "ais_log_likelihood", "elbo", "adversary_elbo", "steps_per_s",
                    "examples_per_s")  # others: lower is better
HISTORY_COLUMNS = ("run_id", "trial_number", "trial_id", "metric", "step", "value", "timestamp")
OWN_COLUMNS = {"fidelity"}  # per-iteration metrics that are a column of their own, not final_/best_
NULLABLE = {int: "Int64", bool: "boolean"}  # pandas dtypes that hold a missing value without changing type
CONFIG_TYPES = {f.name: {"str": str, "int": int, "float": float, "bool": bool}[f.type] for f in fields(Config)}
OWN_ROW = ("trial_number", "trial_id", "run_id", "run_name", "status", "fate", "full_fidelity", "stopped_early",
           "diverged", "crashed", "failed", "method", "iterations", "fidelity", "best_step", "searched", "fixed",
           "error", "start_time", "end_time")  # trial_row's own columns
ENDED = (Fate.FINISHED.value, Fate.STOPPED_EARLY.value)  # trials with a value to analyse

__all__ = ["AnalysisError", "StudyRuns", "export", "history_frame", "latest_study", "list_studies", "load_history",
           "load_trials", "open_study", "study_info", "trials_frame"]


@dataclass
class StudyRuns:
    """A study as MLflow holds it: the client, the parent run (tag kind=study) and the nested trial runs."""

    name: str
    uri: str
    client: object  # mlflow.MlflowClient
    experiment_id: str
    parent: Run
    trials: list[Run]

    @property
    def info(self) -> dict:
        """The study's settings: the parent run's params (preset, iterations, ..., set.FIELD), ids, best trial."""
        tags = self.parent.data.tags
        params = {k: parse_value(v) for k, v in self.parent.data.params.items()}
        best = tags.get("best_trial_number")
        return {"study": self.name, "tracking_uri": masked(self.uri), "experiment_id": self.experiment_id,
                "parent_run_id": self.parent.info.run_id, "preset": tags.get(tracking.PRESET),
                "fate": tags.get(tracking.FATE, RUNNING), "best_trial_number": int(best) if best else None,
                "best_log_likelihood": self.parent.data.metrics.get("best_log_likelihood"), **params}


# ----------------------------------------------------------------------------- finding the study
def list_studies(client) -> list[str]:
    """Names of the studies (MLflow experiments tagged `study`) in the store, newest first."""
    exps = client.search_experiments(order_by=["creation_time DESC"])
    return [e.name for e in exps if tracking.STUDY in e.tags]


def latest_study(uri: str) -> str:
    """The most recently created study in the store (the notebook's default)."""
    client = open_mlflow(uri)
    studies = list_studies(client)
    if not studies:
        raise AnalysisError(f"no study in {masked(uri)}; run one first: python study/run.py")
    return studies[0]


def studies_hint(client) -> str:
    studies = list_studies(client)
    if not studies:
        return "the store holds no study yet; run one with python study/run.py"
    return f"studies there: {', '.join(studies)} (pass one with --study)"


def open_study(uri: str, study: str) -> StudyRuns:
    """The study's runs; AnalysisError when the store or the study cannot be read, or no trial has ended with
    a value (finished or stopped early)."""
    client = open_mlflow(uri)
    exp = client.get_experiment_by_name(study)
    if exp is None:
        raise AnalysisError(f"no study named {study!r} in {masked(uri)}; {studies_hint(client)}")
    parent = tracking.find_study_run(client, exp.experiment_id)
    if parent is None:
        raise AnalysisError(f"experiment {study!r} in {masked(uri)} is not a study (no run tagged "
                            f"{tracking.KIND}=study); {studies_hint(client)}")
    trials = tracking.trial_runs(client, exp.experiment_id, parent.info.run_id)
    if not any(r.data.tags.get(tracking.FATE) in ENDED for r in trials):
        fates = pd.Series([r.data.tags.get(tracking.FATE, RUNNING) for r in trials], dtype=object).value_counts()
        seen = ", ".join(f"{n} {f}" for f, n in fates.items()) or "no trial run"
        raise AnalysisError(f"study {study!r} has no finished trial yet ({seen}); wait for it, continue it "
                            f"(python study/run.py --resume --study-name {study}), or read the failed runs' "
                            "`error` tags in MLflow")
    return StudyRuns(study, uri, client, exp.experiment_id, parent, trials)


# ----------------------------------------------------------------------------- tables
def param_value(name: str, raw: str):
    """A logged param with its Config type (bool, int, float, str), guessed for names Config does not know."""
    kind = CONFIG_TYPES.get(name)
    if kind is None:
        return parse_value(raw)
    if kind is bool:
        return raw.lower() == "true"
    try:
        return kind(raw)
    except ValueError:
        return parse_value(raw)


def trial_number(run: Run) -> int | None:
    raw = run.data.tags.get(tracking.TRIAL_NUMBER)
    return int(raw) if raw not in (None, "") else None


def history_frame(runs: StudyRuns) -> pd.DataFrame:
    """Every logged value of every metric of every trial run."""
    rows = []
    for run in runs.trials:
        trial_id, number = run.data.tags.get(tracking.TRIAL_ID, ""), trial_number(run)
        for key in sorted(run.data.metrics):
            for m in runs.client.get_metric_history(run.info.run_id, key):
                rows.append((run.info.run_id, number, trial_id, key, int(m.step), float(m.value), m.timestamp))
    df = pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))
    df["trial_number"] = df["trial_number"].astype("Int64")
    df["step"] = df["step"].astype("int64")
    df["value"] = df["value"].astype("float64")
    df["timestamp"] = pd.to_datetime(df["timestamp"].astype("int64"), unit="ms", utc=True)
    return df.sort_values(["trial_number", "metric", "step"], ignore_index=True)


def metric_columns(history: pd.DataFrame) -> dict[str, float]:
    """One run's history as columns: test_* once (the end's test-set evaluation), and for per-iteration metrics
    final_METRIC (last step) and best_METRIC (max or min, see HIGHER_IS_BETTER; for a standard error the
    value at the step where its metric was best)."""
    out, best_step = {}, {}
    series = {key: h.sort_values("step") for key, h in history.groupby("metric", sort=True)}
    for key, h in series.items():
        if key.startswith("test_"):
            out[key] = h["value"].iloc[-1]
        elif key not in OWN_COLUMNS and not key.endswith("_se"):
            best = h["value"].idxmax() if key in HIGHER_IS_BETTER else h["value"].idxmin()
            out[f"final_{key}"], out[f"best_{key}"] = h["value"].iloc[-1], h.loc[best, "value"]
            best_step[key] = h.loc[best, "step"]
    for key, h in series.items():
        if key.endswith("_se") and not key.startswith("test_"):
            base = key.removesuffix("_mc_se").removesuffix("_se")
            out[f"final_{key}"] = h["value"].iloc[-1]
            at_best = h.loc[h["step"] == best_step.get(base), "value"]
            out[f"best_{key}"] = at_best.iloc[-1] if len(at_best) else float("nan")
    return out


def trial_row(run: Run, history: pd.DataFrame) -> dict:
    params = {k: param_value(k, v) for k, v in run.data.params.items()}
    tags = run.data.tags
    fate = tags.get(tracking.FATE, RUNNING)
    failed = fate in {f.value for f in Fate if f.failed}
    fidelity = history.loc[history["metric"] == "fidelity"].sort_values("step")["value"]
    best_step = tags.get(tracking.BEST_STEP, "")
    row = {"trial_number": trial_number(run), "trial_id": tags.get(tracking.TRIAL_ID, ""),
           "run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status, "fate": fate,
           "full_fidelity": fate == Fate.FINISHED.value, "stopped_early": fate == Fate.STOPPED_EARLY.value,
           "diverged": fate == Fate.DIVERGED.value, "crashed": fate == Fate.CRASHED.value, "failed": failed,
           "method": tags.get(tracking.METHOD) or method_of(params),
           "iterations": len(fidelity),  # logged once per iteration (a resumed trial never logs one twice)
           "fidelity": float(fidelity.iloc[-1]) if len(fidelity) else 0.0,
           "best_step": int(best_step) if best_step.isdigit() else None,
           "searched": tags.get(tracking.SEARCHED, ""), "fixed": tags.get(tracking.FIXED, ""),
           "error": tags.get(tracking.ERROR, ""),
           "start_time": run.info.start_time, "end_time": run.info.end_time}
    clash = set(row) & set(params)
    if clash:
        raise AnalysisError(f"params {sorted(clash)} clash with the table's own columns; rename them")
    return row | metric_columns(history) | params


def trials_frame(runs: StudyRuns, history: pd.DataFrame) -> pd.DataFrame:
    """One row per trial run, params typed, metrics summarised (see the module docstring)."""
    by_run = dict(iter(history.groupby("run_id")))
    empty = history.iloc[:0]
    df = pd.DataFrame([trial_row(r, by_run.get(r.info.run_id, empty)) for r in runs.trials])
    for col in ("start_time", "end_time"):
        df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
    for col in ("trial_number", "best_step"):
        df[col] = df[col].astype("Int64")
    for col, kind in CONFIG_TYPES.items():  # a param missing in some runs (VAE: no adv_*) keeps its type
        if col in df and df[col].isna().any():
            if kind in NULLABLE:
                df[col] = df[col].astype(NULLABLE[kind])
            elif kind is str:
                df[col] = df[col].astype("string")
    return df[column_order(df)].sort_values("trial_number", ignore_index=True)


def column_order(df: pd.DataFrame) -> list[str]:
    """The trial's own columns, then the metrics (sorted), then params in Config's order, then other params."""
    own = [c for c in df.columns if c in OWN_ROW]
    metrics = sorted(c for c in df.columns if c.startswith(("final_", "best_", "test_")) and c not in own)
    config = [c for c in CONFIG_TYPES if c in df.columns]
    return own + metrics + config + [c for c in df.columns if c not in {*own, *metrics, *config}]


def load_history(uri: str, study: str) -> pd.DataFrame:
    """history.parquet's table: run_id, trial_number, trial_id, metric, step, value, timestamp (UTC)."""
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
    out = check_out_dir(Path(out))
    runs = open_study(uri, study)
    history = history_frame(runs)
    trials = trials_frame(runs, history)
    try:
        return {"trials": write_parquet(trials, out / "trials.parquet"),
                "history": write_parquet(history, out / "history.parquet")}
    except OSError as err:
        raise AnalysisError(f"cannot write into {out} ({err.strerror or err}); pass a writable --out") from None


# ----------------------------------------------------------------------------- main
def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m analysis.export", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store_flags(p, optuna=False)
    p.add_argument("--out", help="output folder (default: RESULTS/analysis/STUDY)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        stores: Stores = find_stores(args.results_dir, args.tracking_uri)
        out = check_out_dir(Path(args.out) if args.out else stores.out_dir(args.study))
        paths = export(stores.tracking_uri, args.study, out)
        for name, path in paths.items():
            print(f"{name}: {path} ({pq.read_metadata(path).num_rows} rows)")

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
