"""AIS for the best trials of an image preset, after the study (the cheap IS bound ranks trials during it).

Each evaluation runs as a Ray task with the trials' own resources, on the
trial's last Tune checkpoint, and is logged to the trial's MLflow run as
`ais_log_likelihood` / `ais_log_likelihood_se`.
"""

from __future__ import annotations

import mlflow
import ray


@ray.remote
def ais_for_checkpoint(tune_checkpoint, points: int, num_temps: int, num_chains: int) -> tuple[float, float]:
    import torch

    from avb import checkpoint
    from avb.data import load_dataset
    from avb.evaluate import ais_log_likelihood

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tune_checkpoint.as_directory() as folder:
        trainer = checkpoint.load(f"{folder}/{checkpoint.FILENAME}", device)
    x = load_dataset(trainer.cfg, device).eval_batch(points)
    return ais_log_likelihood(trainer, x, num_temps=num_temps, num_chains=num_chains)


def final_ais(best_results: list, settings: dict, resources: dict, tracking_uri: str, experiment_id: str) -> dict:
    """{trial_id: (ais mean, se)} for the given results; each logged to its trial's MLflow run."""
    task = ais_for_checkpoint.options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
    refs = {r.metrics["trial_id"]: task.remote(r.checkpoint, settings["points"], settings["num_temps"],
                                               settings["num_chains"]) for r in best_results if r.checkpoint}
    client = mlflow.MlflowClient(tracking_uri)
    out = {}
    for trial_id, ref in refs.items():
        mean, se = ray.get(ref)
        out[trial_id] = (mean, se)
        runs = client.search_runs([experiment_id], f"tags.trial_id = '{trial_id}'")
        for run in runs:
            client.log_metric(run.info.run_id, "ais_log_likelihood", mean)
            client.log_metric(run.info.run_id, "ais_log_likelihood_se", se)
    return out
