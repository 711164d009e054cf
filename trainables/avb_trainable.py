"""Ray Tune trainable around the AVB training loop (`avb.fit.fit`).

One Tune iteration = `steps_per_iteration` training steps, then an evaluation on
the VALIDATION split (the test split is only read by the study's final
evaluation). Each iteration reports the method's metrics (names from
`avb.train.TRAIN_METRICS` and `avb.evaluate.EVAL_METRICS`) plus throughput,
logs them to the trial's nested MLflow run in one batch, and asks Tune for a
checkpoint when the weights are finite (`should_checkpoint`); Tune keeps the
best N by validation log-likelihood and the latest. Pictures of the model are
redrawn at every improvement, at the run's top level where MLflow's compare
view shows them; drawing never stops a trial.

A trial whose loss goes non-finite reports `diverged=True` with
`log_likelihood=-inf` and stops; any other exception is a bug and propagates
(Tune retries it up to --max-failures, then the driver records it as crashed).
The driver (study.recorder) closes the run with the trial's fate.
"""

from __future__ import annotations

import logging
import math
import os
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
from avb.fit import fit
from avb.train import DivergedError, Trainer, weights_finite
from search_spaces import load_preset
from trainables import tracking

NUMBER_KEY = tracking.TRIAL_NUMBER  # added to each trial's config by study.searcher: the study's trial number


@dataclass
class TrialSettings:
    """What every trial of a study shares (passed with `tune.with_parameters`)."""

    preset: str
    iterations: int
    steps_per_iteration: int
    tracking_uri: str  # as seen from the trials' nodes
    experiment_id: str
    parent_run_id: str
    study_name: str
    overrides: dict = field(default_factory=dict)  # Config fields fixed for the whole study (--set)
    run_tags: dict = field(default_factory=dict)  # study, preset, code version, MLflow's source/user tags


def trial_config(settings: TrialSettings, params: dict) -> Config:
    """The run's Config: preset base, then the searched values, then the study's fixed fields."""
    values = {k: v for k, v in params.items() if k != NUMBER_KEY}
    values |= {**settings.overrides, "steps": settings.iterations * settings.steps_per_iteration}
    return load_preset(settings.preset).BASE.replace(**values)


def searched_and_config(params: dict, settings: TrialSettings) -> tuple[dict, Config, list[str]]:
    """(the values the search chose, the run's Config, the names fixed with --set)."""
    fixed = sorted(settings.overrides)
    searched = {k: v for k, v in params.items() if k != NUMBER_KEY and k not in settings.overrides}
    return searched, trial_config(settings, params), fixed


def cuda_problem() -> str:
    """Why CUDA cannot be used although a GPU was assigned ('' when it can)."""
    if torch.cuda.is_available():
        return ""
    if torch.version.cuda is None:
        return "this torch is a CPU-only build; install the CUDA build (pip install torch) on the GPU nodes"
    return (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but cannot use this GPU, usually an "
            "NVIDIA driver older than that CUDA version (nvidia-smi shows the driver's); update the driver or "
            "install a torch build for an older CUDA")


def pick_device(wanted: str = "auto") -> torch.device:
    """Exactly the GPU Ray assigned to this trial (Ray 2.60 no longer hides GPUs from actors that asked for
    none), else the CPU; a GPU assigned but unusable is an error, never a silent CPU run. `wanted` is the
    Config's device: "cpu" stays on the CPU, "cuda" insists on an assigned GPU."""
    import ray

    if wanted == "cpu":
        return torch.device("cpu")
    if not (ray.is_initialized() and ray.get_gpu_ids()):
        if wanted == "cuda":
            raise RuntimeError("device='cuda' but Ray assigned this trial no GPU; pass --gpus-per-trial > 0 "
                               "(or --set device=auto)")
        return torch.device("cpu")
    problem = cuda_problem()
    if problem:
        raise RuntimeError(f"Ray assigned GPU(s) {ray.get_gpu_ids()} to this trial, but {problem}")
    return torch.device("cuda")  # Ray sets CUDA_VISIBLE_DEVICES to the assigned GPU(s)


class AVBTrainable(tune.Trainable):
    def setup(self, config: dict, settings: TrialSettings) -> None:
        logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)  # a line per checkpoint
        logging.getLogger("ray.tune.trainable.trainable").setLevel(logging.WARNING)  # "setup took N s: reuse_actors"
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # MLflow's GenAI-view links
        self.settings = settings
        self.client = mlflow.MlflowClient(settings.tracking_uri)
        searched, self.cfg, fixed = searched_and_config(config, settings)
        # the run first: a crash in the set-up below is then on record
        try:
            self.run_id = self._find_or_create_run(config[NUMBER_KEY], searched, fixed)
        except mlflow.MlflowException as err:
            refused = tracking.refused_login(err, settings.tracking_uri)
            if refused:
                raise RuntimeError(refused) from None
            raise
        self.device = pick_device(self.cfg.device)
        self.data = load_dataset(self.cfg, self.device)
        sizes = [Param(f"split.{name}", str(n)) for name, n in self.data.sizes.items()]  # seeded by split_seed
        self.client.log_batch(self.run_id, params=sizes)
        self.client.set_tag(self.run_id, "torch_threads", str(torch.get_num_threads()))  # Ray: --cpus-per-trial
        self.eval_x = self.data.eval_batch(self.cfg.eval_points, "valid")
        self.trainer = Trainer(self.cfg, self.data.x_shape, self.device)
        self.best = -math.inf
        # a trial replayed after a killed driver must not log the same steps twice
        history = self.client.get_metric_history(self.run_id, "log_likelihood")
        self.logged_up_to = max((m.step for m in history), default=-1)

    def reset_config(self, new_config: dict) -> bool:
        """Tune's reuse_actors: the next trial in this actor, set up as a new one (no process start)."""
        self.setup(new_config)  # tune.with_parameters wraps setup: it passes the settings again
        return True

    def _find_or_create_run(self, number: int, searched: dict, fixed: list[str]) -> str:
        """One nested run per trial; a resumed or retried trial finds its run again (no duplicates)."""
        s = self.settings
        run = tracking.find_trial_run(self.client, s.experiment_id, s.parent_run_id, number)
        if run is None:
            return tracking.create_trial_run(self.client, s.experiment_id, s.parent_run_id, number, self.trial_id,
                                             self.cfg, searched, fixed, s.run_tags)
        self.client.set_tag(run.info.run_id, tracking.TRIAL_ID, self.trial_id)
        self.client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id

    def _draw_pictures(self) -> None:
        """Pictures of the current (best) model at the run's top level; a failure is a tag, not a crash."""
        try:
            with tempfile.TemporaryDirectory() as tmp:
                title = f"trial {self.config.get(NUMBER_KEY)}, step {self.trainer.step_count}"
                save_pictures(self.trainer, self.eval_x[:32], tmp, title=title)
                self.client.log_artifacts(self.run_id, tmp)
        except Exception as err:  # noqa: BLE001
            self.client.set_tag(self.run_id, "pictures_error", tracking.one_line(f"{type(err).__name__}: {err}"))

    # ------------------------------------------------------------------- Tune
    def step(self) -> dict:
        t0, start = time.perf_counter(), self.trainer.step_count
        try:
            metrics = fit(self.trainer, self.data, start + self.settings.steps_per_iteration)
        except DivergedError as err:
            return {"diverged": True, "log_likelihood": -math.inf, "diverged_error": str(err), "done": True,
                    "training_step": self.trainer.step_count}
        seconds = time.perf_counter() - t0
        steps = self.trainer.step_count - start
        metrics |= {"steps_per_s": steps / seconds, "examples_per_s": steps * self.cfg.batch_size / seconds}
        metrics |= evaluate(self.trainer, self.eval_x, self.cfg.eval_samples)
        metrics["fidelity"] = self.trainer.step_count / self.cfg.steps
        step = self.trainer.step_count
        if step > self.logged_up_to:
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
        finite = weights_finite(self.trainer) and math.isfinite(metrics["log_likelihood"])
        if finite and metrics["log_likelihood"] > self.best:
            self.best = metrics["log_likelihood"]
            self._draw_pictures()
        return {**metrics, "diverged": False, "training_step": step, "best_log_likelihood": self.best,
                "should_checkpoint": finite}

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        checkpoint.save(self.trainer, Path(checkpoint_dir) / checkpoint.FILENAME, best=self.best)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.trainer, extra = checkpoint.load_with_extra(Path(checkpoint_dir) / checkpoint.FILENAME, self.device)
        self.best = extra["best"]

    def restore(self, checkpoint_path) -> None:
        """Tune's restore; when the checkpoint Tune's snapshot names is gone (Ray deleted it for --keep-checkpoints
        after the snapshot, then the driver was killed), continue from the newest checkpoint that exists."""
        from ray.train._internal.checkpoint_manager import _TrainingResult
        from ray.train._internal.storage import _exists_at_fs_path

        if not isinstance(checkpoint_path, _TrainingResult):
            return super().restore(checkpoint_path)
        ckpt = checkpoint_path.checkpoint
        newest = ckpt if _exists_at_fs_path(ckpt.filesystem, ckpt.path) else newest_checkpoint(ckpt)
        if newest is None or newest is ckpt:
            return super().restore(checkpoint_path)
        super().restore(_TrainingResult(checkpoint=newest, metrics={}))
        self._iteration = self.trainer.step_count // self.settings.steps_per_iteration


def newest_checkpoint(missing):
    """The newest `checkpoint_*` folder beside a missing one (same filesystem: local or s3://), or None."""
    from pyarrow import fs
    from ray import tune

    parent = missing.path.rstrip("/").rsplit("/", 1)[0]
    infos = missing.filesystem.get_file_info(fs.FileSelector(parent, allow_not_found=True))
    folders = sorted(i.path for i in infos if i.type == fs.FileType.Directory
                     and i.base_name.startswith("checkpoint_"))
    return tune.Checkpoint(folders[-1], filesystem=missing.filesystem) if folders else None


__all__ = ["AVBTrainable", "NUMBER_KEY", "TrialSettings", "cuda_problem", "newest_checkpoint", "pick_device",
           "searched_and_config", "trial_config"]
