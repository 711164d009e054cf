"""A study as a folder with report.md and PNG figures, also logged to the study's parent run under report/.

    python -m analysis.report --study NAME          # reads results/mlflow.db and results/optuna.db
    python -m analysis.report --study NAME --tracking-uri http://HEAD_IP:5000 \\
        --optuna-storage sqlite:////abs/results/optuna.db --out reports/NAME

report.md holds the best trials; for the synthetic preset the paper's Table 1
next to the study's best VAE, AVB and AVB+AC; hyperparameter importances
(Optuna's PED-ANOVA and fANOVA on the COMPLETE full-fidelity trials only) and
the figures importances.png, learning_curves.png, params.png, capacity.png,
and, from the best trial's checkpoint, latent.png (synthetic set) or
samples.png, reconstructions.png, interpolation.png (image sets).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.export import AnalysisError, StudyRuns, history_frame, open_study, resolve_uri, trials_frame  # noqa: E402
from avb.figures import save_figure  # noqa: E402
from search_spaces import load_preset  # noqa: E402

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
DEFAULT_OPTUNA_STORAGE = "sqlite:///results/optuna.db"
METHODS = ("VAE", "AVB", "AVB+AC")
TABLE1_METRICS = ("log_likelihood", "reconstruction_error", "elbo", "kl_qz_pz")
BEST_ROWS = 10  # rows of the best-trials table
TOP_CURVES = 5  # trials in the learning-curve figure
FIGURES = ("importances.png", "learning_curves.png", "params.png", "capacity.png", "latent.png", "samples.png",
           "reconstructions.png", "interpolation.png")
FATE_STYLE = {  # how each kind of trial is drawn in the scatter plots
    "full fidelity": {"marker": "o", "color": "C0"},
    "stopped early": {"marker": "o", "facecolors": "none", "edgecolors": "C1"},
    "running": {"marker": "^", "facecolors": "none", "edgecolors": "C2"},
    "diverged": {"marker": "x", "color": "C3"},
}
EVALUATORS = {  # Optuna's own importance evaluators; PED-ANOVA is Optuna 5's default
    "PED-ANOVA": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
    "fANOVA": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
}


# ----------------------------------------------------------------------------- tables
def fate(trials: pd.DataFrame) -> pd.Series:
    """'full fidelity', 'stopped early', 'running' or 'diverged' per trial."""
    out = pd.Series("stopped early", index=trials.index)
    out[trials["status"] == "RUNNING"] = "running"
    out[trials["full_fidelity"]] = "full fidelity"
    out[trials["diverged"]] = "diverged"
    return out


def ranked(trials: pd.DataFrame) -> pd.DataFrame:
    """Full-fidelity trials first, each group by final log_likelihood, best first."""
    return trials.sort_values(["full_fidelity", "final_log_likelihood"], ascending=False, na_position="last")


def best_trial(trials: pd.DataFrame, method: str | None = None) -> pd.Series | None:
    """The full-fidelity trial (of `method`, if given) with the highest final log_likelihood."""
    pool = trials[trials["full_fidelity"] & trials["final_log_likelihood"].notna()]
    if method is not None:
        pool = pool[pool["method"] == method]
    return None if pool.empty else pool.loc[pool["final_log_likelihood"].idxmax()]


def searched_params(trials: pd.DataFrame) -> list[str]:
    """Parameters the study searched (the trial runs' `searched` tag), as logged columns."""
    names = {name for tag in trials["searched"] for name in tag.split(",") if name}
    return sorted(name for name in names if name in trials.columns)


def best_trials_table(trials: pd.DataFrame, n: int = BEST_ROWS) -> pd.DataFrame:
    cols = ["trial_id", "method", "fate", "iterations", "final_log_likelihood", "final_log_likelihood_se",
            "best_log_likelihood", "final_ais_log_likelihood", *searched_params(trials)]
    table = ranked(trials).assign(fate=fate(trials)).head(n)
    return table[[c for c in cols if c in table.columns]].reset_index(drop=True)


def paper_table(trials: pd.DataFrame, paper: dict) -> pd.DataFrame:
    """The paper's figures (e.g. search_spaces.synthetic.PAPER) next to the study's best trial per method."""
    columns = {f"paper {name}": {k: paper[name].get(k) for k in TABLE1_METRICS} for name in paper}
    for method in METHODS:
        best = best_trial(trials, method)
        label = f"study {method}" + (f" ({best['trial_id']})" if best is not None else "")
        columns[label] = {k: None if best is None else best.get(f"final_{k}") for k in TABLE1_METRICS}
    return pd.DataFrame(columns).rename_axis("metric").reset_index()


def cell(value) -> str:
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "—"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4g}"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- importances
def full_fidelity_study(storage: str, study: str) -> optuna.Study:
    """An in-memory copy of the Optuna study holding only COMPLETE AVB trials with user attr full_fidelity True.

    Optuna's evaluators read every COMPLETE trial and have no filter of their own.
    VAE trials (the synthetic space's baseline branch) are left out: they have no
    adversary parameters, and the evaluators only rank parameters every trial has.
    """
    storage = resolve_uri(storage, "Optuna storage", "--optuna-storage")
    try:
        source = optuna.load_study(study_name=study, storage=storage)
    except KeyError as err:
        raise AnalysisError(f"Optuna storage {storage} has no study {study!r}; pass --optuna-storage") from err
    kept = [t for t in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("full_fidelity") is True and t.params.get("objective", "avb") == "avb"]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        copy = optuna.create_study(direction=source.direction, study_name=f"{study} (full fidelity)")
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(kept)
    return copy


def importances(storage: str, study: str) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{evaluator: {param: importance}} on the full-fidelity trials, and notes on what could not be computed."""
    try:
        ff = full_fidelity_study(storage, study)
    except AnalysisError as err:
        return {}, [str(err)]
    n = len(ff.trials)
    if n < 2:
        return {}, [f"only {n} COMPLETE full-fidelity AVB trial(s); importances need at least 2"]
    result, notes = {}, [f"computed on {n} COMPLETE full-fidelity AVB trials"]
    for name, make in EVALUATORS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values = optuna.importance.get_param_importances(ff, evaluator=make())
                result[name] = {k: float(v) for k, v in values.items()}
            except Exception as err:  # noqa: BLE001  (an evaluator that cannot cope is reported, not fatal)
                notes.append(f"{name} failed: {err}")
        notes += [f"{name}: {w.message}" for w in caught]
    return result, notes


def importance_table(imps: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame(imps).sort_values(next(iter(imps)), ascending=False).rename_axis("parameter").reset_index()


# ----------------------------------------------------------------------------- figures
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
                label=f"{t['trial_id']} {t['method']} ({t['final_log_likelihood']:.3f})")
    for name, value in (reference or {}).items():
        ax.axhline(value, color="grey", ls=":", lw=1)
        ax.annotate(name, (0, value), xycoords=("axes fraction", "data"), fontsize=7, color="grey", va="bottom")
    ax.set(xlabel="training step", ylabel="log_likelihood (nats)", title=f"learning curves, top {top} trials")
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
    fates = fate(trials)
    for name, style in FATE_STYLE.items():
        mask = fates == name
        if mask.any():
            ax.scatter(x[mask], trials.loc[mask, "final_log_likelihood"], label=name, s=25, **style)


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
            if name in log_params and (values > 0).all():
                log_x(ax, values)
        else:  # categories (bools, strings) at positions 0, 1, ...
            cats = sorted(values.astype(str).unique())
            scatter_by_fate(ax, trials, values.astype(str).map(cats.index))
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
    avb = trials[trials["objective"] != "vae"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    capacity = avb["adv_hidden"] * avb["adv_depth"]
    scatter_by_fate(ax, avb, capacity)
    log_x(ax, capacity)
    ax.set(xlabel="adversary hidden units per branch, adv_hidden × adv_depth (log)",
           ylabel="final log_likelihood", title="adversary capacity")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def model_figures(runs: StudyRuns, best: pd.Series, out: Path) -> tuple[list[Path], list[str]]:
    """Pictures from the best trial's checkpoint (MLflow artifact best/trainer.pt), and notes:
    `avb.figures.save_pictures` on the trial's evaluation points (latent space; samples,
    reconstructions and interpolations for image sets)."""
    from avb import checkpoint, figures
    from avb.data import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        local = runs.client.download_artifacts(best["run_id"], f"best/{checkpoint.FILENAME}", tmp)
        trainer = checkpoint.load(local, "cpu")
    title = f"best trial {best['trial_id']} ({best['method']}), step {trainer.step_count}"
    try:
        x = load_dataset(trainer.cfg, "cpu").eval_batch(min(trainer.cfg.eval_points, 32))
    except Exception as err:  # noqa: BLE001  (the data set may not be on this machine; samples need none)
        return ([figures.samples_figure(trainer, out / "samples.png", title=f"samples, {title}")],
                [f"only samples: {trainer.cfg.dataset} is not loadable here ({err})"])
    return figures.save_pictures(trainer, x, out, title=title), []


def log_scale_params(storage: str, study: str) -> set[str]:
    """Parameters the Optuna study sampled on a log scale (empty when the storage cannot be read)."""
    try:
        trials = optuna.load_study(study_name=study, storage=resolve_uri(storage)).get_trials(deepcopy=False)
    except (AnalysisError, KeyError):
        return set()
    return {k for t in trials for k, d in t.distributions.items() if getattr(d, "log", False)}


# ----------------------------------------------------------------------------- the report
def paper_reference(preset: str) -> dict:
    """The paper's figures for the preset ({} when the preset has none)."""
    try:
        return dict(getattr(load_preset(preset), "PAPER", {}))
    except ValueError:
        return {}


def reference_lines(preset: str) -> dict[str, float]:
    """log_likelihood values to draw for comparison: the paper's, and the optimum -log 4 of the synthetic set."""
    lines = {f"paper {k}": v["log_likelihood"] for k, v in paper_reference(preset).items() if "log_likelihood" in v}
    if preset == "synthetic":
        lines["optimum -log 4"] = -math.log(4)
    return lines


def section(title: str, *parts: str) -> str:
    return "\n\n".join([f"## {title}", *[p for p in parts if p]])


def figure_md(path: Path | None, alt: str) -> str:
    return f"![{alt}]({path.name})" if path else ""


def notes_md(notes: list[str]) -> str:
    return "\n".join(f"> note: {n}" for n in notes)


def build_report(runs: StudyRuns, storage: str, out: Path) -> str:
    """Write every figure into `out` and return report.md's text."""
    history = history_frame(runs)
    trials = trials_frame(runs, history)
    info = runs.info
    fates = fate(trials).value_counts()
    paper = paper_reference(info["preset"])
    parts = [f"# Study {runs.name}",
             f"Preset `{info['preset']}`, {len(trials)} trials ({', '.join(f'{v} {k}' for k, v in fates.items())}), "
             f"full budget {info['iterations']} iterations x {info['steps_per_iteration']} steps, scheduler "
             f"`{info['scheduler']}`. Values are the trials' final `log_likelihood` (nats, higher is better). "
             f"MLflow: `{runs.uri}`, experiment `{runs.name}`.",
             section("Best trials", markdown_table(best_trials_table(trials)))]

    if info["preset"] == "synthetic":
        parts.append(section(
            "Against the paper's Table 1",
            "Best full-fidelity trial of each method (VAE: objective vae; AVB+AC: adaptive_contrast; "
            "AVB: the rest), final values; — where the paper or the study has none.",
            markdown_table(paper_table(trials, paper))))

    imps, notes = importances(storage, runs.name)
    imp_fig = importance_figure(imps, out / "importances.png") if imps else None
    parts.append(section(
        "Hyperparameter importances",
        "Optuna's evaluators on the COMPLETE trials with user attribute `full_fidelity` only "
        "(an early-stopped trial's value is a low-fidelity one). The values are Optuna's sampled parameters; "
        "a parameter fixed with `--set` still shows its sampled value there.",
        markdown_table(importance_table(imps)) if imps else "", figure_md(imp_fig, "importances"),
        notes_md(notes)))

    curves = learning_curves_figure(trials, history, out / "learning_curves.png",
                                    reference=reference_lines(info["preset"]))
    parts.append(section("Learning curves", f"`log_likelihood` of the top {TOP_CURVES} trials against the "
                         "training step; dashed: not full fidelity.", figure_md(curves, "learning curves")))

    params = searched_params(trials)
    if params:
        fig = params_figure(trials, params, out / "params.png", log_scale_params(storage, runs.name))
        parts.append(section("Log-likelihood against each searched parameter",
                             "Values the trials ran with (a parameter fixed with `--set` is constant here). "
                             "Filled: full fidelity; hollow: stopped early; x: diverged.",
                             figure_md(fig, "parameters")))
    if {"adv_hidden", "adv_depth"} <= set(trials.columns) and (trials["objective"] != "vae").any():
        fig = capacity_figure(trials, out / "capacity.png")
        parts.append(section("Adversary capacity", "Capacity is `adv_hidden x adv_depth`: hidden units of each of "
                             "the adversary's two branches (x and z).", figure_md(fig, "capacity")))

    best = best_trial(trials)
    if best is None:
        parts.append(section("The best trial's model", "No trial reached full fidelity."))
    else:
        figs, notes = model_figures(runs, best, out)
        parts.append(section("The best trial's model",
                             f"Trial `{best['trial_id']}` ({best['method']}, MLflow run `{best['run_id']}`), "
                             "from its best checkpoint (artifact `best/trainer.pt`).",
                             "\n\n".join(figure_md(f, f.stem) for f in figs), notes_md(notes)))
    return "\n\n".join(parts) + "\n"


def report(uri: str, storage: str, study: str, out: str | Path) -> Path:
    """Write OUT/report.md and its figures, log OUT to the study's parent run under report/; returns report.md."""
    runs = open_study(uri, study)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:  # no stale figure from an earlier report
        (out / name).unlink(missing_ok=True)
    path = out / "report.md"
    path.write_text(build_report(runs, storage, out))
    runs.client.log_artifacts(runs.parent.info.run_id, str(out), artifact_path="report")
    return path


# ----------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                   help=f"MLflow tracking URI, SQLite file or server (default: {DEFAULT_TRACKING_URI}, made absolute)")
    p.add_argument("--optuna-storage", default=DEFAULT_OPTUNA_STORAGE,
                   help=f"Optuna storage URL (default: {DEFAULT_OPTUNA_STORAGE}, made absolute)")
    p.add_argument("--study", required=True, help="the study's name (MLflow experiment and Optuna study)")
    p.add_argument("--out", help="output folder (default: results/analysis/STUDY/report)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out or f"results/analysis/{args.study}/report").resolve()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr for errors
    try:
        path = report(args.tracking_uri, args.optuna_storage, args.study, out)
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {path}\nlogged to the study's parent run in MLflow under report/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
