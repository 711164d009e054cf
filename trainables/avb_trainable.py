"""Ray Tune trainable around the AVB training loop.

One Tune iteration = `steps_per_iteration` training steps, then an evaluation.
Each iteration reports the method's metrics (names from `avb.train.TRAIN_METRICS`
and `avb.evaluate.EVAL_METRICS`) plus throughput, logs them to the trial's own
nested MLflow run, and Tune checkpoints the complete trainer state through
`save_checkpoint` / `load_checkpoint`.

A trial whose loss goes non-finite reports `diverged=True` with
`log_likelihood=-inf` and stops; any other exception is a bug and propagates.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Metric, Param
from ray import tune

from avb import checkpoint
from avb.config import Config
from avb.data import load_dataset
from avb.evaluate import evaluate
from avb.figures import save_pictures
from avb.train import DivergedError, Trainer
from search_spaces import load_preset

THROUGHPUT_METRICS = ("steps_per_s", "examples_per_s")


@dataclass
class TrialSettings:
    """What every trial of a study shares (passed with `tune.with_parameters`)."""

    preset: str
    iterations: int
    steps_per_iteration: int
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    study_name: str
    code_version: str = "unknown"
    overrides: dict = field(default_factory=dict)  # Config fields fixed for the whole study


def trial_config(settings: TrialSettings, params: dict) -> Config:
    """The run's Config: preset base, then the sampled parameters, then the study's fixed overrides."""
    values = {**params, **settings.overrides, "steps": settings.iterations * settings.steps_per_iteration}
    return load_preset(settings.preset).BASE.replace(**values)


def pick_device() -> torch.device:
    """The GPU Ray assigned to this trial (CUDA_VISIBLE_DEVICES is set by Ray), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class AVBTrainable(tune.Trainable):
    def setup(self, config: dict, settings: TrialSettings) -> None:
        self.settings = settings
        self.cfg = trial_config(settings, config)
        self.device = pick_device()
        self.data = load_dataset(self.cfg, self.device)
        self.eval_x = self.data.eval_batch(self.cfg.eval_points)
        self.trainer = Trainer(self.cfg, self.data.x_shape, self.device)
        self.best = -math.inf
        self.client = mlflow.MlflowClient(settings.tracking_uri)
        self.run_id = self._find_or_create_run(config)
        # a trial replayed after a killed driver must not log the same steps twice
        history = self.client.get_metric_history(self.run_id, "log_likelihood")
        self.logged_up_to = max((m.step for m in history), default=-1)

    # ------------------------------------------------------------------ MLflow
    def _find_or_create_run(self, params: dict) -> str:
        """One nested run per trial; a restored trial finds its run again (no duplicates on resume)."""
        found = self.client.search_runs(
            [self.settings.experiment_id],
            f"tags.trial_id = '{self.trial_id}' and tags.`mlflow.parentRunId` = '{self.settings.parent_run_id}'")
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return found[0].info.run_id
        tags = {"mlflow.parentRunId": self.settings.parent_run_id, "study": self.settings.study_name,
                "preset": self.settings.preset, "trial_id": self.trial_id, "code_version": self.settings.code_version,
                "searched": ",".join(sorted(params))}
        run = self.client.create_run(self.settings.experiment_id, tags=tags, run_name=self.trial_name)
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in self.cfg.to_dict().items()])
        return run.info.run_id

    def _log_best(self, metrics: dict) -> None:
        """The trial's best checkpoint and its pictures (latent space; samples for images), under best/ in MLflow."""
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint.save(self.trainer, Path(tmp) / checkpoint.FILENAME, metrics=metrics)
            title = f"{self.trial_name} step {self.trainer.step_count}"
            save_pictures(self.trainer, self.eval_x[:32], tmp, title=title)
            self.client.log_artifacts(self.run_id, tmp, artifact_path="best")

    # ------------------------------------------------------------------- Tune
    def step(self) -> dict:
        start, t0 = self.trainer.step_count, time.perf_counter()
        try:
            for _ in range(self.settings.steps_per_iteration):
                self.trainer.step(self.data.sample(self.cfg.batch_size, self.trainer.generator))
            metrics = self.trainer.pop_metrics()  # raises DivergedError on NaN/inf
        except DivergedError as err:
            self.client.set_tag(self.run_id, "diverged", "true")
            self.client.set_terminated(self.run_id, status="FAILED")
            return {"diverged": True, "log_likelihood": -math.inf, "error": str(err), "done": True}
        seconds = time.perf_counter() - t0
        steps = self.trainer.step_count - start
        metrics |= {"steps_per_s": steps / seconds, "examples_per_s": steps * self.cfg.batch_size / seconds}
        metrics |= evaluate(self.trainer, self.eval_x, self.cfg.eval_samples)
        metrics["fidelity"] = self.trainer.step_count / self.cfg.steps
        step = self.trainer.step_count
        if step > self.logged_up_to:
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), step)
                                                        for k, v in metrics.items()])
        if metrics["log_likelihood"] > self.best:
            self.best = metrics["log_likelihood"]
            self._log_best(metrics)
        return {**metrics, "diverged": False, "training_step": step, "best_log_likelihood": self.best}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        checkpoint.save(self.trainer, Path(checkpoint_dir) / checkpoint.FILENAME, best=self.best)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.trainer, extra = checkpoint.load_with_extra(Path(checkpoint_dir) / checkpoint.FILENAME, self.device)
        self.best = extra["best"]

    def cleanup(self) -> None:
        run = self.client.get_run(self.run_id)
        if run.info.status == "RUNNING":
            done = self.trainer.step_count >= self.cfg.steps
            self.client.set_tag(self.run_id, "stopped_early", str(not done).lower())
            self.client.set_terminated(self.run_id, status="FINISHED" if done else "KILLED")


__all__ = ["AVBTrainable", "TrialSettings", "trial_config"]
