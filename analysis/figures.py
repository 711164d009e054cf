"""The report's figures, from export's tables: importances, learning curves, log-likelihood against each searched
parameter and against the adversary's size, and pictures of the best trial's model."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.importances import importance_table  # noqa: E402
from analysis.tables import ranked  # noqa: E402
from avb.figures import save_figure  # noqa: E402
from trainables import tracking  # noqa: E402

TOP_CURVES = 5  # trials in the learning-curve figure
PICTURES = ("latent.png", "samples.png", "reconstructions.png", "interpolation.png")  # a trial's own pictures
FATE_STYLE = {  # how each fate is drawn in the scatter plots (crashed and lost trials rarely have a value)
    "finished": {"marker": "o", "color": "C0"},
    "stopped_early": {"marker": "o", "facecolors": "none", "edgecolors": "C1"},
    "running": {"marker": "^", "facecolors": "none", "edgecolors": "C2"},
    "interrupted": {"marker": "^", "facecolors": "none", "edgecolors": "C4"},
    "diverged": {"marker": "x", "color": "C3"},
    "crashed": {"marker": "x", "color": "grey"},
    "lost": {"marker": "x", "color": "grey"},
}


def importance_figure(imps: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Horizontal bars, one per parameter and evaluator."""
    table = importance_table(imps).iloc[::-1]
    y = np.arange(len(table))
    height = 0.8 / len(imps)
    fig, ax = plt.subplots(figsize=(6, 1 + 0.4 * len(table)))
    for i, name in enumerate(imps):
        ax.barh(y + (i - (len(imps) - 1) / 2) * height, table[name], height, label=name)
    ax.set(yticks=y, yticklabels=table["parameter"], xlabel="importance (normalised to sum 1)",
           title="hyperparameter importance (full-fidelity trials)")
    ax.legend()
    return save_figure(fig, path)


def learning_curves_figure(trials: pd.DataFrame, history: pd.DataFrame, path: str | Path, top: int = TOP_CURVES,
                           reference: dict[str, float] | None = None) -> Path:
    """log_likelihood against training step for the `top` best trials (dashed: not full fidelity)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ll = history[history["metric"] == "log_likelihood"]
    for _, t in ranked(trials).head(top).iterrows():
        h = ll[ll["run_id"] == t["run_id"]].sort_values("step")
        ax.plot(h["step"], h["value"], marker=".", ls="-" if t["full_fidelity"] else "--",
                label=f"#{t['trial_number']} {t['method']} ({t['final_log_likelihood']:.3f})")
    for name, value in (reference or {}).items():
        ax.axhline(value, color="grey", ls=":", lw=1)
        ax.annotate(name, (0, value), xycoords=("axes fraction", "data"), fontsize=7, color="grey", va="bottom")
    ax.set(xlabel="training step", ylabel="log_likelihood (nats, validation)", title=f"learning curves, top {top}")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def log_x(ax: plt.Axes, values: pd.Series, most: int = 5) -> None:
    """Log x axis with round ticks (1, 2, 5 x 10^k inside the data's range, thinned to `most`), labelled plainly."""
    lo, hi = float(values.min()), float(values.max())
    decades = np.arange(np.floor(np.log10(lo)), np.ceil(np.log10(hi)) + 1)
    for subs in ((1, 2, 5), (1, 3), (1,)):
        ticks = [s * 10**e for e in decades for s in subs if lo <= s * 10**e <= hi]
        if len(ticks) <= most:
            break
    if len(ticks) < 2:
        ticks = list(np.geomspace(lo, hi, 3)) if hi > lo else [lo]
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks], rotation=30, fontsize=7)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def scatter_by_fate(ax: plt.Axes, trials: pd.DataFrame, x: pd.Series) -> None:
    for fate, style in FATE_STYLE.items():
        mask = (trials["fate"] == fate) & x.notna()
        if mask.any():
            ax.scatter(x[mask].astype(float), trials.loc[mask, "final_log_likelihood"], label=fate.replace("_", " "),
                       s=25, **style)


def params_figure(trials: pd.DataFrame, params: list[str], path: str | Path,
                  log_params: set[str] | None = None) -> Path:
    """Final log_likelihood against each parameter; log x for learning rates and for `log_params`."""
    log_params = set(log_params or ()) | {p for p in params if p.endswith("lr")}
    ncols = min(4, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.8 * nrows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, params):
        values = trials[name]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            scatter_by_fate(ax, trials, values)
            if name in log_params and (values.dropna() > 0).all() and values.notna().any():
                log_x(ax, values.dropna().astype(float))
        else:  # categories (bools, strings) at positions 0, 1, ...; a trial without the param is left out
            present = values.notna()
            cats = sorted(values[present].astype(str).unique())
            positions = values[present].astype(str).map(cats.index).reindex(values.index)
            scatter_by_fate(ax, trials, positions)
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        ax.set_xlabel(name + (" (log)" if ax.get_xscale() == "log" else ""))
    for ax in axes[:, 0]:
        ax.set_ylabel("final log_likelihood")
    for ax in axes.flat[len(params):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    return save_figure(fig, path)


def capacity_figure(trials: pd.DataFrame, path: str | Path) -> Path:
    """Final log_likelihood against the adversary's size, adv_hidden x adv_depth (AVB trials; a VAE has none)."""
    avb = trials[trials["method"] != "VAE"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    capacity = (avb["adv_hidden"] * avb["adv_depth"]).astype(float)
    scatter_by_fate(ax, avb, capacity)
    log_x(ax, capacity.dropna())
    ax.set(xlabel="adversary hidden units per branch, adv_hidden × adv_depth (log)",
           ylabel="final log_likelihood", title="adversary capacity")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def model_figures(runs, best: pd.Series, out: Path, from_checkpoint: bool = False) -> tuple[list[Path], list[str]]:
    """Pictures of the best trial's model, and notes. The trial's own pictures (drawn at its best step, at its
    run's top level) are copied; a trial without them, or `from_checkpoint`, is drawn from its best checkpoint
    (artifact checkpoint/trainer.pt) with `avb.figures.save_pictures` on its evaluation points."""
    client, run_id = runs.client, best["run_id"]
    if not from_checkpoint:
        logged = {a.path for a in client.list_artifacts(run_id)}
        copied = [Path(client.download_artifacts(run_id, name, str(out))) for name in PICTURES if name in logged]
        if copied:
            return copied, []
    from avb import checkpoint, figures
    from avb.data import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, f"{tracking.CHECKPOINT_PATH}/{checkpoint.FILENAME}", tmp)
            trainer = checkpoint.load(local, "cpu")
        except Exception as err:  # noqa: BLE001  (no checkpoint, or one this version cannot read)
            return [], [f"no pictures: the trial has none logged and its checkpoint cannot be loaded ({err})"]
    title = f"best trial #{best['trial_number']} ({best['method']}), step {trainer.step_count}"
    try:
        x = load_dataset(trainer.cfg, "cpu").eval_batch(min(trainer.cfg.eval_points, 32), "valid")
    except Exception as err:  # noqa: BLE001  (the data set may not be on this machine; samples need none)
        return ([figures.samples_figure(trainer, out / "samples.png", title=f"samples, {title}")],
                [f"only samples: {trainer.cfg.dataset} is not loadable here ({err})"])
    return figures.save_pictures(trainer, x, out, title=title), []


__all__ = ["FATE_STYLE", "PICTURES", "capacity_figure", "importance_figure", "learning_curves_figure", "log_x",
           "model_figures", "params_figure", "scatter_by_fate"]
