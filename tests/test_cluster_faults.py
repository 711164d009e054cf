"""A study on a Ray cluster of several nodes on this machine (`ray.cluster_utils.Cluster`), and a node lost
in the middle of it."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.study_utils import (
    FAST,
    fault_figures,
    metric_steps,
    optuna_states,
    run_summary,
    sqlite,
    start_study,
    trial_runs,
)

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_clusters")]  # one multi-node Ray here at a time


def test_node_loss_every_trial_finishes_from_its_last_checkpoint(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head runs no trial
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    results = tmp_path / "results"
    try:
        cluster.wait_for_nodes()
        proc = start_study(["--address", cluster.address, "--results-dir", str(results), "--study-name", "lossy",
                            "--num-trials", "3", "--scheduler", "none", *FAST, "--iterations", "6"], cwd=tmp_path)
        storage = results / "ray" / "lossy"
        deadline = time.monotonic() + 300
        # both nodes busy, each trial a checkpoint in (any: the study keeps only the best ones and the latest,
        # so a given checkpoint_00000N may be gone again before this loop looks)
        while len({p.parent for p in storage.glob("*/checkpoint_*")}) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.2)
        t_lost = time.monotonic()
        cluster.remove_node(workers[0], allow_graceful=False)  # a lost node: its trial dies mid-iteration
        out, _ = proc.communicate(timeout=600)
        seconds = time.monotonic() - t_lost
    finally:
        cluster.shutdown()
    assert proc.returncode == 0, out[-3000:]
    assert "retries it from its last checkpoint" in out

    uri = sqlite(results / "mlflow.db")
    fault_figures(uri, sqlite(results / "optuna.db"), "lossy", "worker node lost mid-study (node loss to end)",
                  seconds)
    assert run_summary(uri, "lossy") == Counter({("FINISHED", "finished"): 3})  # 0 duplicates, 0 RUNNING
    _, runs = trial_runs(uri, "lossy")
    for run in runs:
        assert metric_steps(uri, run) == [20, 40, 60, 80, 100, 120]  # each iteration logged once
    assert optuna_states(sqlite(results / "optuna.db"), "lossy") == Counter({("COMPLETE", "finished"): 3})
    # the trial on the lost node continued from its checkpoint: fewer iterations since its restore than in all
    import json

    restored = []
    for trial_dir in (results / "ray" / "lossy").glob("AVBTrainable_*"):
        lines = (trial_dir / "result.json").read_text().splitlines()
        last = json.loads(lines[-1])
        if last["iterations_since_restore"] < last["training_iteration"]:
            restored.append(last)
    assert restored, "no trial was restored from a checkpoint"
    assert all(r["training_step"] == 120 for r in restored)


def test_a_host_check_that_refuses_the_trials_address_stops_the_study_before_any_trial(tmp_path):
    """The driver reaches MLflow on loopback, trials on other nodes by the head's address; a server whose
    --allowed-hosts leaves that address out (MLflow 3's default outside private ranges) answers them 403:
    one line naming --allowed-hosts, before any trial or record."""
    import subprocess
    import sys
    import urllib.request

    import mlflow
    from ray.cluster_utils import Cluster

    from tests.conftest import free_port
    from tests.study_utils import run_study

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "0.0.0.0", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                               "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri, cluster = f"http://127.0.0.1:{port}", None
    try:
        deadline = time.monotonic() + 240
        while True:  # the server's start (MLflow 3 spawns its job runners) before Ray's: raylet waits only 30 s
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(1)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        out = run_study(["--address", cluster.address, "--tracking-uri", uri, "--results-dir",
                         str(tmp_path / "results"), "--study-name", "refused", *FAST], cwd=tmp_path)
        names = [e.name for e in mlflow.MlflowClient(uri).search_experiments()]
    finally:
        if cluster is not None:
            cluster.shutdown()
        server.terminate()
        server.wait(timeout=30)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines and lines[-1].startswith("error: "), out.stdout[-2000:] + out.stderr[-2000:]
    assert "403 Invalid Host header" in lines[-1] and "--allowed-hosts " in lines[-1], lines[-1]
    assert "refused" not in names and not (tmp_path / "results" / "ray" / "refused").exists()
