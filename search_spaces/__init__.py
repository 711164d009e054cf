"""Optuna define-by-run search spaces, one module per experiment preset.

Each preset module defines:
  BASE                 the Config every trial starts from
  ITERATIONS           Tune iterations per trial (full fidelity)
  STEPS_PER_ITERATION  training steps per iteration
  BASELINES            parameter sets enqueued as the first trials (the paper's setting first)
  PAPER                the paper's figures for the summary, {metric: value} per method
  space(trial, base)   the define-by-run space: only `trial.suggest_*` calls; `base` is the study's
                       Config (BASE with the --set fields), e.g. to leave out a VAE's adversary
and may define
  ASHA                 ASHA's grace_period (iterations) and reduction_factor, chosen from recorded curves
"""

from __future__ import annotations

import importlib
from types import ModuleType

PRESETS = ("synthetic", "mnist_mlp", "mnist", "celeba")


def load_preset(name: str) -> ModuleType:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available presets: {', '.join(PRESETS)}")
    try:
        return importlib.import_module(f"search_spaces.{name}")
    except ModuleNotFoundError as err:
        raise ValueError(f"preset {name!r} is not implemented yet ({err})") from err


def asha_settings(preset: str, iterations: int) -> dict:
    """ASHA's grace_period and reduction_factor for a study of `iterations`: the preset's ASHA (chosen from
    recorded curves), else a quarter of the budget; a rung past the budget falls back to that rule."""
    asha = {"grace_period": max(1, iterations // 4), "reduction_factor": 2}
    asha |= getattr(load_preset(preset), "ASHA", {})
    if asha["grace_period"] >= iterations:
        asha["grace_period"] = max(1, iterations // 4)
    return asha
