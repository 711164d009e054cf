"""Optuna through Ray Tune, with every trial's fate recorded truthfully in Optuna's storage.

Ray's `OptunaSearch` tells Optuna COMPLETE with the last value for every trial
(also those ASHA stopped early and those that diverged), never reports a
trial's last iteration as an intermediate value, records the sampled value of
a field the study fixed with --set, and keeps the storage of the process that
pickled it. `StudySearch` changes exactly that:

- fates as in `trainables.tracking`: full budget COMPLETE, stopped early PRUNED
  (Optuna then takes its last intermediate value as its value), diverged or
  crashed FAIL; user attributes `tune_trial_id`, `iterations`,
  `full_fidelity`, `fate`;
- every iteration is an intermediate value, the last and the first rung's too;
  the objective is named (`set_metric_names`);
- a field fixed with --set is never suggested: the space sees its fixed value
  and the trial records it in the user attribute `fixed`;
- an enqueued baseline's method fields (objective, encoder, adaptive_contrast:
  never searched) are its own: the space sees them in its `base`, the
  trial's config carries them and its user attribute `method` records them
  (a preset's VAE baseline in an AVB study);
- after a killed driver: a trial Optuna already finished is left alone, and an
  Optuna trial asked for after Tune's last snapshot (RUNNING, unknown to the
  restored searcher) is handed out again instead of asking a new one, so the
  study holds exactly one Optuna trial per Tune trial;
- on resume it talks to the storage it was given, not to the pickled one.

`DivergenceAwareTPE` lets diverged trials steer the sampler away (TPE ignores
FAIL trials): it sees them as the worst PRUNED trials, in the "bad" group.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import pickle
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search.optuna import OptunaSearch

from trainables.tracking import TRIAL_NUMBER, Fate

logger = logging.getLogger(__name__)
NUMBER_KEY = TRIAL_NUMBER  # added to every suggested config: the Optuna trial number, the study's trial number
METHOD_FIELDS = ("objective", "encoder", "adaptive_contrast")  # a study's method: BASE's, --set's or a baseline's


class FixedFields:
    """An Optuna trial whose suggest_* return the study's fixed value (--set) for fixed names, without
    recording a distribution or a sampled value; `used` collects the fixed names the space asked for."""

    def __init__(self, trial, fixed: dict):
        self.trial, self.fixed, self.used = trial, fixed, {}

    def _suggest(self, kind: str, name: str, *args, **kwargs):
        if name in self.fixed:
            self.used[name] = self.fixed[name]
            return self.fixed[name]
        return getattr(self.trial, kind)(name, *args, **kwargs)

    def suggest_int(self, name, *args, **kwargs):
        return self._suggest("suggest_int", name, *args, **kwargs)

    def suggest_float(self, name, *args, **kwargs):
        return self._suggest("suggest_float", name, *args, **kwargs)

    def suggest_categorical(self, name, *args, **kwargs):
        return self._suggest("suggest_categorical", name, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.trial, name)


@dataclasses.dataclass(frozen=True)
class TrialNumber:
    """An Optuna trial as the searcher saves it: its number (rebind finds it again in the storage given)."""

    number: int


class StudySearch(OptunaSearch):
    def __init__(self, space: Callable, *, full_iterations: int, fixed: dict | None = None,
                 links: dict | None = None, **kwargs):
        """`links`: study user attributes that point to the study's other records (its MLflow experiment)."""
        self.full_iterations, self.fixed, self.links = full_iterations, dict(fixed or {}), dict(links or {})
        super().__init__(space, **kwargs)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, and what optuna-dashboard shows
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([self._metric])
        for key, value in self.links.items():
            self._ot_study.set_user_attr(key, value)

    # ------------------------------------------------------------------ asking
    def _suggest_from_define_by_run_func(self, func, ot_trial) -> dict:
        proxy = FixedFields(ot_trial, self.fixed)
        method = self._baseline_method(ot_trial)
        if method and isinstance(func, functools.partial) and "base" in func.keywords:
            func = functools.partial(func, base=func.keywords["base"].replace(**method))
        config = super()._suggest_from_define_by_run_func(func, proxy)
        if proxy.used:
            ot_trial.set_user_attr("fixed", proxy.used)
        if method:
            ot_trial.set_user_attr("method", method)
        return {**config, **method}

    def _baseline_method(self, ot_trial) -> dict:
        """The method fields an enqueued baseline sets (none for a trial the sampler draws)."""
        enqueued = self._ot_study._storage.get_trial(ot_trial._trial_id).system_attrs.get("fixed_params", {})
        return {k: enqueued[k] for k in METHOD_FIELDS if k in enqueued and k not in self.fixed}

    def _orphan(self) -> FrozenTrial | None:
        """An Optuna trial RUNNING in storage but known to no Tune trial of this searcher."""
        known = {t.number for t in self._ot_trials.values()}
        running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return next((t for t in running if t.number not in known), None)

    def suggest(self, trial_id: str) -> dict | None:
        if trial_id not in self._ot_trials:
            orphan = self._orphan()
            if orphan is not None:  # asked for by a driver killed before Tune's snapshot: hand it out again
                self._ot_trials[trial_id] = optuna.Trial(self._ot_study, orphan._trial_id)
        config = super().suggest(trial_id)
        if config is None:
            return None
        ot_trial = self._ot_trials[trial_id]
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        stored = self._stored(trial_id)
        if "fixed_params" in stored.system_attrs and "retry_of" not in stored.user_attrs:  # the preset's BASELINES
            ot_trial.set_user_attr("baseline", True)
        return {**config, NUMBER_KEY: ot_trial.number}

    def enqueue_retries(self) -> list[int]:
        """--retry-crashed: each crashed trial not yet retried is enqueued with its parameters, to be asked
        again as a new trial (user attribute `retry_of`); returns the crashed trials' numbers."""
        trials = self._ot_study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        crashed = [t for t in trials if t.user_attrs.get("fate") == Fate.CRASHED.value and t.number not in retried]
        for t in crashed:
            method = {k: v for k, v in t.system_attrs.get("fixed_params", {}).items() if k in METHOD_FIELDS}
            self._ot_study.enqueue_trial({**method, **t.params}, user_attrs={"retry_of": t.number})
        return [t.number for t in crashed]

    # ------------------------------------------------------------------ telling
    def _stored(self, trial_id: str) -> FrozenTrial:
        return self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id)

    def _report(self, trial_id: str, result: dict) -> None:
        """Report the iteration's value as an intermediate value (once per step; non-finite values never)."""
        value, step = result.get(self.metric), result.get("training_iteration")
        if value is None or step is None or not math.isfinite(value):
            return
        stored = self._stored(trial_id)
        if stored.state.is_finished() or step in stored.intermediate_values:
            return  # Tune replays iterations a killed driver's snapshot did not hold
        self._ot_trials[trial_id].report(float(value), int(step))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._ot_trials and trial_id not in self._completed_trials:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._completed_trials.add(trial_id)
        if self._stored(trial_id).state.is_finished():
            return  # told before a killed driver's last snapshot
        result = result or {}
        if not error and not result:
            return  # removed before it ran (Tune stops pending trials when interrupted): stays RUNNING, resumable
        if not error:
            self._report(trial_id, result)  # Tune hands the last iteration only to on_trial_complete
        reported = self._stored(trial_id).intermediate_values  # Tune hands a crashed trial's end no result
        iterations = int(result.get("training_iteration", max(reported, default=0)))
        if error:
            fate = Fate.CRASHED
        elif result.get("diverged"):
            fate = Fate.DIVERGED
        else:
            fate = Fate.FINISHED if iterations >= self.full_iterations else Fate.STOPPED_EARLY
        ot_trial = self._ot_trials[trial_id]
        for key, value in {"iterations": iterations, "full_fidelity": fate is Fate.FINISHED,
                           "fate": fate.value}.items():
            ot_trial.set_user_attr(key, value)
        state = {Fate.FINISHED: TrialState.COMPLETE, Fate.STOPPED_EARLY: TrialState.PRUNED}.get(fate, TrialState.FAIL)
        value = result.get(self.metric) if fate is Fate.FINISHED else None
        try:
            self._ot_study.tell(ot_trial, value, state=state)
        except Exception as exc:  # noqa: BLE001  (Optuna refuses e.g. a trial told twice; keep the study going)
            logger.warning("Optuna refused the result of %s: %s", trial_id, exc)

    # ------------------------------------------------------------------ saving, resuming
    def __getstate__(self) -> dict:
        """What Tune pickles (tuner.pkl, searcher-state-*.pkl): no storage, whose URL holds the database's
        password; trials by number. `rebind` attaches the storage again."""
        state = self.__dict__.copy()
        state.update(_storage=None, _ot_study=None,
                     _ot_trials={tid: TrialNumber(t.number) for tid, t in self._ot_trials.items()})
        return state

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__getstate__(), f)

    def rebind(self, storage: optuna.storages.BaseStorage) -> None:
        """Talk to `storage` (the one given on --resume), not to the one pickled with the searcher."""
        self._storage = storage
        study = optuna.load_study(study_name=self._study_name, storage=storage, sampler=self._sampler,
                                  pruner=optuna.pruners.NopPruner())
        numbers = {t.number: t._trial_id for t in study.get_trials(deepcopy=False)}
        self._ot_trials = {tid: optuna.Trial(study, numbers[t.number]) for tid, t in self._ot_trials.items()
                           if t.number in numbers}
        self._ot_study = study

    def restore(self, checkpoint_path: str) -> None:
        storage = self._storage  # set by the driver on --resume (see study.tuner.restore_tuner)
        super().restore(checkpoint_path)
        self.rebind(storage)


class _DivergedAsPruned:
    """A view of a study in which FAIL trials tagged `fate=diverged` are PRUNED trials without values."""

    def __init__(self, study: optuna.Study):
        self._study = study

    def _get_trials(self, deepcopy=False, states=None, use_cache=False):
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if states is None or TrialState.PRUNED not in states:
            return trials
        failed = self._study._get_trials(deepcopy=False, states=(TrialState.FAIL,), use_cache=use_cache)
        diverged = [optuna.trial.create_trial(state=TrialState.PRUNED, params=t.params,
                                              distributions=t.distributions, user_attrs=t.user_attrs,
                                              system_attrs=t.system_attrs)
                    for t in failed if t.user_attrs.get("fate") == Fate.DIVERGED.value]
        for copy, original in zip(diverged, [t for t in failed if t.user_attrs.get("fate") == Fate.DIVERGED.value]):
            copy.number = original.number
        return sorted(trials + diverged, key=lambda t: t.number)

    def __getattr__(self, name):
        return getattr(self._study, name)


class DivergenceAwareTPE(optuna.samplers.TPESampler):
    """TPE that counts a diverged trial as an observation in the bad group (the worst of the PRUNED ones):
    Optuna's TPE ignores FAIL trials, so without this a region that diverges keeps being proposed.

    It models after 4 finished trials, not Optuna's 10: its first 10 proposals are exactly RandomSampler(seed)'s,
    so with 10 a study of 8 trials never leaves random search (docs/search.md)."""

    def __init__(self, *, n_startup_trials: int = 4, **kwargs):
        super().__init__(n_startup_trials=n_startup_trials, **kwargs)

    def sample_relative(self, study, trial, search_space):
        return super().sample_relative(_DivergedAsPruned(study), trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return super().sample_independent(_DivergedAsPruned(study), trial, param_name, param_distribution)


SAMPLERS = {"tpe": DivergenceAwareTPE, "random": optuna.samplers.RandomSampler}
