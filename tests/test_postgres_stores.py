"""The cluster's stores on a real PostgreSQL server (the session's `postgres`
fixture): an MLflow tracking store and an Optuna RDBStorage, each in its own
database of one server, and an `mlflow server` with that backend."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pytest
import sqlalchemy

from tests.postgres import free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # starts a PostgreSQL server (and an MLflow server)


def tables(url: str) -> set[str]:
    engine = sqlalchemy.create_engine(url)
    try:
        return set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_mlflow_and_optuna_stores_on_two_databases_of_one_server(postgres, tmp_path):
    mlflow_url = postgres.create_database("mlflow")
    optuna_url = postgres.create_database("optuna")
    assert mlflow_url.startswith("postgresql+psycopg://") and mlflow_url != optuna_url

    # MLflow: the SQLAlchemy store itself (what `mlflow server --backend-store-uri` runs on).
    client = mlflow.MlflowClient(tracking_uri=mlflow_url)
    exp = client.create_experiment("pg-check", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, tags={"study": "pg-check"})
    for step, value in enumerate([-2.5, -1.25, -0.5]):
        client.log_metric(run.info.run_id, "log_likelihood", value, step=step)
    client.set_terminated(run.info.run_id)

    reread = mlflow.MlflowClient(tracking_uri=mlflow_url)  # a fresh client: nothing cached
    history = reread.get_metric_history(run.info.run_id, "log_likelihood")
    assert [(m.step, m.value) for m in history] == [(0, -2.5), (1, -1.25), (2, -0.5)]
    assert reread.get_run(run.info.run_id).info.status == "FINISHED"
    assert reread.get_experiment_by_name("pg-check").experiment_id == exp

    # Optuna: an RDBStorage on the other database.
    storage = optuna.storages.RDBStorage(optuna_url)
    study = optuna.create_study(study_name="pg-check", storage=storage, direction="maximize")
    trial = study.ask()
    x = trial.suggest_float("x", 0.0, 1.0)
    study.tell(trial, -((x - 0.5) ** 2))
    pruned = study.ask()
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)

    reloaded = optuna.load_study(study_name="pg-check", storage=optuna_url)
    states = [t.state for t in reloaded.get_trials(deepcopy=False)]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED]
    assert reloaded.best_trial.params == {"x": x}

    # Each store keeps its own schema (and its own alembic_version) in its own database.
    mlflow_tables, optuna_tables = tables(mlflow_url), tables(optuna_url)
    assert {"alembic_version", "experiments", "runs", "metrics"} <= mlflow_tables
    assert {"alembic_version", "studies", "trials"} <= optuna_tables
    assert "studies" not in mlflow_tables and "runs" not in optuna_tables


def wait_for_health(url: str, proc: subprocess.Popen, log, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    log.seek(0)
    pytest.fail(f"mlflow server did not answer {url} within {timeout} s:\n{log.read()[-3000:]}")


def test_mlflow_server_on_postgres_answers_and_proxies_artifacts(postgres, tmp_path):
    """`mlflow server` as the head runs it (PostgreSQL backend, proxied artifact
    destination), with a local folder where the cluster uses s3://."""
    backend = postgres.create_database("mlflow_server")
    artifacts = tmp_path / "artifacts"
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with open(tmp_path / "server.log", "w+") as log:
        # Its own process group: the server starts uvicorn workers, stopped with it below.
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_health(f"{base}/health", proc, log)

            client = mlflow.MlflowClient(tracking_uri=base)
            exp = client.create_experiment("served")
            run = client.create_run(exp)
            client.log_metric(run.info.run_id, "elbo", -1.5, step=3)
            (tmp_path / "note.txt").write_text("checkpoint stand-in")
            client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"), artifact_path="best")
            client.set_terminated(run.info.run_id)

            assert client.get_metric_history(run.info.run_id, "elbo")[0].value == -1.5
            assert [f.path for f in client.list_artifacts(run.info.run_id, "best")] == ["best/note.txt"]
            # The artifact went through the server to --artifacts-destination ...
            assert [p.name for p in artifacts.rglob("note.txt")] == ["note.txt"]
            # ... and the run to PostgreSQL: a client on the database alone sees it.
            assert mlflow.MlflowClient(tracking_uri=backend).get_run(run.info.run_id).info.status == "FINISHED"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            except ProcessLookupError:
                pass


def test_cluster_head_creates_its_three_databases(postgres, tmp_path):
    """cluster.yaml's head_setup_commands step that creates the "mlflow", "optuna" and "mlflow_auth" databases,
    run by bash against this server with the URL in a stand-in node's ~/.avb-secrets/secrets.env, twice
    (idempotent)."""
    from tests.cluster_nodes import SECRETS, bash, load_config, the_command, write_secrets

    cmd = the_command(load_config(), "head_setup_commands", "CREATE DATABASE")
    server = postgres.admin_url.removesuffix("/postgres")  # the server, no database: as AVB_DB_URL is written
    write_secrets(tmp_path, {**SECRETS, "AVB_DB_URL": server})
    first = bash(cmd, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "created: mlflow, optuna, mlflow_auth" in first.stdout
    again = bash(cmd, tmp_path)
    assert again.returncode == 0 and "none, all exist" in again.stdout, again.stderr
    assert postgres.password not in cmd and "AVB_DB_URL=" in cmd  # the URL reaches Python by its environment

    optuna_url = f"{server}/optuna"
    optuna.create_study(study_name="cluster", storage=optuna_url).optimize(lambda t: t.suggest_float("x", 0, 1), 1)
    assert len(optuna.load_study(study_name="cluster", storage=optuna_url).trials) == 1
    assert mlflow.MlflowClient(f"{server}/mlflow").get_experiment_by_name("Default") is not None


def test_a_bad_postgresql_tracking_uri_is_one_masked_line_within_seconds(postgres):
    """A wrong password or a missing database on --tracking-uri: one line naming the store with its password
    masked, in seconds (MLflow's own store retried for about 100 s and printed 36-45 warnings)."""
    from study.settings import StudyError
    from study.stores import check_mlflow

    good = postgres.create_database("mlflow")
    wrong_password = good.replace(postgres.password, "not-the-password")
    for url in (wrong_password, postgres.url("no_such_database")):
        t0 = time.monotonic()
        with pytest.raises(StudyError, match=r"the MLflow store .*:\*\*\*@.* cannot be opened") as err:
            check_mlflow(url)
        assert time.monotonic() - t0 < 15 and postgres.password not in str(err.value)
        assert "not-the-password" not in str(err.value)
    assert check_mlflow(good).search_experiments() is not None  # the right URL still opens
