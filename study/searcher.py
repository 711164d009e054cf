"""Optuna through Ray Tune, with the trial's fate recorded honestly in Optuna's storage.

Ray's `OptunaSearch` tells Optuna COMPLETE with the last value for every trial,
also those ASHA stopped early (a low-fidelity value) and those that diverged.
Here a trial that stopped before `full_iterations` is told PRUNED (Optuna's own
state for early-stopped trials; its intermediate values are already reported
per iteration), a diverged trial FAIL, and each Optuna trial carries user
attributes `tune_trial_id`, `iterations`, `full_fidelity` and `diverged`. So
`study.best_trial`, TPE and `optuna.importance` only see full-fidelity results.
"""

from __future__ import annotations

import logging
import math

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

logger = logging.getLogger(__name__)


class FidelityAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, full_iterations: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.full_iterations = full_iterations

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if config is not None:
            self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return config

    def _finished_in_storage(self, trial_id: str) -> bool:
        """True when Optuna already holds this trial's end: after a killed driver, the searcher state Tune
        restores can be older than the storage, and Tune replays the trial's last iterations."""
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None:
            return False
        return self._ot_study.get_trials(deepcopy=False)[ot_trial.number].state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if result.get("diverged") or not math.isfinite(result.get(self.metric, math.nan)):
            return  # nothing to report: the trial ends as FAIL
        if self._finished_in_storage(trial_id):
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        if self._finished_in_storage(trial_id):
            self._completed_trials.add(trial_id)
            return
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        iterations = int(result.get("training_iteration", 0))
        diverged = bool(result.get("diverged", False))
        full = iterations >= self.full_iterations and not diverged and not error
        for key, value in {"iterations": iterations, "full_fidelity": full, "diverged": diverged}.items():
            ot_trial.set_user_attr(key, value)
        if error or diverged:
            state, value = TrialState.FAIL, None
        elif not full:
            state, value = TrialState.PRUNED, None
        else:
            state, value = TrialState.COMPLETE, result.get(self.metric)
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # noqa: BLE001  (Optuna refuses e.g. a trial told twice; keep the study going)
            logger.warning("Optuna refused the result of %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)
