"""Did the search pay in this study? Its anytime curve next to random search's expectation on the same budget.

The anytime curve: the best full-fidelity validation log p(x) (a trial that ran the full budget) against the
trial-iterations spent, every trial's iterations in the order MLflow logged them. Random search's expectation
at a budget of B trial-iterations is the expected best of B // iterations full trials drawn at random from
recorded curves of the same space (benchmarks/data/synthetic_curves.csv: real trials of the synthetic preset
with every searched value drawn from its priors, trained to full length; benchmarks/surrogate.py): exact,
from the order statistics of the recorded final values. Only where such curves exist: the synthetic preset
with the recorded study's fixed settings (hidden, batch_size, steps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

RECORDED = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "synthetic_curves.csv"
MATCHED = ("hidden", "batch_size", "steps")  # settings a recorded curve must share with the study's trials


def study_curve(trials: pd.DataFrame, history: pd.DataFrame) -> pd.DataFrame:
    """Columns spent (trial-iterations) and best (best full-fidelity value so far; NaN before the first)."""
    ll = history[history["metric"] == "log_likelihood"].drop_duplicates(["run_id", "step"], keep="last")
    ll = ll.sort_values("timestamp")
    last_step = ll.groupby("run_id")["step"].transform("max")
    full = ll["run_id"].map(trials.set_index("run_id")["full_fidelity"]).fillna(False).astype(bool)
    at_end = full & (ll["step"] == last_step)
    best = ll["value"].where(at_end).cummax().ffill()
    return pd.DataFrame({"spent": np.arange(1, len(ll) + 1), "best": best.to_numpy()})


def recorded_finals(trials: pd.DataFrame, preset: str, path: Path = RECORDED) -> np.ndarray | None:
    """Final values of the recorded curves with this study's fixed settings; None where there are none."""
    if preset != "synthetic" or not path.exists() or not set(MATCHED) <= set(trials.columns):
        return None
    recorded = pd.read_csv(path)
    ours = trials[list(MATCHED)].dropna().drop_duplicates()
    if len(ours) != 1 or not set(MATCHED) <= set(recorded.columns):
        return None
    same = np.logical_and.reduce([recorded[k] == ours.iloc[0][k] for k in MATCHED])
    finals = recorded.loc[same, "ll_8"].to_numpy(float)
    return finals if len(finals) >= 20 else None


def random_search_expectation(finals: np.ndarray, budgets: np.ndarray, iterations: int) -> np.ndarray:
    """E[best of k full trials drawn with replacement from `finals`], k = budget // iterations (NaN for k = 0)."""
    v = np.sort(np.asarray(finals, float))
    n = len(v)
    i = np.arange(1, n + 1)
    out = []
    for k in np.asarray(budgets) // iterations:
        out.append(float(np.sum(v * ((i / n) ** k - ((i - 1) / n) ** k))) if k > 0 else np.nan)
    return np.asarray(out)


def anytime_figure(curve: pd.DataFrame, expected: np.ndarray | None, path: Path, n_recorded: int = 0) -> Path:
    import matplotlib.pyplot as plt

    from avb.figures import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.step(curve["spent"], curve["best"], where="post", label="this study")
    if expected is not None:
        ax.step(curve["spent"], expected, "--", where="post", color="grey",
                label=f"random search, expected ({n_recorded} recorded curves)")
    ax.set(xlabel="trial-iterations spent", ylabel="best full-fidelity log p(x) (validation)",
           title="The search against random search on the same budget")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def anytime_section(trials: pd.DataFrame, history: pd.DataFrame, info: dict, out: Path) -> tuple[str, Path | None]:
    """(the report's text, the figure) for a study; ('', None) when no trial ran the full budget."""
    curve = study_curve(trials, history)
    if curve["best"].isna().all():
        return "", None
    finals = recorded_finals(trials, info.get("preset", ""))
    iterations = int(info.get("iterations") or 0)
    expected = random_search_expectation(finals, curve["spent"].to_numpy(), iterations) \
        if finals is not None and iterations else None
    fig = anytime_figure(curve, expected, out / "anytime.png", 0 if finals is None else len(finals))
    spent, best = int(curve["spent"].iloc[-1]), float(curve["best"].iloc[-1])
    text = f"Best full-fidelity log p(x) {best:.4f} after {spent} trial-iterations."
    if expected is not None:
        text += (f" Random search's expected best on the same budget ({spent // iterations} full trials drawn "
                 f"from {len(finals)} recorded curves of this space): {expected[-1]:.4f}.")
    else:
        text += (" No recorded curves of this space with these settings, so no random-search expectation (it "
                 "exists for the synthetic preset with the recorded settings; benchmarks/surrogate.py records more).")
    return text, fig
