"""On the driver: close each trial's MLflow run with its fate, upload its best checkpoint once, print progress.

The trial cannot do this itself: it does not know why it stops (ASHA, the end of
its budget, Ctrl-C), and a trial that crashed or lost its node runs no code at
all. Tune tells the driver, through these callbacks. The callback is pickled
with the experiment, so it keeps only names and ids and opens its client lazily.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from ray import tune

from study.searcher import NUMBER_KEY
from study.settings import masked
from trainables import tracking
from trainables.tracking import Fate


def trial_error(trial) -> str:
    """The last line of a failed trial's error (Tune writes the traceback to a file), its secrets masked."""
    path = trial.error_file
    try:
        return masked(tracking.one_line(Path(path).read_text())) if path else "crashed (no error text)"
    except OSError:
        return "crashed (its error file is gone)"


class Recorder(tune.Callback):
    def __init__(self, tracking_uri: str, settings, num_trials: int, ended_before: int = 0,
                 progress_every: float = 60.0):
        """`tracking_uri` as the driver sees it; `settings`: the trials' `TrialSettings`; `ended_before`:
        trials that ended before a resume (for the progress count); `progress_every`: seconds between
        progress lines."""
        self.tracking_uri, self.settings, self.num_trials = tracking_uri, settings, num_trials
        self.ended_before, self.progress_every = ended_before, progress_every
        self.started_at = self.last_progress = time.monotonic()
        self.iterations_here = 0  # trial-iterations reported to this driver (its rate gives the time bound)
        self.best: tuple[float, int, int] | None = None  # (log_likelihood, trial number, iteration)
        self.ended: dict[str, Fate] = {}  # Tune trial id -> fate, for trials that ended in this driver
        self._client = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_client": None}

    @property
    def client(self):
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(self.tracking_uri)
        return self._client

    # ------------------------------------------------------------------ Tune's callbacks
    def on_trial_start(self, iteration, trials, trial, **info):
        searched = {k: v for k, v in trial.config.items() if k != NUMBER_KEY}
        print(f"  trial {trial.config.get(NUMBER_KEY)} started: "
              + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(searched.items())),
              flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.iterations_here += 1
        if result.get("diverged"):
            print(f"  trial {trial.config.get(NUMBER_KEY)}: diverged at iteration {result['training_iteration']}",
                  flush=True)
            return
        value = result.get("log_likelihood")
        if isinstance(value, float) and math.isfinite(value) and (self.best is None or value > self.best[0]):
            self.best = (value, trial.config.get(NUMBER_KEY), result["training_iteration"])

    def on_step_end(self, iteration, trials, **info):
        if time.monotonic() - self.last_progress >= self.progress_every:
            self.last_progress = time.monotonic()
            print(self.progress_line(trials), flush=True)

    def progress_line(self, trials) -> str:
        """Trials running and ended, the best validation value so far, and an estimate of the time left: every
        trial not yet ended runs its full budget at the study's rate so far (ASHA usually ends some sooner; trials
        slower than those so far, e.g. larger adversaries, take longer)."""
        running = [t for t in trials if t.status == "RUNNING"]
        ended = min(self.ended_before + len(self.ended), self.num_trials)
        minutes = (time.monotonic() - self.started_at) / 60
        best = (f"best log_likelihood {self.best[0]:.4f} (trial {self.best[1]}, iteration {self.best[2]})"
                if self.best else "no validation value yet")
        left = (self.num_trials - ended) * self.settings.iterations - sum(
            (t.last_result or {}).get("training_iteration", 0) for t in running)
        eta = f", about {left * minutes / self.iterations_here:.0f} min left" if self.iterations_here else ""
        return (f"progress: {len(running)} running, {ended}/{self.num_trials} ended; {best}; "
                f"{minutes:.0f} min{eta}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.close(trial, tracking.fate_of("TERMINATED", trial.last_result, self.settings.iterations))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.close(trial, Fate.CRASHED, trial_error(trial))

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"  trial {trial.config.get(NUMBER_KEY)}: failed ({trial_error(trial)}); Tune retries it from its "
              "last checkpoint", flush=True)

    # ------------------------------------------------------------------ records
    def close(self, trial, fate: Fate, error: str = "") -> None:
        """Record the fate in MLflow, upload the best checkpoint, print one line. Never raises: a broken
        record must not stop the other trials."""
        self.ended[trial.trial_id] = fate
        result = trial.last_result or {}
        value = result.get("log_likelihood")
        if fate is Fate.DIVERGED:
            error = error or result.get("diverged_error", "diverged")
        try:
            run = self.trial_run(trial)
            tracking.close_trial_run(self.client, run, fate, error, value if fate is not Fate.DIVERGED else None)
        except Exception as err:  # noqa: BLE001
            print(f"  warning: could not record trial {trial.trial_id} in MLflow ({masked(str(err))})", flush=True)
        else:
            try:  # after the run is closed: a failed upload leaves a true record without the checkpoint
                self.upload_best_checkpoint(trial, run.info.run_id)
            except Exception as err:  # noqa: BLE001
                print(f"  warning: could not upload trial {trial.trial_id}'s checkpoint to MLflow "
                      f"({masked(str(err))})", flush=True)
        shown = f": log_likelihood {value:.4f}" if isinstance(value, float) and math.isfinite(value) else ""
        if fate.failed:
            shown = f": {tracking.one_line(error, 200)}"
        count = min(self.ended_before + len(self.ended), self.num_trials)
        print(f"[{count}/{self.num_trials}] trial {trial.config.get(NUMBER_KEY)} ({trial.trial_id}) "
              f"{fate.value} after {result.get('training_iteration', 0)} iterations{shown}", flush=True)

    def trial_run(self, trial):
        """The trial's run; created here for a trial that crashed before it could create its own."""
        s, number = self.settings, trial.config.get(NUMBER_KEY)
        run = tracking.find_trial_run(self.client, s.experiment_id, s.parent_run_id, number)
        if run is None:
            from trainables.avb_trainable import searched_and_config

            searched, cfg, fixed = searched_and_config(trial.config, s)
            run_id = tracking.create_trial_run(self.client, s.experiment_id, s.parent_run_id, number,
                                               trial.trial_id, cfg, searched, fixed, s.run_tags)
            run = self.client.get_run(run_id)
        return run

    def upload_best_checkpoint(self, trial, run_id: str) -> None:
        """The trial's best checkpoint (by validation log-likelihood; Tune keeps it) to MLflow, once."""
        best = trial.run_metadata.checkpoint_manager.best_checkpoint_result
        if best is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            best.checkpoint.to_directory(tmp)
            self.client.log_artifacts(run_id, tmp, artifact_path=tracking.CHECKPOINT_PATH)
        self.client.set_tag(run_id, tracking.BEST_STEP, str(best.metrics.get("training_step", "")))
