"""Hyperparameter importances from the study's Optuna records, on the COMPLETE full-fidelity trials only.

Optuna's evaluators read every COMPLETE trial and have no filter of their own, while an early-stopped trial's
value is a low-fidelity one (the study records those PRUNED, but a study resumed from older records may not).
So the evaluators run on an in-memory copy holding only the COMPLETE AVB trials whose user attribute
`full_fidelity` is True. VAE trials (the synthetic space's baseline branch) are left out: they have no
adversary parameters, and the evaluators only rank parameters every trial has. A field fixed with --set is
never a sampled parameter (the study records it in the user attribute `fixed`), so it is not ranked.
"""

from __future__ import annotations

import warnings

import optuna
import pandas as pd

from analysis.stores import AnalysisError, open_optuna, optuna_study

EVALUATORS = {  # Optuna's own importance evaluators; PED-ANOVA is Optuna 5's default
    "PED-ANOVA": lambda: optuna.importance.PedAnovaImportanceEvaluator(),
    "fANOVA": lambda: optuna.importance.FanovaImportanceEvaluator(seed=0),
}


def load_study(storage_url: str, study: str) -> optuna.Study:
    """The study's Optuna records (read-only checks first); AnalysisError otherwise."""
    return optuna_study(open_optuna(storage_url), study)


def full_fidelity_study(source: optuna.Study | str, study: str | None = None) -> optuna.Study:
    """An in-memory copy of the Optuna study holding only COMPLETE AVB trials with user attr full_fidelity True.
    `source`: a loaded study, or a storage URL with the study's name."""
    if isinstance(source, str):
        source = load_study(source, study)
    kept = [t for t in source.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.user_attrs.get("full_fidelity") is True and t.params.get("objective", "avb") == "avb"]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        copy = optuna.create_study(direction=source.direction, study_name=f"{source.study_name} (full fidelity)")
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(kept)
    return copy


def importances(source: optuna.Study | str, study: str | None = None) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{evaluator: {param: importance}} on the full-fidelity trials, and notes on what could not be computed."""
    ff = full_fidelity_study(source, study)
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


def log_scale_params(source: optuna.Study) -> set[str]:
    """Parameters the Optuna study sampled on a log scale."""
    trials = source.get_trials(deepcopy=False)
    return {k for t in trials for k, d in t.distributions.items() if getattr(d, "log", False)}


__all__ = ["AnalysisError", "full_fidelity_study", "importance_table", "importances", "load_study",
           "log_scale_params"]
