"""The trainable in this process (no Ray cluster): it reads the validation split only; the test split is read
by the final evaluation alone. And a checkpoint Ray deleted is replaced by the newest that exists."""

from __future__ import annotations

import math

import mlflow
import pytest

from avb.data import Dataset
from search_spaces import load_preset
from study.final_eval import evaluate_on_test
from trainables import avb_trainable
from trainables.avb_trainable import AVBTrainable, TrialSettings

FIXED = {"dataset": "digits", "arch": "mlp", "hidden": 8, "adv_hidden": 8, "adv_inner": 8, "latent_dim": 2,
         "noise_dim": 2, "batch_size": 16, "eval_points": 8, "eval_samples": 64, "basis_hidden": 8,
         "eval_ais_temps": 10}


class Watched(Dataset):
    """A Dataset that records which splits it hands out images of (`eval_batch`; `sample` is training data)."""

    reads: list[str] = []

    def eval_batch(self, n, split="valid", seed=0):
        Watched.reads.append(split)
        return super().eval_batch(n, split, seed)


def local_trainable(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("s", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp, tags={"kind": "study"}).info.run_id
    settings = TrialSettings(preset="mnist", iterations=2, steps_per_iteration=3, tracking_uri=uri,
                             experiment_id=exp, parent_run_id=parent, study_name="s", overrides=FIXED)

    class Local(AVBTrainable):
        def setup(self, config):
            super().setup(config, settings=settings)

    return Local, client, exp


@pytest.mark.slow
def test_trials_read_validation_only_and_the_final_evaluation_reads_test(tmp_path, monkeypatch):
    def watched_load(cfg, device):
        data = load_dataset(cfg, device)
        return Watched(data.train, data.valid, data.test, data.binarize)

    from avb.data import load_dataset

    monkeypatch.setattr(avb_trainable, "load_dataset", watched_load)
    Watched.reads.clear()
    Local, client, exp = local_trainable(tmp_path)
    trial = Local(config={"trial_number": 0, "lr": 1e-3, "objective": "avb"})
    results = [trial.train() for _ in range(2)]
    assert all(math.isfinite(r["log_likelihood"]) for r in results)
    assert "test" not in Watched.reads and "valid" in Watched.reads
    saved = trial.save(str(tmp_path / "ckpt"))

    monkeypatch.setattr("avb.data.load_dataset", watched_load)
    Watched.reads.clear()
    values = evaluate_on_test._function(saved.checkpoint, points=4, num_temps=3, num_chains=2)
    assert "test" in Watched.reads
    assert len(values["test_ais_log_likelihood"][0]) == 4
    trial.stop()


def test_a_vanished_checkpoint_is_replaced_by_the_newest_one(tmp_path):
    from ray import tune

    from trainables.avb_trainable import newest_checkpoint

    for i in (0, 2, 5):
        (tmp_path / f"checkpoint_00000{i}").mkdir()
    missing = tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000003"))
    assert newest_checkpoint(missing).path.endswith("checkpoint_000005")
    assert newest_checkpoint(tune.Checkpoint.from_directory(str(tmp_path / "none" / "checkpoint_000001"))) is None


@pytest.mark.parametrize("preset", ["synthetic", "mnist_mlp", "mnist", "celeba"])
def test_presets_build_a_config(preset):
    assert load_preset(preset).BASE.steps > 0
