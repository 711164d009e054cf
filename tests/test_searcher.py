"""Trials ASHA stopped early must not count as full-fidelity results in Optuna."""

import optuna
from optuna.trial import TrialState

from search_spaces import load_preset
from study.searcher import FidelityAwareOptunaSearch


def test_early_stopped_diverged_and_full_trials_get_their_own_states():
    storage = optuna.storages.InMemoryStorage()
    searcher = FidelityAwareOptunaSearch(load_preset("synthetic").space, metric="log_likelihood", mode="max",
                                         sampler=optuna.samplers.TPESampler(seed=0), study_name="s",
                                         storage=storage, full_iterations=4)
    for trial_id in ("early", "full", "diverged", "crashed"):
        assert "lr" in searcher.suggest(trial_id)
        searcher.on_trial_result(trial_id, {"log_likelihood": -2.0, "training_iteration": 1})
    searcher.on_trial_complete("early", {"log_likelihood": -1.40, "training_iteration": 2})  # better, but low fidelity
    searcher.on_trial_complete("full", {"log_likelihood": -1.45, "training_iteration": 4})
    searcher.on_trial_complete("diverged", {"log_likelihood": float("-inf"), "training_iteration": 3,
                                            "diverged": True})
    searcher.on_trial_complete("crashed", None, error=True)

    study = optuna.load_study(study_name="s", storage=storage)
    states = {t.user_attrs["tune_trial_id"]: t.state for t in study.trials}
    assert states == {"early": TrialState.PRUNED, "full": TrialState.COMPLETE, "diverged": TrialState.FAIL,
                      "crashed": TrialState.FAIL}
    assert study.best_trial.user_attrs["tune_trial_id"] == "full"
    assert study.best_trial.user_attrs["full_fidelity"] is True
    assert study.trials[0].intermediate_values == {1: -2.0}
