"""A study against a real MLflow server with its login (`mlflow server --app-name basic-auth`, set up as
cluster.yaml's head does), its stores on the suite's PostgreSQL as on the cluster (runs, users and the Optuna
study in three databases of one server, the Optuna URL from $AVB_OPTUNA_STORAGE as the nodes have it). The
same login path on a SQLite-backed server was a second parameter, dropped for the suite's time (issue 18):
the login checks do not depend on the server's store.

- REST calls without a login get 401, a wrong login 401;
- a study without a login, or with a wrong password, is a one-line error before any trial, with nothing written;
- a study logged in as the study's user records every trial; the user is made by `study.cluster_auth user`;
- no password and no Ray token lands in anything the study wrote, printed or put on a command line.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest

from tests.secured import MlflowAuthServer, base_env, leaks, short_tmp, status, token_file
from tests.study_utils import FAST, copy_run_py, run_summary

pytestmark = pytest.mark.slow
ADMIN_PASSWORD, STUDY_PASSWORD = "admin-Pw-8d2k4m9x1q", "study-Pw-3j7h5n2c6v"
STUDY = ["--num-trials", "2", "--scheduler", "none", *FAST, "--iterations", "1", "--steps-per-iteration", "5"]
DENIED = {  # what an unauthenticated client tries: read, the UI's API, write, artifacts, the user list
    "GET /api/2.0/mlflow/experiments/search": ("GET", "/api/2.0/mlflow/experiments/search?max_results=5", None),
    "GET /ajax-api/2.0/mlflow/experiments/search": ("GET", "/ajax-api/2.0/mlflow/experiments/search", None),
    "POST /api/2.0/mlflow/experiments/create": ("POST", "/api/2.0/mlflow/experiments/create", {"name": "x"}),
    "GET /api/2.0/mlflow-artifacts/artifacts": ("GET", "/api/2.0/mlflow-artifacts/artifacts", None),
    "GET /api/2.0/mlflow/users/get": ("GET", "/api/2.0/mlflow/users/get?username=admin", None),
}


@pytest.fixture
def stores(request, tmp_path):
    """(server, Optuna URL for the study's environment, the database password)."""
    postgres = request.getfixturevalue("postgres")
    with MlflowAuthServer(tmp_path / "server", postgres.create_database("mlflow"),
                          postgres.create_database("mlflow_auth"), ADMIN_PASSWORD) as server:
        yield server, postgres.create_database("optuna"), postgres.password


def run(folder: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    """study/run.py as `ray submit` runs it, while every process's command line is read twice a second."""
    script = copy_run_py(folder / "submitted")
    seen, done = [], threading.Event()

    def watch():
        while not done.wait(0.5):
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    seen.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
                except OSError:
                    pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = subprocess.run([sys.executable, str(script), *args], cwd=folder, env=env, capture_output=True, text=True,
                             timeout=600)
    finally:
        done.set()
        watcher.join()
    out.command_lines = "\n".join(set(seen))
    return out


def assert_refused(out: subprocess.CompletedProcess, message: str, results: Path, server, study: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stdout[-2000:] + out.stderr[-3000:]
    assert "401" in lines[0] and "MLFLOW_TRACKING_PASSWORD" in lines[0]
    assert not results.exists()  # nothing written: no store file, no Ray folder, no settings
    admin = mlflow.MlflowClient(server.uri)
    assert admin.get_experiment_by_name(study) is None


def test_a_study_needs_the_servers_login_and_leaves_no_secret(stores, tmp_path, monkeypatch, request):
    server, optuna_url, db_password = stores
    codes = {name: status(server.uri + path, method, body) for name, (method, path, body) in DENIED.items()}
    codes["wrong password"] = status(server.uri + DENIED["GET /api/2.0/mlflow/experiments/search"][1],
                                     basic=("admin", "not-the-password"))
    print("UNAUTHENTICATED MLflow", codes)
    assert set(codes.values()) == {401}, codes
    assert status(server.uri + "/health") == 200  # liveness only

    made = server.add_user("study", STUDY_PASSWORD)  # cluster.yaml's step on the head
    assert made.returncode == 0 and "created" in made.stdout, made.stderr
    assert STUDY_PASSWORD not in made.stdout + made.stderr

    token, token_path = token_file(tmp_path / "secrets")  # the local Ray's token: the study may not leak it either
    ray_tmp = short_tmp()  # the local Ray's session folder (logs), grepped below
    request.addfinalizer(lambda: shutil.rmtree(ray_tmp, ignore_errors=True))
    results = tmp_path / "results"
    env = base_env(RAY_AUTH_TOKEN_PATH=str(token_path), RAY_TMPDIR=str(ray_tmp), RAY_DEDUP_LOGS="0",
                   MLFLOW_TRACKING_USERNAME="study",
                   AVB_OPTUNA_STORAGE=optuna_url)
    args = ["--tracking-uri", server.uri, "--results-dir", str(results), "--study-name", "guarded", *STUDY]

    # No login, then a wrong password: one line each, before anything is written.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")  # this test's own client, which checks the server
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    no_login = run(tmp_path, args, {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_USERNAME"})
    assert_refused(no_login, "requires a login (401) and none is set", results, server, "guarded")
    wrong = run(tmp_path, args, env | {"MLFLOW_TRACKING_PASSWORD": "wrong-password-123"})
    assert_refused(wrong, "refused the login of user 'study'", results, server, "guarded")
    assert "wrong-password-123" not in wrong.stdout + wrong.stderr

    # The study's login: every trial recorded.
    out = run(tmp_path, args, env | {"MLFLOW_TRACKING_PASSWORD": STUDY_PASSWORD})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert run_summary(server.uri, "guarded") == Counter({("FINISHED", "finished"): 2})
    storage = optuna_url  # the URL of the environment
    assert len(optuna.load_study(study_name="guarded", storage=storage).trials) == 2
    experiment = mlflow.MlflowClient(server.uri).get_experiment_by_name("guarded")
    runs = mlflow.MlflowClient(server.uri).search_runs([experiment.experiment_id])

    # No secret in any file the study wrote (results, Ray's state and logs, MLflow's artifacts), nor in what it
    # printed, MLflow's params and tags, or any command line seen while it ran.
    values = {"the study's password": STUDY_PASSWORD, "the admin password": ADMIN_PASSWORD, "the Ray token": token}
    values |= {"the database password": db_password}
    records = "\n".join(f"{r.data.params} {r.data.tags}" for r in runs)
    assert len(leaks(values, [], {"a control": " ".join(values.values())})) == len(values)  # the grep finds them
    found = leaks(values, [results, ray_tmp, server.folder / "artifacts"],
                  {"the study's output": out.stdout + out.stderr, "MLflow params and tags": records,
                   "command lines": out.command_lines, "the MLflow server's log": server.log.read_text()})
    print(f"GREP for {len(values)} secrets in {results}, {ray_tmp}, {server.folder / 'artifacts'}, output, "
          f"params/tags, the server's log, {out.command_lines.count(chr(10)) + 1} command lines: {len(found)} found")
    assert not found, found

    # Rotation (docs/security.md): the study's password by the same `user` step, the admin's by `admin-password`.
    search = server.uri + DENIED["GET /api/2.0/mlflow/experiments/search"][1]
    rotated = server.add_user("study", "study-Pw-rotated-0k2")
    assert rotated.returncode == 0 and "password set" in rotated.stdout, rotated.stderr
    assert (status(search, basic=("study", STUDY_PASSWORD)), status(search, basic=("study", "study-Pw-rotated-0k2"))) \
        == (401, 200)
    asked = subprocess.run([sys.executable, "-m", "study.cluster_auth", "admin-password", "--uri", server.uri],
                           input=f"{ADMIN_PASSWORD}\nadmin-Pw-rotated-7q1\nadmin-Pw-rotated-7q1\n", env=base_env(),
                           capture_output=True, text=True, timeout=120, start_new_session=True)  # no terminal: stdin
    assert asked.returncode == 0 and "admin password changed" in asked.stdout, asked.stderr
    assert (status(search, basic=("admin", ADMIN_PASSWORD)), status(search, basic=("admin", "admin-Pw-rotated-7q1"))) \
        == (401, 200)
