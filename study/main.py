"""A hyperparameter study of AVB: Ray Tune runs the trials, Optuna proposes them, MLflow records them.

    python study/run.py                                   # small synthetic study on this machine
    python study/run.py --preset synthetic --num-trials 64 --concurrency 8 --gpus-per-trial 0.25
    ray submit cluster.yaml study/run.py -- --num-trials 64 --gpus-per-trial 0.5 \\
        --storage-path s3://BUCKET/avb/ray-results    # stores and logins from the head's environment
    python study/run.py --resume --study-name NAME        # after Ctrl-C, a killed driver, or on a new head

Local defaults keep everything under ./results (absolute paths): the MLflow SQLite
store, the Optuna storage and Ray's experiment folder. Exit codes: 0 every trial
finished, stopped early or diverged; 1 a trial crashed (a bug: the summary lists
it); 2 bad input (one line, nothing started or changed); 130 / 143 interrupted by
Ctrl-C / SIGTERM (every record stays resumable: run the printed --resume command).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import warnings

import optuna

from study import credentials
from study.cli import parse
from study.settings import StudyError, StudySettings, first_line
from study.stores import check_existence, check_mlflow, check_optuna

INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}


def check_data(settings: StudySettings) -> None:
    """Load the data once, exactly as the trials will (absolute data_root): a missing data set is a one-line
    error before any trial, and a download (MNIST) happens once instead of in every trial."""
    from avb.data import DataError, load_dataset

    try:
        load_dataset(settings.base_config(), "cpu")
    except DataError as err:
        raise StudyError(str(err)) from None


def prepare(argv: list[str] | None) -> StudySettings:
    """Settings checked and resolved, the saved ones merged on --resume; nothing written yet."""
    settings, given = parse(argv, __doc__)
    for note in credentials.notes(settings, given):
        print(f"note: {note}", flush=True)
    settings.resolve_paths()
    saved = settings.saved()
    if settings.resume:
        if saved is None:
            raise StudyError(f"no study named {settings.study_name!r} under {settings.storage_path}; "
                             "check --study-name and --storage-path (or --results-dir)")
        for note in settings.merge_saved(saved, given):
            print(f"note: {note}", flush=True)
    settings.resolve()
    check_data(settings)
    client, storage = check_mlflow(settings.tracking_uri), check_optuna(settings.optuna_storage)
    check_existence(settings, client, storage, saved)
    return settings


def start(settings: StudySettings):
    """Ray, the study's MLflow records and the Tuner (new or restored); the settings saved last."""
    from study import records, tuner

    on_cluster = tuner.connect(settings)
    tuner.check_resources(settings, on_cluster)
    trial_uri = tuner.trial_tracking_uri(settings.tracking_uri, on_cluster)
    if on_cluster:
        tuner.check_trial_reach(trial_uri)
    if settings.gpus_per_trial > 0 and not on_cluster:
        records.check_local_cuda()
    if settings.resume:
        tuner.check_restorable(settings)
    settings.check_writable()
    trainable, recorder = records.start(settings, trial_uri)
    build = tuner.restore_tuner if settings.resume else tuner.build_tuner
    try:
        fitted = build(settings, trainable, recorder)
        settings.save()
    except Exception as err:  # noqa: BLE001  (the parent run must not stay RUNNING)
        records.abandon(recorder, err)
        raise StudyError(f"the study could not start ({type(err).__name__}: {first_line(err)}); "
                         + ("fix that and resume" if settings.resume else "fix that and start again with another "
                            "--study-name")) from None
    return fitted, recorder


class Interrupt:
    """Ctrl-C is handled by Tune (it stops the trials and saves its state); SIGTERM is turned into the same
    graceful stop. Remembers which signal came, for the exit code."""

    def __init__(self):
        self.signal = None

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self.on_term)
        return self

    def on_term(self, signum, frame):
        self.signal = signal.SIGTERM
        signal.raise_signal(signal.SIGINT)  # Tune's handler: stop gracefully

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)


def main(argv: list[str] | None = None) -> int:
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # "Creating initial tables" on stderr
        logging.getLogger(name).setLevel(logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created in RDB": the study says it
    # an enqueued baseline may lie outside the searched range on purpose (mnist_mlp: the authors' lr 5e-5)
    warnings.filterwarnings("ignore", message=r"Fixed parameter .* is out of range", category=UserWarning)
    # MLflow's own "View run / View experiment" links open its GenAI view: the summary prints the right one.
    # The trials set it too (AVBTrainable.setup), on every node.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    try:
        settings = prepare(argv)
        fitted, recorder = start(settings)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from study import records
    from study.summary import summarize

    print(f"study {settings.study_name}: {settings.num_trials} trials of {settings.preset}, {settings.iterations} x "
          f"{settings.steps_per_iteration} steps; Ray results in {settings.storage_path}", flush=True)
    with Interrupt() as interrupt:
        try:
            results = fitted.fit()
        except Exception as err:  # noqa: BLE001  (Tune itself failed, e.g. the driver's node ran out of memory)
            records.close_interrupted(recorder)
            print(f"error: Ray Tune stopped the study ({type(err).__name__}: {first_line(err)}); its records are "
                  f"resumable: {records.resume_command(settings)}", file=sys.stderr)
            return 1
    stopped = records.finish(settings, results, recorder)
    if stopped:
        code = INTERRUPTED[interrupt.signal or signal.SIGINT]
        print(f"interrupted: {stopped} trial(s) unfinished, every record resumable. Continue with:\n  "
              f"{records.resume_command(settings)}", file=sys.stderr)
        return code
    return summarize(settings, results, recorder)


__all__ = ["main", "prepare"]
