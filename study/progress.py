"""One line per finished trial while the study runs (Tune's own status table comes on top)."""

from __future__ import annotations

from ray import tune


class Progress(tune.Callback):
    def __init__(self, num_trials: int):
        self.num_trials, self.finished = num_trials, 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("diverged"):
            print(f"  {trial.trial_id}: diverged at iteration {result['training_iteration']}", flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.finished += 1
        r = trial.last_result or {}
        print(f"[{self.finished}/{self.num_trials}] {trial.trial_id} done after {r.get('training_iteration', 0)} "
              f"iterations: log_likelihood {r.get('log_likelihood', float('nan')):.4f}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.finished += 1
        print(f"[{self.finished}/{self.num_trials}] {trial.trial_id} ERROR (see the summary)", flush=True)
