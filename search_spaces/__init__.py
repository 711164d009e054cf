"""Optuna define-by-run search spaces, one module per experiment preset.

Each preset module defines:
  BASE                 the Config every trial starts from
  ITERATIONS           Tune iterations per trial (full fidelity)
  STEPS_PER_ITERATION  training steps per iteration
  BASELINES            parameter sets enqueued as the first trials (the paper's setting first)
  PAPER                the paper's figures for the summary, {metric: value} per method
  space(trial)         the define-by-run space: only `trial.suggest_*` calls
"""

from __future__ import annotations

import importlib
from types import ModuleType

PRESETS = ("synthetic", "mnist", "celeba")


def load_preset(name: str) -> ModuleType:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")
    try:
        return importlib.import_module(f"search_spaces.{name}")
    except ModuleNotFoundError as err:
        raise ValueError(f"preset {name!r} is not implemented yet ({err})") from err
