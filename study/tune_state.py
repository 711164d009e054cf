"""Tune's saved trial states made to agree with the study's own records before a restore.

Ray 2.60 (pinned) can save a crashed trial as RUNNING. When a trial's actor dies (kill -9, a node's OOM
killer), Tune handles the actor's death before the task's failure, so the trial is no longer tied to an actor
and TuneController._schedule_trial_stop returns before marking it for the next state save. Unless a result
since Tune's last save had marked it already, every later save, the final one included, keeps its old record:
RUNNING, no error file named. `Tuner.restore(resume_unfinished=True)` then resumed the crashed trial from its
last checkpoint, beside its retry (--retry-crashed), and told Optuna a result for a trial it had recorded as
failed. A driver killed right after a crash leaves the same state, and its saved ConcurrencyLimiter still counts
the trial as live (ResumedSearch frees that slot).

The study records a crash itself (Optuna state FAIL, user attribute fate=crashed, written when Tune reports the
error), so before a restore every unfinished trial those records call crashed is saved as ERROR here, naming
its error file (written if Tune's is missing), and Tune skips it as it skips every crashed trial
(resume_errored=False).
"""

from __future__ import annotations

import json

import optuna
import pyarrow.fs
from ray.train._internal.storage import get_fs_and_path
from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint

from study.settings import StudySettings
from trainables import tracking

ERROR_TXT, ERROR_PKL = "error.txt", "error.pkl"  # Tune's names (ray.tune.experiment.trial)
UNFINISHED = ("RUNNING", "PENDING", "PAUSED")  # what Tune resumes with resume_unfinished=True


def crashed_numbers(settings: StudySettings) -> set[int]:
    """Optuna numbers of the trials the study recorded as crashed."""
    study = optuna.load_study(study_name=settings.study_name, storage=settings.optuna_storage)
    return {t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
            if t.user_attrs.get(tracking.FATE) == tracking.Fate.CRASHED.value}


def exists(fs: pyarrow.fs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write(fs: pyarrow.fs.FileSystem, path: str, text: str) -> None:
    """Written beside, then moved over: a reader never sees half a file."""
    with fs.open_output_stream(path + ".tmp") as out:
        out.write(text.encode())
    fs.move(path + ".tmp", path)


def mark_crashed(trial: dict, meta: dict, fs: pyarrow.fs.FileSystem, experiment: str) -> None:
    """One saved trial as ERROR, with the error file Tune reads for the study's summary."""
    trial["status"] = "ERROR"
    folder = f"{experiment}/{trial['relative_logdir']}"
    if not exists(fs, f"{folder}/{ERROR_TXT}"):
        write(fs, f"{folder}/{ERROR_TXT}", "crashed (recorded by the study: Optuna state FAIL, fate crashed); "
                                           "Ray Tune's saved state had lost the error\n")
    meta["error_filename"] = ERROR_TXT
    meta["pickled_error_filename"] = ERROR_PKL if exists(fs, f"{folder}/{ERROR_PKL}") else None


def keep_crashed_trials_crashed(settings: StudySettings, experiment_path: str) -> dict[int, str]:
    """Rewrite Tune's newest saved state where it calls a trial the study recorded as crashed unfinished;
    returns those trials' numbers and Tune ids (none: the file is left untouched)."""
    crashed = crashed_numbers(settings)
    fs, experiment = get_fs_and_path(experiment_path)
    state_path = _find_newest_experiment_checkpoint(experiment, fs) if crashed else None
    if state_path is None:
        return {}
    with fs.open_input_stream(state_path) as stream:
        state = json.loads(stream.read())
    repaired, trial_data = {}, []
    for trial_json, meta_json in state["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        number = trial.get("config", {}).get(tracking.TRIAL_NUMBER)
        if number in crashed and trial["status"] in UNFINISHED and trial.get("relative_logdir"):
            mark_crashed(trial, meta, fs, experiment)
            repaired[number] = trial["trial_id"]
            trial_json, meta_json = json.dumps(trial, indent=2), json.dumps(meta)
        trial_data.append([trial_json, meta_json])
    if repaired:
        write(fs, state_path, json.dumps({**state, "trial_data": trial_data}))
    return dict(sorted(repaired.items()))
