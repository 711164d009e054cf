"""Recorded learning curves of the synthetic space, and a surrogate of them for replaying searches.

The curves are real trials of the study itself: a random-search study of the synthetic preset with every
trial trained to its full length (8 iterations of 500 steps), read back from its MLflow store and kept as a
small CSV (benchmarks/data/synthetic_curves.csv, one row per trial):

    python study/run.py --preset synthetic --study-name curves-r1 --sampler random --scheduler none \\
        --no-baselines --num-trials 200 --set hidden=128 --set batch_size=128 --seed 7 --results-dir RESULTS
    python benchmarks/surrogate.py record --study curves-r1 --results-dir RESULTS   # appends its trials
    python benchmarks/surrogate.py check                 # the held-out check, written to docs/search.md

The surrogate maps a configuration to its validation log p(x) after each iteration and to its seconds per
iteration: scikit-learn regressors on the searched values (log scales where the prior is log-uniform),
judged by the held-out check: 5-fold cross-validation over the recorded trials, the rank correlation
(Spearman) of predicted and recorded final values, and at the first ASHA rung (iteration 2). The replay
uses extra trees: a tree's prediction is an average of recorded values, so a sampler cannot find a
region the surrogate extrapolates to better than any recorded trial (the Gaussian process ranks held-out
trials better, but TPE found configurations it predicted at -1.33, above the optimum -log 4 = -1.386).
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CURVES = ROOT / "benchmarks" / "data" / "synthetic_curves.csv"
ITERATIONS = 8
# searched value -> its scale in the model (the prior's: log-uniform ones on a log scale)
PARAMS = {"lr": "log", "adv_lr": "log", "adv_hidden": "log", "adv_inner": "log", "adv_depth": "linear",
          "adv_steps": "linear", "beta1": "linear"}
LL = [f"ll_{i}" for i in range(1, ITERATIONS + 1)]
FIXED = ("hidden", "batch_size", "steps")  # the recorded study's fixed settings: curves of other settings differ
FLOOR = -3.0  # what a diverged trial's later iterations count as: below every recorded finite value


# ----------------------------------------------------------------------------- recording
def curves_of(trials: pd.DataFrame, history: pd.DataFrame, study: str) -> pd.DataFrame:
    """One row per ended trial: its searched values, log p(x) after each iteration (FLOOR after it diverged),
    seconds per iteration (median of its iterations after the first) and its fate."""
    ll = history[history["metric"] == "log_likelihood"]
    rows = []
    for t in trials[trials["fate"].isin(["finished", "diverged"])].itertuples():
        mine = ll[ll["run_id"] == t.run_id].sort_values("step").drop_duplicates("step", keep="last")
        values = [v if math.isfinite(v) else FLOOR for v in mine["value"]]
        if t.fate == "finished" and len(values) < ITERATIONS:
            continue
        values += [FLOOR] * (ITERATIONS - len(values))
        seconds = mine["timestamp"].diff().dt.total_seconds().iloc[1:]
        rows.append({"study": study, "trial_number": t.trial_number, "fate": t.fate,
                     **{k: getattr(t, k, None) for k in FIXED},
                     **{p: getattr(t, p) for p in PARAMS}, **dict(zip(LL, values)),
                     "seconds_per_iteration": float(seconds.median()) if len(seconds) else math.nan})
    return pd.DataFrame(rows)


def record(study: str, results_dir: str | None, tracking_uri: str | None, out: Path = CURVES) -> pd.DataFrame:
    """Append a study's ended trials to the CSV (a study already there is replaced)."""
    from analysis import export

    uri = tracking_uri or f"sqlite:///{Path(results_dir or 'results').resolve()}/mlflow.db"
    new = curves_of(export.load_trials(uri, study), export.load_history(uri, study), study)
    old = pd.read_csv(out) if out.exists() else pd.DataFrame()
    if len(old):
        old = old[old["study"] != study]
    both = pd.concat([old, new], ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    both.to_csv(out, index=False, float_format="%.6g")
    return both


def load_curves(path: Path = CURVES) -> pd.DataFrame:
    if not Path(path).exists():
        raise SystemExit(f"error: no recorded curves at {path}; record a study first (see {Path(__file__).name}'s "
                         "docstring)")
    return pd.read_csv(path)


# ----------------------------------------------------------------------------- the surrogate
def features(params: pd.DataFrame | dict) -> np.ndarray:
    df = pd.DataFrame([params]) if isinstance(params, dict) else params
    cols = [np.log10(df[p].astype(float)) if scale == "log" else df[p].astype(float) for p, scale in PARAMS.items()]
    return np.column_stack(cols)


def targets(curves: pd.DataFrame) -> np.ndarray:
    """The 8 log p(x) values and log seconds per iteration."""
    seconds = curves["seconds_per_iteration"].fillna(curves["seconds_per_iteration"].median())
    return np.column_stack([curves[LL].to_numpy(float), np.log(seconds.to_numpy(float))])


def make_model(kind: str, seed: int = 0):
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "extra_trees":
        return ExtraTreesRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed)
    if kind == "random_forest":
        return RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=seed)
    if kind == "knn":
        return make_pipeline(StandardScaler(), KNeighborsRegressor(n_neighbors=5, weights="distance"))
    if kind == "gp":
        kernel = ConstantKernel() * Matern(length_scale=np.ones(len(PARAMS)), nu=2.5) + WhiteKernel(1e-2)
        return make_pipeline(StandardScaler(), GaussianProcessRegressor(kernel, normalize_y=True, random_state=seed,
                                                                        n_restarts_optimizer=2))
    raise ValueError(f"unknown surrogate model {kind!r}; known: {', '.join(MODELS)}")


MODELS = ("extra_trees", "random_forest", "gp", "knn")


class Surrogate:
    """Predicted log p(x) after each iteration and seconds per iteration for a configuration."""

    def __init__(self, curves: pd.DataFrame, kind: str = "extra_trees", seed: int = 0):
        self.kind, self.n, self.params = kind, len(curves), tuple(PARAMS)
        self.model = make_model(kind, seed).fit(features(curves), targets(curves))
        self.floor = float(curves[LL].to_numpy().min())

    def predict(self, params: dict | pd.DataFrame) -> np.ndarray:
        """(n, 9): log p(x) after iterations 1..8, then seconds per iteration."""
        out = np.atleast_2d(self.model.predict(features(params)))
        out[:, :ITERATIONS] = np.maximum(out[:, :ITERATIONS], self.floor)
        out[:, ITERATIONS] = np.exp(out[:, ITERATIONS])
        return out


def spearman(a, b) -> float:
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


def out_of_fold(curves: pd.DataFrame, kind: str, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each recorded trial predicted by a surrogate fitted on the other folds."""
    fold = np.random.default_rng(seed).permutation(len(curves)) % folds
    pred = np.zeros((len(curves), ITERATIONS + 1))
    for k in range(folds):
        pred[fold == k] = Surrogate(curves[fold != k], kind, seed).predict(curves[fold == k])
    return pred


def heldout_check(curves: pd.DataFrame, kind: str, folds: int = 5, seed: int = 0) -> dict:
    """k-fold cross-validation: rank correlation of predicted and recorded log p(x), final and at iteration 2,
    and the mean absolute error of the final value."""
    pred = out_of_fold(curves, kind, folds, seed)
    real = curves[LL].to_numpy(float)
    return {"model": kind, "trials": len(curves), "folds": folds,
            "spearman_final": spearman(pred[:, ITERATIONS - 1], real[:, -1]),
            "spearman_rung2": spearman(pred[:, 1], real[:, 1]),
            "mae_final": float(np.abs(pred[:, ITERATIONS - 1] - real[:, -1]).mean()),
            "top_decile_recall": top_recall(pred[:, ITERATIONS - 1], real[:, -1])}


def top_recall(pred: np.ndarray, real: np.ndarray, q: float = 0.9) -> float:
    """Of the recorded top 10% by final value, the share the surrogate also puts in its top 10%."""
    top_real, top_pred = real >= np.quantile(real, q), pred >= np.quantile(pred, q)
    return float((top_real & top_pred).sum() / max(1, top_real.sum()))


def check_table(curves: pd.DataFrame, kinds=MODELS) -> tuple[list[dict], str]:
    rows = [heldout_check(curves, k) for k in kinds]
    lines = ["| surrogate | Spearman, final value | Spearman, iteration 2 | mean abs. error, final (nats) | "
             "top-10% recall |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['spearman_final']:.3f} | {r['spearman_rung2']:.3f} | {r['mae_final']:.4f} | "
              f"{r['top_decile_recall']:.2f} |" for r in rows]
    return rows, "\n".join(lines)


def write_block(doc: Path, block: str, body: str) -> None:
    """Replace the marked block of `doc` (appended if missing); the rest of the page stays as it is."""
    text = doc.read_text()
    pattern = re.compile(rf"<!-- {block}:begin -->.*?<!-- {block}:end -->", re.S)
    new = f"<!-- {block}:begin -->\n{body}\n<!-- {block}:end -->"
    doc.write_text(pattern.sub(lambda _: new, text) if pattern.search(text) else f"{text}\n{new}\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record", help="append a study's trials to the recorded curves")
    r.add_argument("--study", required=True)
    r.add_argument("--results-dir", help="the study's results folder (its mlflow.db)")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///RESULTS/mlflow.db)")
    r.add_argument("--out", type=Path, default=CURVES)
    c = sub.add_parser("check", help="the surrogate's held-out check (5-fold cross-validation)")
    c.add_argument("--curves", type=Path, default=CURVES)
    c.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    c.add_argument("--doc", type=Path, help="also write the table into this page's block 'surrogate-check', "
                   "e.g. docs/search.md")
    args = p.parse_args(argv)
    if args.command == "record":
        both = record(args.study, args.results_dir, args.tracking_uri, args.out)
        counts = ", ".join(f"{s}: {n}" for s, n in both["study"].value_counts().items())
        print(f"{args.out}: {len(both)} trials ({counts})")
        return 0
    curves = load_curves(args.curves)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        p.error(f"unknown model(s) {', '.join(sorted(unknown))}; known: {', '.join(MODELS)}")
    _, table = check_table(curves, args.models.split(","))
    studies = ", ".join(f"{s}: {n}" for s, n in curves["study"].value_counts().items())
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = (f"Measured {when} (`python benchmarks/surrogate.py check`): {len(curves)} recorded trials ({studies}), "
            f"5-fold cross-validation.\n\n{table}")
    print(text)
    if args.doc:
        write_block(args.doc, "surrogate-check", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
