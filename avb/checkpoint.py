"""Complete, atomic checkpoints: networks, both optimisers, step, RNG state, config.

A checkpoint is written to a temporary file and renamed over the old one, so
an interrupted save never replaces a good checkpoint with half a file. It holds
only tensors and plain Python values, so every load uses
`torch.load(..., weights_only=True)`: a checkpoint file cannot run code. A file
that is missing, truncated, random or written by something else raises
`CheckpointError` with one line that names the path and what to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from avb.config import Config, ConfigError
from avb.train import Trainer

FILENAME = "trainer.pt"
KEYS = {"config", "x_shape", "models", "opt_primal", "opt_adv", "step", "generator", "generator_device",
        "metric_sums", "metric_n", "extra"}


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message (one line) names the path and what to do."""


def save(trainer: Trainer, path: str | Path, **extra: Any) -> Path:
    """Write the trainer's full state (plus `extra`, e.g. metrics) to `path` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({**trainer.state_dict(), "extra": extra}, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def read(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The raw state saved at `path` (weights_only load), checked to be an avb trainer checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} ({'a folder' if path.is_dir() else 'missing'}); "
                              "train a run there first, or point at its trainer.pt")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # truncated zip, random bytes, pickled code refused by weights_only, ...
        reason = ("not a tensors-only torch file" if "Weights only load failed" in str(err)
                  else f"{type(err).__name__}: {_first_line(err)[:120]}")
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason}); it may be truncated or "
                              "not written by avb: restore a good copy or start a new run") from None
    if not isinstance(state, dict) or not KEYS <= set(state):
        raise CheckpointError(f"{path} is not an avb trainer checkpoint (missing "
                              f"{', '.join(sorted(KEYS - set(state))) if isinstance(state, dict) else 'everything'}); "
                              "point at a trainer.pt written by avb")
    return state


def load(path: str | Path, device: torch.device | str = "cpu") -> Trainer:
    """A Trainer restored from `path`, on `device`, ready to continue exactly where it stopped."""
    return load_with_extra(path, device)[0]


def load_with_extra(path: str | Path, device: torch.device | str = "cpu") -> tuple[Trainer, dict[str, Any]]:
    """The restored Trainer and the `extra` values saved with it, from one read of the file."""
    state = read(path, device)
    try:
        trainer = Trainer(Config.from_dict(state["config"]), tuple(state["x_shape"]), device)
        trainer.load_state_dict(state)
    except (ConfigError, ValueError, RuntimeError, KeyError) as err:  # other version's config or networks
        raise CheckpointError(f"{path} does not fit this version of avb ({_first_line(err)}); "
                              "retrain, or load it with the code that wrote it") from None
    return trainer, state["extra"]


def extra(path: str | Path) -> dict[str, Any]:
    """The `extra` values saved with a checkpoint (metrics and the like)."""
    return read(path)["extra"]
