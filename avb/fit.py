"""The training loop: `fit` runs Algorithm 1 until a step count, logging and checkpointing.

One loop for `python -m avb`, the benchmarks and the Ray trainable:

    fit(trainer, data, until_step=20000, log_every=500, on_log=print_progress,
        checkpoint_every=5000, checkpoint_path=out / "trainer.pt")

Batches are drawn on the device (`Dataset.sample`); the loop syncs with the host
only every `log_every` steps, when `Trainer.pop_metrics` reads the loss sums
(and raises DivergedError on NaN/inf).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from avb import checkpoint
from avb.data import Dataset
from avb.train import Trainer

OnLog = Callable[[int, dict[str, float], float], None]  # (step, training metrics, steps per second)


def fit(trainer: Trainer, data: Dataset, until_step: int, *, log_every: int = 0, on_log: OnLog | None = None,
        checkpoint_every: int = 0, checkpoint_path: str | Path | None = None) -> dict[str, float]:
    """Train until `trainer.step_count == until_step`; return the training metrics of the last interval.

    Every `log_every` steps (0: only at the end) the metrics since the previous log are
    popped and handed to `on_log(step, metrics, steps_per_s)`; every `checkpoint_every`
    steps (0: never) the trainer is saved atomically to `checkpoint_path`.
    """
    if checkpoint_every and checkpoint_path is None:
        raise ValueError("checkpoint_every > 0 needs a checkpoint_path")
    metrics: dict[str, float] = {}
    last_step, last_time = trainer.step_count, time.perf_counter()
    while trainer.step_count < until_step:
        # --- one iteration of Algorithm 1 on a batch drawn on the device
        trainer.step(data.sample(trainer.cfg.batch_size, trainer.generator))
        step = trainer.step_count

        # --- logging: the only host sync (pop_metrics raises DivergedError on NaN/inf)
        if step == until_step or (log_every and step % log_every == 0):
            metrics = trainer.pop_metrics()
            now = time.perf_counter()
            if on_log is not None:
                on_log(step, metrics, (step - last_step) / max(now - last_time, 1e-9))
            last_step, last_time = step, time.perf_counter()  # time spent in on_log is not training time

        # --- checkpoint (written to a temporary file, then renamed)
        if checkpoint_every and step % checkpoint_every == 0:
            checkpoint.save(trainer, checkpoint_path)
    return metrics


__all__ = ["fit"]
