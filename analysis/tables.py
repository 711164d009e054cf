"""The report's tables, from export's trials table: the best trials, the paper's Table 1 next to the study's
best VAE/AVB/AVB+AC, the test-set evaluation of image presets and the paired difference between methods.

Labels say what each number is: `elbo` is the VAE's exact ELBO (a lower bound on log p(x)); `adversary_elbo`
is AVB's ELBO as the adversary estimates it, NOT a bound (it can lie above log p(x) when the adversary is
wrong). Standard errors (±) of test-set figures are over test images: what a comparison between trials
needs; the Monte Carlo error of the estimators is a column of its own.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

METHODS = ("VAE", "AVB", "AVB+AC")
BEST_ROWS = 10  # rows of the best-trials table
PER_IMAGE = "test_per_image.json"  # artifact of the trials evaluated on the test set (study/final_eval.py)
LABELS = {  # metric -> what the tables call it
    "log_likelihood": "log p(x) (the study's estimator)",
    "log_likelihood_se": "± over points",
    "reconstruction_error": "reconstruction error",
    "elbo": "ELBO (exact, VAE)",
    "adversary_elbo": "ELBO (adversary's estimate, not a bound)",
    "kl_qz_pz": "KL(q(z) || p(z))",
    "ais_log_likelihood": "log p(x), AIS",
    "test_log_likelihood": "test log p(x), IS",
    "test_log_likelihood_se": "± over images (IS)",
    "test_log_likelihood_mc_se": "± Monte Carlo (IS)",
    "test_ais_log_likelihood": "test log p(x), AIS",
    "test_ais_log_likelihood_se": "± over images (AIS)",
    "test_ais_log_likelihood_mc_se": "± Monte Carlo (AIS)",
}
TABLE1_METRICS = ("log_likelihood", "reconstruction_error", "elbo", "adversary_elbo", "kl_qz_pz")
TEST_METRICS = ("test_log_likelihood", "test_log_likelihood_se", "test_log_likelihood_mc_se",
                "test_ais_log_likelihood", "test_ais_log_likelihood_se", "test_ais_log_likelihood_mc_se")


def label(column: str) -> str:
    """A table header: final_elbo -> 'ELBO (exact, VAE)', best_log_likelihood -> 'best log p(x), ...'."""
    for prefix, shown in (("final_", ""), ("best_", "best ")):
        if column.startswith(prefix) and column.removeprefix(prefix) in LABELS:
            return shown + LABELS[column.removeprefix(prefix)]
    return LABELS.get(column, column)


# ----------------------------------------------------------------------------- choosing trials
def ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """Full-fidelity trials first, each group by final log_likelihood, best first."""
    return trials.sort_values(["full_fidelity", "final_log_likelihood"], ascending=False, na_position="last")


def best_trial(trials: pd.DataFrame, method: str | None = None) -> pd.Series | None:
    """The finished (full-fidelity) trial (of `method`, if given) with the highest final log_likelihood: the
    study's choice, made on the validation split."""
    pool = trials[trials["full_fidelity"] & trials["final_log_likelihood"].notna()]
    if method is not None:
        pool = pool[pool["method"] == method]
    return None if pool.empty else pool.loc[pool["final_log_likelihood"].idxmax()]


def searched_params(trials: pd.DataFrame) -> list[str]:
    """Parameters the study searched (the trial runs' `searched` tag), as logged columns."""
    names = {name for tag in trials["searched"] for name in tag.split(",") if name}
    return sorted(name for name in names if name in trials.columns)


# ----------------------------------------------------------------------------- tables
def best_trials_table(trials: pd.DataFrame, n: int = BEST_ROWS) -> pd.DataFrame:
    """The n best trials (full fidelity first), their validation figures, test figures if any, searched values."""
    cols = ["trial_number", "method", "fate", "iterations", "final_log_likelihood", "final_log_likelihood_se",
            "best_log_likelihood", "final_elbo", "final_adversary_elbo", "test_log_likelihood",
            "test_log_likelihood_se", "test_ais_log_likelihood", "test_ais_log_likelihood_se",
            *searched_params(trials)]
    table = ranked(trials).head(n)
    table = table[[c for c in cols if c in table.columns]].reset_index(drop=True)
    return table.rename(columns={c: label(c) for c in table.columns if c.startswith(("final_", "best_", "test_"))})


def paper_table(trials: pd.DataFrame, paper: dict) -> pd.DataFrame:
    """The paper's figures (a preset's PAPER) next to the study's best finished trial per method (final values)."""
    metrics = [m for m in TABLE1_METRICS if f"final_{m}" in trials.columns or any(m in p for p in paper.values())]
    columns = {f"paper {name}": [paper[name].get(m) for m in metrics] for name in paper}
    for method in METHODS:
        best = best_trial(trials, method)
        head = f"study {method}" + (f" (#{best['trial_number']})" if best is not None else "")
        columns[head] = [None if best is None else best.get(f"final_{m}") for m in metrics]
    return pd.DataFrame({"metric": [f"{LABELS[m]} (`{m}`)" for m in metrics], **columns})


def test_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials evaluated on the test set at the end (image presets), best validation first."""
    if "test_log_likelihood" not in trials.columns:
        return pd.DataFrame()
    done = ranked(trials[trials["test_log_likelihood"].notna()])
    cols = ["trial_number", "method", "final_log_likelihood", *[m for m in TEST_METRICS if m in done.columns]]
    table = done[cols].reset_index(drop=True)
    return table.rename(columns={"final_log_likelihood": "validation log p(x)",
                                 **{m: LABELS[m] for m in TEST_METRICS}})


def cell(value) -> str:
    """A table cell: 4 significant digits, — for a missing value, '|' escaped (markdown's column separator)."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def rung_table(trials: pd.DataFrame, history: pd.DataFrame, rung_step: int) -> tuple[pd.DataFrame, float]:
    """Every trial's log_likelihood at ASHA's first rung (training step `rung_step`) next to its final one, and
    the Spearman rank correlation of the two over the trials that ran the full budget (NaN for fewer than 3):
    did the rung rank the trials as the end did?"""
    at = history[(history["metric"] == "log_likelihood") & (history["step"] == rung_step)]
    rung = at.drop_duplicates("trial_number", keep="last").set_index("trial_number")["value"]
    table = trials[["trial_number", "method", "fate", "final_log_likelihood"]].copy()
    table.insert(3, "at the rung", table["trial_number"].map(rung))
    table = table[table["at the rung"].notna()].sort_values("at the rung", ascending=False).reset_index(drop=True)
    full = table[table["fate"] == "finished"]
    rho = (full["at the rung"].rank().corr(full["final_log_likelihood"].rank()) if len(full) >= 3 else float("nan"))
    return table.rename(columns={"final_log_likelihood": "final"}), rho


# ----------------------------------------------------------------------------- paired difference on the test set
def per_image_values(client, run_id: str) -> dict | None:
    """The trial's test_per_image.json ({metric: {"values": [...], "mc_se": [...]}}), None when it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, PER_IMAGE, tmp)
        except Exception:  # noqa: BLE001  (MLflow raises several kinds for a missing artifact)
            return None
        return json.loads(Path(path).read_text())


def paired_difference(a, b) -> tuple[float, float]:
    """Mean of a - b over the same images and its standard error over images (avb.evaluate's)."""
    import torch

    from avb.evaluate import paired_difference as paired

    return paired(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64))


def pair_to_compare(trials: pd.DataFrame) -> tuple[list[pd.Series], str]:
    """The two trials to compare on the test set: the best (by validation) of each of the two best methods
    among the trials evaluated there, else the two best evaluated trials; and how they were chosen."""
    if "test_log_likelihood" not in trials.columns:
        return [], ""
    done = ranked(trials[trials["test_log_likelihood"].notna() & trials["full_fidelity"]])
    per_method = done.drop_duplicates("method")
    if len(per_method) >= 2:
        return [per_method.iloc[0], per_method.iloc[1]], "the best trial of each of the two best methods"
    if len(done) >= 2:
        return [done.iloc[0], done.iloc[1]], f"only {done['method'].iloc[0]} was evaluated: its two best trials"
    return [], ""


def paired_table(trials: pd.DataFrame, client) -> tuple[pd.DataFrame, str]:
    """Trial A - trial B on the same test images, with the standard error of the paired difference; a note."""
    pair, how = pair_to_compare(trials)
    if not pair:
        return pd.DataFrame(), ""
    values = [per_image_values(client, t["run_id"]) for t in pair]
    names = [f"#{t['trial_number']} {t['method']}" for t in pair]
    if any(v is None for v in values):
        return pd.DataFrame(), f"no {PER_IMAGE} for {', '.join(n for n, v in zip(names, values) if v is None)}"
    rows = []
    for metric in ("test_log_likelihood", "test_ais_log_likelihood"):
        a, b = (v.get(metric, {}).get("values") for v in values)
        if not a or not b or len(a) != len(b):
            continue
        diff, se = paired_difference(a, b)
        rows.append({"metric": LABELS[metric], "A": names[0], "B": names[1], "images": len(a),
                     "A - B": diff, "± paired, over images": se,
                     "difference / se": diff / se if se and math.isfinite(se) and se > 0 else float("nan")})
    return pd.DataFrame(rows), how


__all__ = ["LABELS", "METHODS", "best_trial", "best_trials_table", "cell", "label", "markdown_table",
           "paired_table", "paper_table", "ranked", "rung_table", "searched_params", "test_table"]
