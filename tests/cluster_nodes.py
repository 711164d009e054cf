"""A cluster node's home folder, on this machine: cluster.yaml's commands run by bash with HOME pointing at a
temporary folder that holds what `ray up` would have synced there (the secrets folder ~/.avb-secrets)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
# What a user puts in ~/.avb-study/secrets.env: a PostgreSQL server without a database name, two passwords.
USER_DB = "postgresql+psycopg://avb:Secret42xyz9@avb-db.abc123.us-west-2.rds.amazonaws.com:5432"
SECRETS = {"AVB_DB_URL": USER_DB, "AVB_MLFLOW_ADMIN_PASSWORD": "admin-Pw-7f3k9q2m", "AVB_MLFLOW_PASSWORD":
           "study-Pw-4h8j1x6c"}
RAY_TOKEN = "3f9c2a7e1b5d8c4f6a0e9b2d7c1f5a3e8b6d4c2a0f9e7d5b3c1a8f6e4d2b0c9a"


def load_config() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


def the_command(config: dict, key: str, needle: str) -> str:
    found = [c for c in config.get(key) or [] if needle in c]
    assert len(found) == 1, f"expected exactly one {key} entry containing {needle!r}, got {found}"
    return found[0]


def write_secrets(home: Path, values: dict | None = None, token: str | None = RAY_TOKEN) -> Path:
    """~/.avb-secrets as `ray up` syncs it from ~/.avb-study: secrets.env (NAME='value' lines) and ray_token.
    A value of None leaves its line out; token None leaves the token file out."""
    folder = home / ".avb-secrets"
    folder.mkdir(parents=True, exist_ok=True)
    values = SECRETS if values is None else values
    (folder / "secrets.env").write_text("# test secrets\n" + "".join(
        f"{k}='{v}'\n" for k, v in values.items() if v is not None))
    if token is not None:
        (folder / "ray_token").write_text(token)
    for f in folder.iterdir():
        f.chmod(0o644)  # as a careless copy would be: the node's setup must tighten it
    return folder


def bash(cmd: str, home: Path, **env) -> subprocess.CompletedProcess:
    """Run cmd in bash with HOME=home (a stand-in for a node's home) and nothing else inherited, except PATH
    (with this Python first) and PYTHONPATH (the checkout, which the nodes pip-install)."""
    path = env.pop("PATH", f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    return subprocess.run(["bash", "-c", cmd], env={"HOME": str(home), "PATH": path, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120)


def env_setup_command(config: dict) -> str:
    """setup_commands' step that checks the secrets and writes ~/.avb-env.sh."""
    return the_command(config, "setup_commands", ".avb-env.sh")


def node_env(config: dict, home: Path, values: dict | None = None) -> dict[str, str]:
    """The environment a node's shells get from ~/.avb-env.sh after `ray up` with these secrets."""
    write_secrets(home, values)
    setup = bash(env_setup_command(config), home)
    assert setup.returncode == 0, setup.stderr
    out = bash('source "$HOME/.avb-env.sh" && env -0', home)
    assert out.returncode == 0 and not out.stderr, out.stderr
    return dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)
