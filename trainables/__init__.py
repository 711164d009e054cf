"""Ray Tune trainables wrapping the `avb` training loop."""

from trainables.avb_trainable import AVBTrainable, TrialSettings, trial_config

__all__ = ["AVBTrainable", "TrialSettings", "trial_config"]
