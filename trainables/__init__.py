"""Ray Tune trainables wrapping the `avb` training loop, and `tracking`, what a study leaves in MLflow.

`trainables.tracking` imports no Ray, so the analysis scripts can use it; the
trainable itself is imported on first use.
"""

__all__ = ["AVBTrainable", "TrialSettings", "trial_config"]


def __getattr__(name: str):
    if name in __all__:
        from trainables import avb_trainable

        return getattr(avb_trainable, name)
    raise AttributeError(name)
