"""A study as a folder with report.md and PNG figures, also logged to the study's parent run under report/.

    python -m analysis.report --study NAME                        # the stores in ./results
    python -m analysis.report --study NAME --results-dir /path/to/results
    python -m analysis.report --study NAME --tracking-uri http://127.0.0.1:5000 --out reports/NAME
        # a cluster's stores: the login (MLFLOW_TRACKING_USERNAME / _PASSWORD) and $AVB_OPTUNA_STORAGE from the
        # environment (as on the head), never in a flag (docs/security.md)

The stores are found as analysis.export finds them (--tracking-uri, $MLFLOW_TRACKING_URI, RESULTS/mlflow.db;
--optuna-storage, $AVB_OPTUNA_STORAGE, RESULTS/optuna.db); the output folder is --out, else
RESULTS/analysis/STUDY/report.

report.md holds the best trials (validation split) and the failed ones with their errors; for presets with
the paper's figures the paper's Table 1 next to the study's best VAE, AVB and AVB+AC; for image presets the
test-set evaluation (IS and AIS, ± over test images) and the paired difference between the two best methods
on the same images; hyperparameter importances (Optuna's PED-ANOVA and fANOVA on the COMPLETE
full-fidelity trials only); the search's anytime curve against random search's expectation on the same
budget (anytime.py: where recorded curves of the space exist); the figures importances.png, anytime.png,
learning_curves.png, params.png, capacity.png,
and the best trial's pictures: latent.png (synthetic set), samples.png, reconstructions.png,
interpolation.png (image sets). Every bad input is one line on stderr and exit code 2, before anything is
written; the study's records only gain the report.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import optuna
import pandas as pd

from analysis.anytime import anytime_section
from analysis.export import StudyRuns, history_frame, open_study, trials_frame
from analysis.figures import (
    PICTURES,
    TOP_CURVES,
    capacity_figure,
    importance_figure,
    learning_curves_figure,
    model_figures,
    params_figure,
)
from analysis.importances import (
    full_fidelity_study,
    importance_spread,
    importance_table,
    importances,
    load_study,
    log_scale_params,
)
from analysis.stores import (
    OneLineParser,
    add_store_flags,
    check_out_dir,
    find_stores,
    first_line,
    masked,
    run_cli,
    store_errors,
)
from analysis.tables import (
    LABELS,
    METHODS,
    TABLE1_METRICS,
    best_trial,
    best_trials_table,
    markdown_table,
    paired_table,
    paper_table,
    ranked,
    rung_table,
    searched_params,
    test_table,
)
from search_spaces import asha_settings, load_preset
from trainables import tracking

FIGURES = ("importances.png", "anytime.png", "learning_curves.png", "params.png", "capacity.png", *PICTURES)

# the names the notebook and older callers use, in one place
__all__ = ["FIGURES", "METHODS", "best_trial", "best_trials_table", "build_report", "capacity_figure",
           "full_fidelity_study", "importance_figure", "importance_table", "importances", "learning_curves_figure",
           "log_scale_params", "markdown_table", "model_figures", "paired_table", "paper_reference", "paper_table",
           "params_figure", "ranked", "reference_lines", "report", "searched_params", "test_table"]


# ----------------------------------------------------------------------------- the paper
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


# ----------------------------------------------------------------------------- markdown
def section(title: str, *parts: str) -> str:
    return "\n\n".join([f"## {title}", *[p for p in parts if p]])


def figure_md(path: Path | None, alt: str) -> str:
    return f"![{alt}]({path.name})" if path else ""


def notes_md(notes: list[str]) -> str:
    return "\n".join(f"> note: {n}" for n in notes)


def failed_table(trials: pd.DataFrame) -> pd.DataFrame:
    failed = trials[trials["failed"] | (trials["fate"] == "interrupted")]
    return failed[["trial_number", "method", "fate", "iterations", "error"]].reset_index(drop=True)


def test_section(trials: pd.DataFrame, runs: StudyRuns, paper: dict) -> str:
    """Image presets: the trials evaluated on the test set at the end, and the paired difference."""
    table = test_table(trials)
    if table.empty:
        return ""
    diff, how = paired_table(trials, runs.client)
    paper_ais = ", ".join(f"{k} {v['ais_log_likelihood']}" for k, v in paper.items() if "ais_log_likelihood" in v)
    return section(
        "Test set",
        "The best trials by validation log-likelihood, evaluated once at the end on the test split (chosen "
        "on validation, so the test figures are unbiased). ± over images is the standard error over test images "
        "(how much the figure would move on other images); ± Monte Carlo is the estimator's own error.",
        markdown_table(table),
        f"The paper's AIS figures: {paper_ais} (nats)." if paper_ais else "",
        (f"Paired difference on the same test images ({how}): A - B per image, mean and its standard error "
         "over images. |difference / se| above about 2 is a difference beyond the spread of the images.")
        if not diff.empty else "", markdown_table(diff) if not diff.empty else "",
        notes_md([how]) if diff.empty and how else "")


def estimator(trials: pd.DataFrame) -> str:
    """How the trials estimated log_likelihood (their logged eval_* params; importance sampling before those)."""
    first = trials.iloc[0] if len(trials) else {}
    if first.get("eval_estimator") == "ais":
        return (f"AIS with {first.get('eval_ais_temps')} temperatures x {first.get('eval_ais_chains')} chain(s) on "
                f"{first.get('eval_points')} validation points")
    return f"importance sampling with {first.get('eval_samples')} samples per point"


def rung_section(trials: pd.DataFrame, history: pd.DataFrame, info: dict) -> str:
    """ASHA studies: each trial's value at the first rung against its final value, and their rank correlation."""
    if info.get("scheduler") != "asha" or not info.get("iterations"):
        return ""
    grace = asha_settings(info["preset"], int(info["iterations"]))["grace_period"]
    table, rho = rung_table(trials, history, grace * int(info["steps_per_iteration"]))
    if table.empty:
        return ""
    n = int((table["fate"] == "finished").sum())
    verdict = (f"Spearman rank correlation between the rung's and the final values over the {n} trials that ran "
               f"the full budget: {rho:.2f}" if n >= 3 else f"only {n} trial(s) ran the full budget: no correlation")
    return section("ASHA's first rung against the end",
                   f"ASHA stops trials at iteration {grace} (step {grace * int(info['steps_per_iteration']):,}) "
                   "on their value there. Did that rank the trials as their final values do? " + verdict
                   + " (1: the rung ranks exactly as the end; near 0: the rung is a coin toss).", markdown_table(table))


def build_report(runs: StudyRuns, ostudy: optuna.Study, out: Path) -> str:
    """Write every figure into `out` and return report.md's text."""
    history = history_frame(runs)
    trials = trials_frame(runs, history)
    info = runs.info
    fates = trials["fate"].value_counts()
    paper = paper_reference(info["preset"])
    link = tracking.ui_link(runs.uri, runs.experiment_id)
    parts = [f"# Study {runs.name}",
             f"Preset `{info['preset']}`, {len(trials)} trials ({', '.join(f'{v} {k}' for k, v in fates.items())}), "
             f"full budget {info.get('iterations')} iterations x {info.get('steps_per_iteration')} steps, scheduler "
             f"`{info.get('scheduler')}`, sampler `{info.get('sampler')}`; the study is {info['fate']}. Values are "
             "the trials' final figures on the validation split (`log_likelihood`: nats, higher is better, "
             f"estimated by {estimator(trials)}). "
             f"MLflow: `{masked(runs.uri)}`, experiment `{runs.name}` ({link}).",
             section("Best trials", "Finished trials (the full budget) first. " + LABELS["adversary_elbo"]
                     + " is AVB's; the exact ELBO is the VAE's.", markdown_table(best_trials_table(trials)))]
    failed = failed_table(trials)
    if not failed.empty:
        parts.append(section("Trials that did not finish", "Their MLflow runs are FAILED (diverged, crashed, "
                             "lost) or KILLED (interrupted), with the reason in the tag `error`.",
                             markdown_table(failed)))
    if any(m in p for p in paper.values() for m in TABLE1_METRICS):
        parts.append(section(
            "Against the paper's Table 1",
            "Best finished trial of each method (VAE: objective vae; AVB+AC: adaptive_contrast; AVB: the rest), "
            "final values on the validation split; — where the paper or the study has none. The paper's AVB ELBO "
            "is, like the study's, the adversary's estimate.", markdown_table(paper_table(trials, paper))))
    parts.append(test_section(trials, runs, paper))

    imps, notes = importances(ostudy)
    counted = len(full_fidelity_study(ostudy).trials)
    imp_fig = importance_figure(imps, out / "importances.png") if imps else None
    parts.append(section(
        "Hyperparameter importances",
        "Optuna's evaluators on the COMPLETE trials with user attribute `full_fidelity` only (an early-stopped "
        "trial's value is a low-fidelity one). Fields fixed with `--set` are not searched, so not ranked. The "
        "spread: the standard deviation of each PED-ANOVA importance over bootstrap resamples of those trials.",
        notes_md(notes), markdown_table(importance_table(imps, importance_spread(ostudy), counted)) if imps else "",
        figure_md(imp_fig, "importances")))

    parts.append(rung_section(trials, history, info))
    text, fig = anytime_section(trials, history, info, out)
    if text:
        parts.append(section("The search against random search", text, figure_md(fig, "anytime")))
    curves = learning_curves_figure(trials, history, out / "learning_curves.png",
                                    reference=reference_lines(info["preset"]))
    parts.append(section("Learning curves", f"`log_likelihood` of the top {TOP_CURVES} trials against the "
                         "training step; dashed: not full fidelity.", figure_md(curves, "learning curves")))

    params = searched_params(trials)
    if params:
        fig = params_figure(trials, params, out / "params.png", log_scale_params(ostudy))
        parts.append(section("Log-likelihood against each searched parameter",
                             "Values the trials ran with. Filled: finished; hollow: stopped early; x: diverged.",
                             figure_md(fig, "parameters")))
    if {"adv_hidden", "adv_depth"} <= set(trials.columns) and trials["adv_hidden"].notna().any():
        fig = capacity_figure(trials, out / "capacity.png")
        parts.append(section("Adversary capacity", "Capacity is `adv_hidden x adv_depth`: hidden units of each of "
                             "the adversary's two branches (x and z).", figure_md(fig, "capacity")))

    best = best_trial(trials)
    if best is None:
        parts.append(section("The best trial's model", "No trial ran the full budget."))
    else:
        figs, notes = model_figures(runs, best, out)
        parts.append(section("The best trial's model",
                             f"Trial #{best['trial_number']} ({best['method']}, MLflow run `{best['run_id']}`), "
                             "chosen on the validation split: its pictures at its best step (the best checkpoint "
                             f"is the artifact `{tracking.CHECKPOINT_PATH}/trainer.pt`).",
                             "\n\n".join(figure_md(f, f.stem) for f in figs), notes_md(notes)))
    return "\n\n".join(p for p in parts if p) + "\n"


def report(uri: str, storage: str, study: str, out: str | Path) -> tuple[Path, bool]:
    """Write OUT/report.md and its figures, log OUT to the study's parent run under report/; returns report.md
    and whether it was logged.
    Everything is checked (the output folder, both stores, the study in each) before anything is written."""
    out = check_out_dir(Path(out))
    runs = open_study(uri, study)
    ostudy = load_study(storage, study)
    out.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:  # no stale figure from an earlier report
        (out / name).unlink(missing_ok=True)
    path = out / "report.md"
    path.write_text(build_report(runs, ostudy, out))
    try:
        runs.client.log_artifacts(runs.parent.info.run_id, str(out), artifact_path="report")
    except (OSError, *store_errors()) as err:  # a read-only store: the report stands without the copy
        print(f"warning: the report is not logged to MLflow ({first_line(err)})", file=sys.stderr)
        return path, False
    return path, True


# ----------------------------------------------------------------------------- main
def build_parser() -> OneLineParser:
    p = OneLineParser(prog="python -m analysis.report", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store_flags(p, optuna=True)
    p.add_argument("--out", help="output folder (default: RESULTS/analysis/STUDY/report)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep stderr for errors

    def work() -> None:
        stores = find_stores(args.results_dir, args.tracking_uri, args.optuna_storage)
        out = Path(args.out) if args.out else stores.out_dir(args.study, "report")
        path, logged = report(stores.tracking_uri, stores.optuna_storage, args.study, out)
        print(f"report: {path}" + ("\nlogged to the study's parent run in MLflow under report/" if logged else ""))

    return run_cli(work)


if __name__ == "__main__":
    sys.exit(main())
