"""Complete, atomic checkpoints: networks, both optimisers, step, RNG state, config.

A checkpoint is written to a temporary file and renamed over the old one, so
an interrupted save never replaces a good checkpoint with half a file.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from avb.config import Config
from avb.train import Trainer

FILENAME = "trainer.pt"


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


def load(path: str | Path, device: torch.device | str = "cpu") -> Trainer:
    """A Trainer restored from `path`, on `device`, ready to continue exactly where it stopped."""
    return load_with_extra(path, device)[0]


def load_with_extra(path: str | Path, device: torch.device | str = "cpu") -> tuple[Trainer, dict[str, Any]]:
    """The restored Trainer and the `extra` values saved with it, from one read of the file."""
    state = torch.load(path, map_location=device, weights_only=False)
    trainer = Trainer(Config.from_dict(state["config"]), tuple(state["x_shape"]), device)
    trainer.load_state_dict(state)
    return trainer, state["extra"]


def extra(path: str | Path) -> dict[str, Any]:
    """The `extra` values saved with a checkpoint (metrics and the like)."""
    return torch.load(path, map_location="cpu", weights_only=False)["extra"]
