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


def test_replayed_trial_after_a_killed_driver_leaves_optuna_alone(tmp_path):
    """Tune may restore a searcher state older than the storage and replay a trial Optuna already closed."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    searcher = FidelityAwareOptunaSearch(load_preset("synthetic").space, metric="log_likelihood", mode="max",
                                         sampler=optuna.samplers.TPESampler(seed=0), study_name="s",
                                         storage=storage, full_iterations=2)
    searcher.suggest("a")
    searcher.on_trial_result("a", {"log_likelihood": -2.0, "training_iteration": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot before the kill
    searcher.on_trial_complete("a", {"log_likelihood": -1.5, "training_iteration": 2})

    restored = FidelityAwareOptunaSearch(load_preset("synthetic").space, metric="log_likelihood", mode="max",
                                         sampler=optuna.samplers.TPESampler(seed=0), study_name="s",
                                         storage=storage, full_iterations=2)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("a", {"log_likelihood": -1.6, "training_iteration": 2})  # replayed: no error
    restored.on_trial_complete("a", {"log_likelihood": -1.4, "training_iteration": 2})
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.state == TrialState.COMPLETE and trial.value == -1.5
