"""A study outlives its driver: Ctrl-C, SIGTERM and kill -9, then --resume from the command line; also with the
stores on PostgreSQL (behind an MLflow server, as cluster.yaml runs them) and the local results folder gone.

Every test counts exactly: Optuna states and MLflow runs (status, fate), one run per trial, each iteration
logged once, nothing left RUNNING."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from ray import cloudpickle

from tests.conftest import start_mlflow_server
from tests.study_utils import (
    FAST,
    checkpoints,
    fault_figures,
    metric_steps,
    optuna_states,
    run_study,
    run_summary,
    sqlite,
    start_study,
    stop,
    trial_runs,
    wait_for_checkpoint,
)

pytestmark = pytest.mark.slow
TRIALS = 4
SHORT = [*FAST, "--num-trials", str(TRIALS), "--scheduler", "none", "--concurrency", "1", "--iterations", "3"]


def assert_exactly_finished(uri: str, storage: str, study: str, scenario: str = "", seconds: float = 0) -> None:
    fault_figures(uri, storage, study, scenario, seconds)
    assert run_summary(uri, study) == Counter({("FINISHED", "finished"): TRIALS})
    parent, runs = trial_runs(uri, study)
    assert parent.info.status == "FINISHED"
    assert len({r.data.tags["trial_number"] for r in runs}) == TRIALS  # no duplicate run
    for run in runs:
        assert metric_steps(uri, run) == [20, 40, 60]  # every iteration logged exactly once
    assert optuna_states(storage, study) == Counter({("COMPLETE", "finished"): TRIALS})
    assert all(sorted(t.intermediate_values) == [1, 2, 3]
               for t in optuna.load_study(study_name=study, storage=storage).trials)


def assert_resumable(proc, out: str, code: int, results, study: str) -> None:
    """The records an interrupted study leaves: exit code, the project's resume hint, no run RUNNING, no trial
    FAIL."""
    assert proc.returncode == code, out[-3000:]
    assert f"--resume --study-name {study}" in out  # the hint names the project's command, not Tune's
    assert "Tuner.restore" not in out
    uri, storage = sqlite(results / "mlflow.db"), sqlite(results / "optuna.db")
    fates = run_summary(uri, study)
    assert ("RUNNING", None) not in fates and fates[("KILLED", "interrupted")] >= 1
    states = optuna_states(storage, study)
    assert ("FAIL", "crashed") not in states and states[("RUNNING", None)] >= 1  # resumable, not failed
    parent, _ = trial_runs(uri, study)
    assert parent.info.status == "KILLED"


def test_sigterm_then_kill_9_of_the_resumed_driver_then_resume(tmp_path):
    """SIGTERM (what a scheduler or `ray stop` sends), --resume, kill -9 of that resumed driver once it has
    written a checkpoint of its own, --resume again: exactly finished. Ctrl-C is the first half of the copy
    test below."""
    results = tmp_path / "results"
    proc = start_study(["--results-dir", str(results), "--study-name", "stopped", *SHORT], cwd=tmp_path)
    wait_for_checkpoint(results / "ray", proc)
    assert_resumable(proc, stop(proc, signal.SIGTERM), 143, results, "stopped")
    resume = ["--resume", "--study-name", "stopped", "--results-dir", str(results)]
    written = checkpoints(results / "ray")
    proc = start_study(resume, cwd=tmp_path)
    wait_for_checkpoint(results / "ray", proc, besides=written)
    stop(proc, signal.SIGKILL)
    t0 = time.monotonic()
    out = run_study(resume, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert_exactly_finished(sqlite(results / "mlflow.db"), sqlite(results / "optuna.db"), "stopped",
                            "SIGTERM, --resume, kill -9, then --resume (last resume run)", time.monotonic() - t0)


def test_new_head_resumes_from_postgresql_and_the_storage_path_alone(tmp_path, postgres):
    """cluster.yaml's durable set-up: MLflow server on PostgreSQL with artifacts outside the head, Optuna on
    PostgreSQL, Tune's state under --storage-path. The driver is killed and its results folder deleted."""
    server, uri = start_mlflow_server(postgres.create_database("mlflow"), tmp_path / "artifacts")
    optuna_url = postgres.create_database("optuna")
    storage_path = tmp_path / "shared-storage"
    stores = ["--tracking-uri", uri, "--optuna-storage", optuna_url, "--storage-path", str(storage_path)]
    try:
        head = tmp_path / "old-head"
        proc = start_study(["--results-dir", str(head / "results"), "--study-name", "durable", *stores, *SHORT],
                           cwd=tmp_path)
        wait_for_checkpoint(storage_path, proc)
        stop(proc, signal.SIGKILL)
        shutil.rmtree(head, ignore_errors=True)  # the old head and whatever it kept locally are gone

        new_head = tmp_path / "new-head"
        new_head.mkdir()
        t0 = time.monotonic()
        out = run_study(["--resume", "--study-name", "durable", *stores], cwd=new_head)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert_exactly_finished(uri, optuna_url, "durable", "kill -9, head folder deleted, resume on PostgreSQL "
                                "(resume run)", time.monotonic() - t0)
        assert "***@" in (storage_path / "durable" / "avb-study.json").read_text()  # no password saved
        for path in (storage_path / "durable").rglob("*"):  # settings, tuner.pkl, the searcher's state, ...
            assert not path.is_file() or postgres.password.encode() not in path.read_bytes(), path
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_resume_writes_to_the_stores_it_is_given(tmp_path):
    """Ctrl-C, then --resume of a copy with --tracking-uri / --optuna-storage pointing at the copy: it finishes
    there and leaves the original alone."""
    results = tmp_path / "results"
    proc = start_study(["--results-dir", str(results), "--study-name", "copied", *SHORT], cwd=tmp_path)
    wait_for_checkpoint(results / "ray", proc)
    assert_resumable(proc, stop(proc, signal.SIGINT), 130, results, "copied")
    copy = tmp_path / "copy"
    shutil.copytree(results, copy)
    before = {p.name: p.read_bytes() for p in results.glob("*.db")}
    ray_before = sorted(p.relative_to(results) for p in (results / "ray").rglob("*"))
    t0 = time.monotonic()
    out = run_study(["--resume", "--study-name", "copied", "--results-dir", str(copy), "--storage-path",
                     str(copy / "ray"), "--tracking-uri", sqlite(copy / "mlflow.db"), "--optuna-storage",
                     sqlite(copy / "optuna.db")], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "replaces the study's" in out.stdout  # said in one line
    assert f"go to {results / 'mlartifacts' / 'copied'}" in out.stdout  # MLflow keeps the artifact location
    assert {p.name: p.read_bytes() for p in results.glob("*.db")} == before
    assert sorted(p.relative_to(results) for p in (results / "ray").rglob("*")) == ray_before  # no trial folder
    assert_exactly_finished(sqlite(copy / "mlflow.db"), sqlite(copy / "optuna.db"), "copied",
                            "SIGINT, then --resume of a copy (resume run)", time.monotonic() - t0)


def descends_from(pid: int, ancestor: int) -> bool:
    """Whether `ancestor` is the parent, grandparent, ... of `pid` (read from /proc)."""
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def kill_trial_workers(driver: int, timeout: float = 60) -> int:
    """kill -9 the Ray worker processes that run this study's trials (what a node's OOM killer does): Ray titles
    an actor's process `ray::AVBTrainable...`; the study's local Ray descends from its driver, so another test's
    study is left alone. Returns how many."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if cmdline.read_bytes().startswith(b"ray::AVBTrainable"):
                    pids.append(int(cmdline.parent.name))
            except OSError:
                pass
        pids = [pid for pid in pids if descends_from(pid, driver)]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        if pids:
            return len(pids)
        time.sleep(0.1)
    return 0


def lose_the_crash(experiment: Path) -> None:
    """Tune's saved state as a driver killed right after the crash leaves it: the crashed trial RUNNING, no error
    file named (Ray 2.60 saves that much even when the driver lives, as CI saw: study/tune_state.py), and still
    live in the searcher's ConcurrencyLimiter."""
    state_file, search_file = (max(experiment.glob(f"{name}-*.json")) for name in ("experiment_state",
                                                                                   "search_gen_state"))
    state, search = json.loads(state_file.read_text()), cloudpickle.loads(search_file.read_bytes())
    limiter = search["name:ConcurrencyLimiter"]
    for i, (trial_json, meta_json) in enumerate(state["trial_data"]):
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        trial["status"], meta["error_filename"], meta["pickled_error_filename"] = "RUNNING", None, None
        state["trial_data"][i] = [json.dumps(trial), json.dumps(meta)]
        limiter["live_trials"].add(trial["trial_id"])
        limiter["num_unfinished_live_trials"] += 1
    state_file.write_text(json.dumps(state))
    search_file.write_bytes(cloudpickle.dumps(search))


def test_retry_crashed_runs_a_crashed_trial_again_as_a_new_trial(tmp_path):
    """A trial whose worker is killed under --max-failures 0 crashes, with the iterations it reported; the summary
    names --retry-crashed; --resume --retry-crashed runs it again from the start as a new trial with the same
    parameters, and the study ends well (exit 0). Also where Tune's saved state lost the crash: the trial is not
    resumed beside its retry, and its concurrency slot (--concurrency 1) goes to the retry."""
    results, iterations = tmp_path / "results", 20
    # 20 iterations: the kill must land while the trial still trains (with 8, a fast CI machine finished the
    # trial between its first checkpoint and the kill, and the study ended well)
    args = ["--results-dir", str(results), "--study-name", "retried", *FAST, "--num-trials", "1", "--scheduler",
            "none", "--iterations", str(iterations), "--steps-per-iteration", "200", "--max-failures", "0",
            "--concurrency", "1"]
    proc = start_study(args, cwd=tmp_path)
    wait_for_checkpoint(results / "ray", proc)
    assert kill_trial_workers(proc.pid) >= 1
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "CRASHED trial 0: " in out, out[-3000:]
    assert "--resume --study-name retried" in out and "--retry-crashed" in out
    lose_the_crash(results / "ray" / "retried")
    resumed = run_study(["--resume", "--study-name", "retried", "--results-dir", str(results), "--retry-crashed"],
                        cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Ray Tune had saved crashed trial(s) 0 as unfinished" in resumed.stdout  # not resumed beside its retry
    assert "retrying 1 crashed trial(s) from the start as new trials: 0" in resumed.stdout
    assert "(retried as trial 1: finished)" in resumed.stdout, resumed.stdout[-3000:]
    uri, storage = sqlite(results / "mlflow.db"), sqlite(results / "optuna.db")
    assert run_summary(uri, "retried") == Counter({("FAILED", "crashed"): 1, ("FINISHED", "finished"): 1})
    assert trial_runs(uri, "retried")[0].info.status == "FINISHED"
    crashed, retry = optuna.load_study(study_name="retried", storage=storage).trials
    assert crashed.state.name == "FAIL" and crashed.user_attrs["fate"] == "crashed"
    assert crashed.user_attrs["iterations"] == max(crashed.intermediate_values) >= 1  # not 0 (issue 18)
    assert retry.state.name == "COMPLETE" and retry.user_attrs["retry_of"] == 0 and retry.params == crashed.params
    assert "baseline" not in retry.user_attrs and sorted(retry.intermediate_values) == list(range(1, iterations + 1))
