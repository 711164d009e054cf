"""A restored study makes its new trials where this run keeps its results, not where the study began."""

from __future__ import annotations

import copy
from pathlib import Path

from ray.train._internal.storage import get_fs_and_path
from ray.tune.search import SearchGenerator


class ResumedSearch(SearchGenerator):
    """Tune's SearchGenerator with three changes on restore: more trials when crashed ones are retried
    (--retry-crashed), no concurrency slot held by a crashed trial whose end Tune's saved state lost
    (study/tune_state.py), and new trials made here. Ray 2.60 (pinned) restores the pickled Experiment, whose
    StorageContext is the first run's, and builds every new trial from it: a study resumed from a copy, or
    under another --storage-path, made its new trials' folders and checkpoints in the original's
    (tests/test_resume.py). Its storage is pointed here the way Tune re-points the restored trials
    (TuneController._restore_trials)."""

    def __init__(self, searcher, storage_path: str, name: str, retries: int = 0, crashed: frozenset[str] = frozenset()):
        """`retries`: trials to ask for beyond the study's --num-trials (--retry-crashed); `crashed`: Tune ids
        of crashed trials that Tune's saved state called unfinished."""
        super().__init__(searcher)
        self._storage_path, self._name, self._retries, self._crashed = storage_path, name, retries, crashed

    def set_state(self, state: dict) -> None:
        super().set_state(state)  # after the wrapped ConcurrencyLimiter's own (SearchGenerator.restore_from_dir)
        limiter = self.searcher
        for trial_id in self._crashed & limiter.live_trials:  # Tune skips the trial: nothing else frees its slot
            limiter.live_trials.remove(trial_id)
            limiter.num_unfinished_live_trials -= 1
        if self._retries:
            self._total_samples += self._retries
            self._finished = False
        storage = copy.copy(self._experiment.spec["storage"])
        filesystem, path = get_fs_and_path(self._storage_path)
        storage.storage_filesystem, storage.storage_fs_path = filesystem, Path(path).as_posix()
        storage.experiment_dir_name = self._name
        self._experiment.storage = self._experiment.spec["storage"] = storage
