"""Hyperparameter importances from the study's Optuna records, on the COMPLETE full-fidelity trials only.

Optuna's evaluators read every COMPLETE trial and have no filter of their own, while an early-stopped trial's
value is a low-fidelity one (the study records those PRUNED, but a study resumed from older records may not).
So the evaluators run on an in-memory copy holding only the COMPLETE AVB trials whose user attribute
`full_fidelity` is True. Trials of another method than the study's (the synthetic preset's VAE baseline in
an AVB study) are left out: they have no adversary parameters, and the evaluators only rank parameters every
trial has. A field fixed with --set is
never a sampled parameter (the study records it in the user attribute `fixed`), so it is not ranked.
"""

from __future__ import annotations

import warnings

import numpy as np
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
            if t.user_attrs.get("full_fidelity") is True]
    kept = of_the_studys_method(kept)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        copy = optuna.create_study(direction=source.direction, study_name=f"{source.study_name} (full fidelity)")
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(widened(kept))
    return copy


def of_the_studys_method(trials: list) -> list:
    """The trials that have every parameter the study's own method searches: a baseline of another method (the
    synthetic preset's VAE in an AVB study) lacks the adversary's, and the evaluators rank only parameters every
    trial has. The study's method: the parameter set the most trials have (the largest of equally common ones)."""
    if not trials:
        return []
    sets = pd.Series([frozenset(t.params) for t in trials]).value_counts()
    common = max(sets.index[sets == sets.max()], key=len)
    return [t for t in trials if common <= set(t.params)]


def widened(trials: list) -> list:
    """The trials with each numeric distribution widened to hold every trial's value, the same for all: an
    enqueued baseline may lie outside the searched range (the paper's lr 2e-5 under a prior from 1e-4), which
    Optuna refuses to copy, and a parameter whose distribution differs between trials is not ranked."""
    common: dict = {}
    for t in trials:
        for name, dist in t.distributions.items():
            value, have = t.params[name], common.get(name, dist)
            if isinstance(have, optuna.distributions.FloatDistribution | optuna.distributions.IntDistribution):
                have = type(have)(min(have.low, value), max(have.high, value), log=have.log, step=have.step)
            common[name] = have
    return [optuna.trial.create_trial(params=t.params, distributions={k: common[k] for k in t.distributions},
                                      value=t.value, user_attrs=t.user_attrs,
                                      intermediate_values=t.intermediate_values, state=t.state) for t in trials]


def importances(source: optuna.Study | str, study: str | None = None) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{evaluator: {param: importance}} on the full-fidelity trials, and notes on what could not be computed."""
    ff = full_fidelity_study(source, study)
    n = len(ff.trials)
    if n < 2:
        return {}, [f"only {n} COMPLETE full-fidelity AVB trial(s); importances need at least 2"]
    result, notes = {}, [f"computed on {n} COMPLETE full-fidelity AVB trials"]
    if n < MIN_TRIALS_TO_RANK:
        notes.insert(0, f"only {n} full-fidelity trials: too few to rank parameters (at least {MIN_TRIALS_TO_RANK} "
                        "are needed); the table is alphabetical, and the bootstrap spread shows how far each value "
                        "moves with other trials of the same study")
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


MIN_TRIALS_TO_RANK = 20  # below this many full-fidelity trials importances are noise: shown with spread, unranked
SPREAD_DRAWS = 20  # bootstrap resamples of the trials for the spread


def importance_spread(source: optuna.Study | str, study: str | None = None,
                      draws: int = SPREAD_DRAWS) -> dict[str, float]:
    """{param: standard deviation of its PED-ANOVA importance over bootstrap resamples of the full-fidelity
    trials}: how much the ranking would move with other trials of the same study ({} under 2 trials)."""
    ff = full_fidelity_study(source, study)
    trials, rng, samples = ff.trials, np.random.default_rng(0), []
    if len(trials) < 2:
        return {}
    for _ in range(draws):
        copy = optuna.create_study(direction=ff.direction)
        copy.add_trials([trials[i] for i in rng.integers(0, len(trials), len(trials))])
        try:
            samples.append(optuna.importance.get_param_importances(copy, evaluator=EVALUATORS["PED-ANOVA"]()))
        except Exception:  # noqa: BLE001  (a resample whose values are all equal has no importances)
            continue
    params = {k for sample in samples for k in sample}
    return {k: float(np.std([sample.get(k, 0.0) for sample in samples])) for k in params} if samples else {}


def importance_table(imps: dict[str, dict[str, float]], spread: dict[str, float] | None = None,
                     trials: int | None = None) -> pd.DataFrame:
    """One row per parameter; with `spread`, a column of its bootstrap standard deviation. Ranked by the first
    evaluator unless `trials` is under MIN_TRIALS_TO_RANK (then alphabetical: the order would be noise)."""
    table = pd.DataFrame(imps).rename_axis("parameter").reset_index()
    if spread:
        table["PED-ANOVA spread (bootstrap sd)"] = table["parameter"].map(spread)
    if trials is not None and trials < MIN_TRIALS_TO_RANK:
        return table.sort_values("parameter").reset_index(drop=True)
    return table.sort_values(next(iter(imps)), ascending=False).reset_index(drop=True)


def log_scale_params(source: optuna.Study) -> set[str]:
    """Parameters the Optuna study sampled on a log scale."""
    trials = source.get_trials(deepcopy=False)
    return {k for t in trials for k, d in t.distributions.items() if getattr(d, "log", False)}


__all__ = ["MIN_TRIALS_TO_RANK", "AnalysisError", "full_fidelity_study", "importance_spread", "importance_table",
           "importances", "load_study", "log_scale_params"]
