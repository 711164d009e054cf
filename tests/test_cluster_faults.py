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

pytestmark = pytest.mark.slow


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
        while len(list(storage.glob("*/checkpoint_000001"))) < 2:  # both nodes busy, each trial 2 iterations in
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
