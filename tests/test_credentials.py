"""study.credentials: secrets masked wherever the study prints or saves text, the Ray token read in Ray's order
(a bad token file is one line, not Ray's C++ abort), logins never taken from a flag that is saved, and a study
given a credential the wrong way stops in one line with the secret masked."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import PERMISSION_DENIED, RESOURCE_DOES_NOT_EXIST, UNAUTHENTICATED

from study.credentials import (
    CredentialError,
    check_tracking_uri,
    mask_secrets,
    notes_on_files,
    ray_auth_mode,
    ray_token,
)
from study.settings import StudyError, first_line, masked
from tests.secured import base_env
from tests.study_utils import copy_run_py
from trainables.tracking import refused_login

TOKEN = "9c1e5a7b3d2f4e6a8b0c1d3e5f7a9b2c4d6e8f0a1b3c5d7e9f2a4b6c8d0e1f3a"


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A home folder of its own, and no credential from this machine's environment."""
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_USERNAME",
                 "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_every_known_secret_is_masked_in_printed_and_saved_text(home, monkeypatch):
    (home / "token").write_text(TOKEN + "\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "token"))
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "study-password-1")
    (home / ".mlflow").mkdir()
    (home / ".mlflow" / "credentials").write_text("[mlflow]\nmlflow_tracking_username = study\n"
                                                  "mlflow_tracking_password = file-password-2\n")
    text = (f"postgresql+psycopg://avb:db-pass-3@host:5432/optuna token {TOKEN} pw study-password-1 "
            "file file-password-2 http://u:http-pass-4@h:5000/x")
    shown = masked(text)
    for secret in (TOKEN, "study-password-1", "file-password-2", "db-pass-3", "http-pass-4"):
        assert secret not in shown, shown
    assert shown.count("***") == 5 and "postgresql+psycopg://avb:***@host:5432/optuna" in shown
    assert first_line(RuntimeError(f"refused {TOKEN}\nsecond line")) == "refused ***"
    assert mask_secrets("nothing secret here") == "nothing secret here"


def test_the_ray_token_is_read_in_rays_order(home, monkeypatch):
    assert ray_token() is None and ray_auth_mode("10.0.0.1:6379") == "disabled"
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("default-token-123\n")
    assert ray_token() == ("default-token-123", str(home / ".ray" / "auth_token"))
    # a token file on this machine turns token mode on only for a cluster found here, as ray.init does
    assert (ray_auth_mode("auto"), ray_auth_mode(""), ray_auth_mode("10.0.0.1:6379")) == ("token", "token",
                                                                                          "disabled")
    (home / "cluster_token").write_text(TOKEN)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "cluster_token"))
    assert ray_token() == (TOKEN, str(home / "cluster_token"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-the-environment")
    assert ray_token() == ("from-the-environment", "$RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    for bad, words in ((home / "missing", "cannot be read (No such file or directory)"), (home, "cannot be read"),
                       (home / "empty", "is empty")):
        (home / "empty").write_text("")
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(bad))
        with pytest.raises(CredentialError, match=r"RAY_AUTH_TOKEN_PATH .*" + words.replace("(", r"\(")
                           .replace(")", r"\)")):
            ray_token()
    assert issubclass(CredentialError, StudyError)  # study/run.py: one line, exit code 2


def test_a_login_inside_an_http_tracking_uri_is_refused():
    with pytest.raises(CredentialError, match="carries a login") as err:
        check_tracking_uri("http://study:pw-123456@10.0.0.5:5000", "--tracking-uri")
    assert "pw-123456" not in str(err.value)
    for fine in ("http://10.0.0.5:5000", "sqlite:////tmp/x.db", "postgresql+psycopg://u:p@h/db"):
        check_tracking_uri(fine, "--tracking-uri")


def test_credential_files_readable_by_others_are_named(home, monkeypatch):
    (home / ".mlflow").mkdir()
    creds = home / ".mlflow" / "credentials"
    creds.write_text("[mlflow]\nmlflow_tracking_password = x\n")
    creds.chmod(0o644)
    token = home / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    assert notes_on_files() == [f"{creds} holds a secret and other users can read it (mode 644); chmod 600 {creds}"]
    creds.chmod(0o600)
    assert notes_on_files() == []


def test_a_trial_refused_by_the_tracking_server_says_what_its_node_lacks():
    for code, status in ((UNAUTHENTICATED, 401), (PERMISSION_DENIED, 403)):
        line = refused_login(MlflowException("You are not authenticated.", error_code=code), "http://10.0.0.5:5000")
        assert f"({status})" in line and "MLFLOW_TRACKING_PASSWORD" in line and "ray start" in line
    assert refused_login(MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), "http://h:5000") == ""
    assert refused_login(ValueError("x"), "http://h:5000") == ""


# ----------------------------------------------------------------------------- study/run.py
def study(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    script = copy_run_py(tmp_path / "submitted")
    return subprocess.run([sys.executable, str(script), "--results-dir", str(tmp_path / "results"), *args],
                          cwd=tmp_path, env=base_env(HOME=str(tmp_path), **env), capture_output=True, text=True,
                          timeout=300)


def one_line(out: subprocess.CompletedProcess, message: str) -> str:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stdout[-2000:] + out.stderr[-2000:]
    assert not (Path(out.args[1]).parents[1] / "results" / "ray").exists()
    return lines[0]


@pytest.mark.slow
def test_a_login_in_the_tracking_uri_stops_the_study_masked(tmp_path):
    out = study(tmp_path, ["--tracking-uri", "http://study:pw-in-a-flag-99@127.0.0.1:9"])
    assert "pw-in-a-flag-99" not in one_line(out, "--tracking-uri carries a login") + out.stdout


@pytest.mark.slow
def test_a_database_password_in_a_flag_is_named_and_masked(tmp_path):
    out = study(tmp_path, ["--optuna-storage", "postgresql+psycopg://avb:db-pw-in-a-flag@127.0.0.1:9/optuna"])
    one_line(out, "the Optuna storage postgresql+psycopg://avb:***@127.0.0.1:9/optuna cannot be opened")
    assert "--optuna-storage carries a password, which ps and your shell history show" in out.stdout
    assert "db-pw-in-a-flag" not in out.stdout + out.stderr


@pytest.mark.slow
def test_an_unreadable_ray_token_file_is_one_line_before_ray_starts(tmp_path):
    """Token mode with a token path that cannot be read: Ray would abort with a C++ stack trace."""
    with socket.socket() as listener:  # something answers at the address, as a Ray head would
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        out = study(tmp_path, ["--address", f"127.0.0.1:{listener.getsockname()[1]}"], RAY_AUTH_MODE="token",
                    RAY_AUTH_TOKEN_PATH=str(tmp_path / "no-such-token"))
    one_line(out, f"RAY_AUTH_TOKEN_PATH {tmp_path / 'no-such-token'}: the Ray token cannot be read")
    assert "Traceback" not in out.stderr and "RAY_CHECK" not in out.stderr


@pytest.mark.parametrize("resume", [False, True])
def test_store_names_in_existence_errors_are_masked(tmp_path, resume):
    """A study name taken on PostgreSQL stores, and a resume into an Optuna database that lacks the study, name
    the stores with their passwords masked (both printed them in clear)."""
    import dataclasses

    import mlflow
    import optuna

    from study.settings import StudySettings
    from study.stores import check_existence

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    if not resume:  # the name is taken in both stores
        client.create_experiment("taken")
        optuna.create_study(study_name="taken", storage=storage)
    pg = "postgresql+psycopg://avb:hunter2@db.example:5432/"
    settings = dataclasses.replace(StudySettings(), study_name="taken", resume=resume, tracking_uri=pg + "mlflow",
                                   optuna_storage=pg + "optuna", storage_path=str(tmp_path / "ray"))
    with pytest.raises(StudyError) as err:
        check_existence(settings, client, storage, saved=None)
    text = str(err.value)
    assert "hunter2" not in text and "postgresql+psycopg://avb:***@db.example:5432/optuna" in text
    assert ("exists already" if not resume else "would split the study") in text
