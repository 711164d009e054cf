"""cluster.yaml's secrets, offline: made on your machine by `python -m study.cluster_auth secrets`, synced to
every node as ~/.avb-secrets, and checked there by setup_commands' guard, which stops `ray up` in one line while
one is missing (run here by bash with a stand-in home folder, no AWS)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster_nodes import ROOT, SECRETS, bash, env_setup_command, load_config, write_secrets


def guard(home: Path) -> subprocess.CompletedProcess:
    return bash(env_setup_command(load_config()), home)


def assert_stops_in_one_line(out: subprocess.CompletedProcess, home: Path, *words: str) -> None:
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cluster.yaml: "), out.stderr
    for word in (*words, "docs/security.md"):
        assert word in lines[0], lines[0]
    assert not (home / ".avb-env.sh").exists()  # nothing of the node's set-up happened


@pytest.mark.parametrize("case, values, words", [
    ("no admin password", {**SECRETS, "AVB_MLFLOW_ADMIN_PASSWORD": None}, ["AVB_MLFLOW_ADMIN_PASSWORD"]),
    ("empty admin password", {**SECRETS, "AVB_MLFLOW_ADMIN_PASSWORD": ""}, ["AVB_MLFLOW_ADMIN_PASSWORD"]),
    ("short study password", {**SECRETS, "AVB_MLFLOW_PASSWORD": "short"}, ["AVB_MLFLOW_PASSWORD", "12 characters"]),
    ("placeholder URL", {**SECRETS, "AVB_DB_URL": "postgresql+psycopg://avb:CHANGE-ME@CHANGE-ME:5432"},
     ["AVB_DB_URL"]),
    ("two missing", {"AVB_DB_URL": SECRETS["AVB_DB_URL"]}, ["AVB_MLFLOW_ADMIN_PASSWORD AVB_MLFLOW_PASSWORD"]),
])
def test_ray_up_stops_in_one_line_while_a_secret_is_missing(tmp_path, case, values, words):
    write_secrets(tmp_path, values)
    assert_stops_in_one_line(guard(tmp_path), tmp_path, "~/.avb-study/secrets.env", *words)


@pytest.mark.parametrize("missing", ["ray_token", "secrets.env"])
def test_ray_up_stops_in_one_line_without_the_token_or_the_secrets_file(tmp_path, missing):
    (write_secrets(tmp_path) / missing).unlink()
    assert_stops_in_one_line(guard(tmp_path), tmp_path, "python -m study.cluster_auth secrets")


def test_the_secrets_folder_is_made_once_and_ray_up_waits_for_the_database_url(tmp_path):
    folder = tmp_path / "laptop" / ".avb-study"
    made = subprocess.run([sys.executable, "-m", "study.cluster_auth", "secrets", "--dir", str(folder)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert folder.stat().st_mode & 0o777 == 0o700
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {"ray_token": 0o600, "secrets.env": 0o600}
    before = {p.name: p.read_text() for p in folder.iterdir()}
    assert re.fullmatch(r"[0-9a-f]{64}", before["ray_token"])
    passwords = re.findall(r"^AVB_MLFLOW_(?:ADMIN_)?PASSWORD='([^']+)'$", before["secrets.env"], re.M)
    assert len(passwords) == 2 and len(set(passwords)) == 2 and all(len(p) >= 24 for p in passwords)
    assert not any(p in made.stdout + made.stderr for p in [before["ray_token"], *passwords])  # never printed

    again = subprocess.run([sys.executable, "-m", "study.cluster_auth", "secrets", "--dir", str(folder)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and {p.name: p.read_text() for p in folder.iterdir()} == before  # kept

    node = tmp_path / "node"  # what `ray up` syncs to a node, before the user set AVB_DB_URL
    (node / ".avb-secrets").mkdir(parents=True)
    (node / ".bashrc").write_text("# Ubuntu's\n")
    for p in folder.iterdir():
        (node / ".avb-secrets" / p.name).write_text(p.read_text())
    assert_stops_in_one_line(guard(node), node, "AVB_DB_URL")
    env_file = node / ".avb-secrets" / "secrets.env"
    env_file.write_text(env_file.read_text().replace("AVB_DB_URL=''", f"AVB_DB_URL='{SECRETS['AVB_DB_URL']}'"))
    ok = guard(node)
    assert ok.returncode == 0 and not ok.stderr, ok.stderr
    assert (node / ".avb-env.sh").is_file()


def test_cluster_yaml_holds_no_secret_and_syncs_them_from_outside_the_checkout():
    text = (ROOT / "cluster.yaml").read_text()
    assert not re.search(r"://[^/\s:@'\"]+:[^/\s@'\"$]+@", text), "a URL with a password in cluster.yaml"
    mounts = load_config()["file_mounts"]
    local = Path(mounts["~/.avb-secrets"]).expanduser()
    assert mounts["~/.avb-secrets"].startswith("~/") and not local.is_relative_to(ROOT)
