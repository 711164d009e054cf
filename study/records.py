"""The study's own records around Tune's run: its MLflow experiment and parent run, the trainable that
logs each trial, and what is left to close when Tune returns (interrupted or lost trials)."""

from __future__ import annotations

import shlex
import sys
import urllib.parse
from pathlib import Path

import mlflow

from study.recorder import Recorder
from study.settings import StudyError, StudySettings, masked
from trainables import tracking
from trainables.tracking import Fate

DESCRIPTION = """AVB hyperparameter study `{name}` (preset `{preset}`), made by study/run.py.

One nested run per trial, named `#NUMBER METHOD VALUE | searched values`; its `fate` tag says how it ended
(finished, stopped_early, diverged, crashed, lost, interrupted). `log_likelihood` is the importance-sampled
log p(x) on the validation split (nats, higher is better); `adversary_elbo` is the adversary's estimate of the
ELBO, not a bound. Pictures are at each run's top level, the best checkpoint under `checkpoint/`.
Resume: `{resume}`"""


def resume_command(settings: StudySettings) -> str:
    """The project's resume line: the storage path finds the saved settings, which name the stores (a password,
    never saved, comes from $MLFLOW_TRACKING_URI / $AVB_OPTUNA_STORAGE or the flag)."""
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith("run.py") else "study/run.py"
    return shlex.join(["python", script, "--resume", "--study-name", settings.study_name,
                       "--storage-path", settings.storage_path])


def experiment(client: mlflow.MlflowClient, settings: StudySettings) -> str:
    exp = client.get_experiment_by_name(settings.study_name)
    if exp is not None:
        note_foreign_artifacts(exp.artifact_location, settings)
        return exp.experiment_id
    location = None
    if settings.tracking_uri.startswith("sqlite:"):
        location = (Path(settings.results_dir) / "mlartifacts" / settings.study_name).as_uri()
    description = DESCRIPTION.format(name=settings.study_name, preset=settings.preset,
                                     resume=resume_command(settings))
    return client.create_experiment(settings.study_name, artifact_location=location,
                                    tags={tracking.STUDY: settings.study_name, tracking.PRESET: settings.preset,
                                          tracking.NOTE: description})


def note_foreign_artifacts(location: str, settings: StudySettings) -> None:
    """A resumed copy of a study keeps its experiment's artifact location, which MLflow cannot change: say where
    the pictures and checkpoints go when that is not beside the SQLite store in use."""
    if not location.startswith("file://") or not settings.tracking_uri.startswith("sqlite:"):
        return
    folder = Path(urllib.parse.urlparse(location).path)
    store_folder = Path(settings.tracking_uri.removeprefix("sqlite:///")).parent
    if not folder.is_relative_to(store_folder):  # a copied mlflow.db still names the original's folder
        print(f"note: this study's pictures and checkpoints go to {folder} (its MLflow experiment's artifact "
              f"location, fixed when the study began), not beside its MLflow store in {store_folder}", flush=True)


def parent_run(client: mlflow.MlflowClient, exp_id: str, settings: StudySettings, tags: dict) -> str:
    """The study's parent run (found again on resume), RUNNING while the study runs."""
    found = tracking.find_study_run(client, exp_id)
    if found:
        client.update_run(found.info.run_id, status="RUNNING")
        return found.info.run_id
    run = client.create_run(exp_id, run_name=settings.study_name,
                            tags={**tags, tracking.KIND: "study", tracking.NOTE: "The study's parent run: "
                                  "settings as params, the best trial as a metric, the report under report/."})
    params = {k: getattr(settings, k) for k in ("preset", "num_trials", "concurrency", "cpus_per_trial",
                                                 "gpus_per_trial", "iterations", "steps_per_iteration", "scheduler",
                                                 "sampler", "baselines", "seed", "keep_checkpoints", "storage_path")}
    params |= {f"set.{k}": v for k, v in settings.overrides.items()}
    client.log_batch(run.info.run_id, params=[mlflow.entities.Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def check_local_cuda() -> None:
    """GPUs asked for on this machine but unusable by torch: say why, before any trial."""
    from trainables.avb_trainable import cuda_problem

    problem = cuda_problem()
    if problem:
        raise StudyError(f"--gpus-per-trial > 0 but {problem}")


def start(settings: StudySettings, trial_tracking_uri: str):
    """The experiment, the parent run, and (trainable with its resources, the driver's Recorder)."""
    from ray import tune

    from trainables import AVBTrainable, TrialSettings

    client = mlflow.MlflowClient(settings.tracking_uri)
    tags = {tracking.STUDY: settings.study_name, tracking.PRESET: settings.preset,
            **tracking.source_tags(tracking.code_version())}
    exp_id = experiment(client, settings)
    parent_id = parent_run(client, exp_id, settings, tags)
    trial_settings = TrialSettings(preset=settings.preset, iterations=settings.iterations,
                                   steps_per_iteration=settings.steps_per_iteration,
                                   tracking_uri=trial_tracking_uri, experiment_id=exp_id, parent_run_id=parent_id,
                                   study_name=settings.study_name, overrides=settings.overrides, run_tags=tags)
    trainable = tune.with_resources(tune.with_parameters(AVBTrainable, settings=trial_settings),
                                    {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial})
    return trainable, Recorder(settings.tracking_uri, trial_settings, settings.num_trials, ended_trials(settings),
                               settings.progress_every)


def ended_trials(settings: StudySettings) -> int:
    """Trials of the study that ended before this driver (0 for a new study)."""
    import optuna

    if not settings.resume:
        return 0
    study = optuna.load_study(study_name=settings.study_name, storage=settings.optuna_storage)
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def result_fate(result, iterations: int) -> Fate:
    """A Tune Result's fate: errors are crashes; `done` is set on every result Tune ended (budget, ASHA, a
    diverged trial); a result without it belongs to a trial the driver's stop interrupted."""
    status = "ERROR" if result.error else ("TERMINATED" if (result.metrics or {}).get("done") else "RUNNING")
    return tracking.fate_of(status, result.metrics, iterations)


def finish(settings: StudySettings, results, recorder: Recorder) -> int:
    """Close what Tune left open; returns how many trials are unfinished (0 unless interrupted)."""
    client = recorder.client
    parent = recorder.settings.parent_run_id
    interrupted = [r for r in results if result_fate(r, settings.iterations) is Fate.INTERRUPTED]
    unfinished = len(interrupted) + max(settings.num_trials - len(results), 0)
    if unfinished:
        close_interrupted(recorder)
        return unfinished
    tracking.close_lost_runs(client, recorder.settings.experiment_id, parent)
    fail_orphaned_optuna_trials(settings)
    client.set_tag(parent, tracking.FATE, Fate.FINISHED.value)
    return 0


def close_interrupted(recorder: Recorder) -> None:
    """The study stopped before its trials: every run still RUNNING is an unfinished trial (some never reported
    a result), KILLED with fate interrupted; --resume sets them RUNNING again."""
    client, s = recorder.client, recorder.settings
    for run in tracking.trial_runs(client, s.experiment_id, s.parent_run_id):
        if run.info.status == "RUNNING":
            tracking.close_trial_run(client, run, Fate.INTERRUPTED)
    client.set_tag(s.parent_run_id, tracking.FATE, Fate.INTERRUPTED.value)
    client.set_terminated(s.parent_run_id, status="KILLED")


def abandon(recorder: Recorder, err: BaseException) -> None:
    """Tune could not be built or restored: the parent run is closed (KILLED, its error as a tag), not left
    RUNNING."""
    client, s = recorder.client, recorder.settings
    client.set_tag(s.parent_run_id, tracking.ERROR, masked(f"{type(err).__name__}: {err}")[:5000])
    client.set_terminated(s.parent_run_id, status="KILLED")


def fail_orphaned_optuna_trials(settings: StudySettings) -> None:
    """Once every trial ended no Optuna trial may stay RUNNING (one asked for by a driver killed before Tune's
    snapshot, and not asked for again): FAIL, fate lost."""
    import optuna

    study = optuna.load_study(study_name=settings.study_name, storage=settings.optuna_storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "fate", Fate.LOST.value)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
