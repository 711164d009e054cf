"""The study's only look at the TEST split: the best trials, chosen on validation, evaluated once at the end.

For image presets the top --final-ais trials by validation log-likelihood get
the importance-sampled bound and AIS on --ais-points test images, each as a Ray
task with the trials' own resources, on the trial's best (validation)
checkpoint. Logged to the trial's run: `test_log_likelihood`,
`test_ais_log_likelihood`, each with `_se` (standard error over test images:
what a comparison between trials needs) and `_mc_se` (Monte Carlo error), and
the per-image values as the artifact `test_per_image.json`, so that two trials
can be compared by the paired difference over the same images.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
import ray


@ray.remote
def evaluate_on_test(tune_checkpoint, points: int, num_temps: int, num_chains: int) -> dict:
    from avb import checkpoint
    from avb.data import load_dataset
    from avb.evaluate import ais_per_point, per_point_log_likelihood
    from trainables.avb_trainable import pick_device

    device = pick_device()
    with tune_checkpoint.as_directory() as folder:
        trainer = checkpoint.load(f"{folder}/{checkpoint.FILENAME}", device)
    x = load_dataset(trainer.cfg, device).eval_batch(points, "test")
    is_values, is_mc = per_point_log_likelihood(trainer, x, trainer.cfg.eval_samples)
    ais_values, ais_mc = ais_per_point(trainer, x, num_temps=num_temps, num_chains=num_chains)
    return {"test_log_likelihood": (is_values.tolist(), is_mc.tolist()),
            "test_ais_log_likelihood": (ais_values.tolist(), ais_mc.tolist()), "step": trainer.step_count}


def final_evaluation(best_results: list, settings: dict, resources: dict, client: mlflow.MlflowClient,
                     runs: dict[int, str]) -> dict[int, dict]:
    """{trial number: per-image values and summaries} for the given Tune results (best first)."""
    import torch

    from avb.evaluate import summary

    task = evaluate_on_test.options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
    refs = {}
    for r in best_results:
        best = r.get_best_checkpoint("log_likelihood", "max") or r.checkpoint
        if best is not None:
            refs[r.config["trial_number"]] = task.remote(best, settings["points"], settings["num_temps"],
                                                         settings["num_chains"])
    out = {}
    for number, ref in refs.items():
        values = ray.get(ref)
        metrics = {}
        for name in ("test_log_likelihood", "test_ais_log_likelihood"):
            per_image, mc = values[name]
            metrics |= summary(torch.tensor(per_image), torch.tensor(mc), name)
        out[number] = {"per_image": values, "metrics": metrics}
        run_id = runs.get(number)
        if run_id:
            for key, value in metrics.items():
                client.log_metric(run_id, key, value)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "test_per_image.json"
                path.write_text(json.dumps({"checkpoint_step": values["step"], **{
                    k: {"values": v[0], "mc_se": v[1]} for k, v in values.items() if k != "step"}}))
                client.log_artifact(run_id, str(path))
    return out
