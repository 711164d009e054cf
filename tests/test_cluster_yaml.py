"""Offline checks of the Ray cluster launcher config (cluster.yaml).

Validation uses Ray's own check, the one `ray up` runs before touching AWS:
``validate_config(prepare_config(cfg))``. For provider ``aws``,
``prepare_config`` only merges ``ray/autoscaler/aws/defaults.yaml`` from the
installed package (no network, no AWS credentials; the test below blocks
sockets to prove it), and ``validate_config`` checks the result against
``ray/autoscaler/ray-schema.json`` with jsonschema. The schema rejects unknown
keys at the top level, inside ``auth`` and inside each node type, but NOT
inside ``provider`` or ``node_config`` (both are open objects); node_config is
therefore checked separately against botocore's offline EC2 RunInstances model.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import pytest

from tests.cluster_nodes import ROOT, SECRETS, USER_DB, bash, load_config, node_env, the_command

jsonschema = pytest.importorskip("jsonschema")
from ray.autoscaler._private.util import prepare_config, validate_config  # noqa: E402

COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


@pytest.fixture
def cfg() -> dict:
    """A fresh parse of cluster.yaml for every test (tests mutate it)."""
    return load_config()


@pytest.fixture
def no_network(monkeypatch):
    """Make any attempt to open a network connection fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def ray_validate(config: dict) -> dict:
    """Ray's own offline validation, as `ray up` runs it; returns the prepared config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def commands(config: dict, key: str) -> list[str]:
    return list(config.get(key) or [])


def cli_args_after(command: str, prefix: str) -> list[str]:
    """The arguments that follow `prefix` in a shell command, up to the first
    redirection, background `&`, `;` or `&&`."""
    start = command.index(prefix) + len(prefix)
    args = []
    for tok in shlex.split(command[start:], posix=True):
        if tok in {"&", "&&", ";", "||", "|", "fi", "fi;"} or tok[0] in "<>" or tok.startswith("2>"):
            break
        args.append(tok.rstrip(";"))
    return args


# --------------------------------------------------------------------------
# (a) Ray's own validation accepts the file, offline
# --------------------------------------------------------------------------


def test_cluster_yaml_passes_ray_validation_offline(cfg, no_network):
    prepared = ray_validate(cfg)
    # prepare_config merged the AWS defaults and the per-type worker bounds.
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head"
    assert set(prepared["available_node_types"]) == {"head", "gpu_worker"}
    assert prepared["available_node_types"]["head"]["max_workers"] == 0


def test_raw_file_also_passes_the_shipped_schema(cfg):
    """The unprepared file is valid against ray-schema.json as well (no key is
    only accepted because prepare_config happened to drop it)."""
    import json
    import os

    import ray.autoscaler

    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    with open(schema_path) as f:
        schema = json.load(f)
    jsonschema.validate(cfg, schema)


# --------------------------------------------------------------------------
# (b) misspelled top-level keys are rejected
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "good, typo",
    [
        ("max_workers", "max_worker"),
        ("head_start_ray_commands", "head_start_ray_command"),
        ("file_mounts", "file_mount"),
        ("setup_commands", "setup_command"),
    ],
)
def test_misspelled_top_level_key_fails_validation(cfg, good, typo):
    assert good in cfg
    cfg[typo] = cfg.pop(good)
    with pytest.raises(jsonschema.ValidationError) as err:
        ray_validate(cfg)
    assert typo in str(err.value)


# --------------------------------------------------------------------------
# (c) misspelled keys inside a node type / auth are rejected too
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node_type, good, typo",
    [
        ("gpu_worker", "max_workers", "max_worker"),
        ("gpu_worker", "min_workers", "min_worker"),
        ("head", "resources", "resource"),
    ],
)
def test_misspelled_node_type_key_fails_validation(cfg, node_type, good, typo):
    node = cfg["available_node_types"][node_type]
    assert good in node
    node[typo] = node.pop(good)
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(cfg)


def test_misspelled_auth_key_fails_validation(cfg):
    cfg["auth"]["ssh_usr"] = cfg["auth"].pop("ssh_user")
    with pytest.raises(jsonschema.ValidationError) as err:
        ray_validate(cfg)
    assert "ssh_usr" in str(err.value)


def test_non_integer_resources_fail_validation(cfg):
    # The schema requires integer resource counts: fractional GPUs belong to
    # trials (--gpus-per-trial), not to node types.
    cfg["available_node_types"]["gpu_worker"]["resources"] = {"GPU": 0.5}
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(cfg)


def test_node_config_is_valid_ec2_run_instances_input(cfg):
    """Ray passes node_config straight to EC2 RunInstances and its schema does
    not look inside; botocore's bundled service model can, offline."""
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    shape = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    for name, node in cfg["available_node_types"].items():
        try:
            validate_parameters(dict(node["node_config"], MinCount=1, MaxCount=1), shape)
        except ParamValidationError as err:
            pytest.fail(f"{name}.node_config: {err}")

    broken = copy.deepcopy(cfg["available_node_types"]["gpu_worker"]["node_config"])
    broken["BlockDeviceMappings"][0]["Ebs"]["VolumeSiz"] = broken["BlockDeviceMappings"][0]["Ebs"].pop("VolumeSize")
    with pytest.raises(ParamValidationError, match="VolumeSiz"):
        validate_parameters(dict(broken, MinCount=1, MaxCount=1), shape)


# --------------------------------------------------------------------------
# (d) what the commands do
# --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_every_command_is_valid_bash(cfg):
    """YAML folding (>-) must not break the shell syntax of any command."""
    for key in COMMAND_LISTS:
        for cmd in commands(cfg, key):
            result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
            assert result.returncode == 0, f"{key}: {cmd!r}: {result.stderr}"


def test_setup_installs_requirements_from_the_synced_checkout(cfg):
    # The checkout is synced to ~/avb on every node ...
    assert cfg["file_mounts"].get("~/avb") == "."
    assert (ROOT / "requirements.txt").is_file()
    # ... and installed from there (requirements.txt ends in `-e .`, which pip
    # resolves against the current directory).
    install = the_command(cfg, "setup_commands", "requirements.txt")
    assert re.search(r"cd ~/avb\s*&&.*pip install (.* )?-r requirements\.txt", install), install


def test_cluster_ray_version_matches_requirements(cfg):
    install = the_command(cfg, "setup_commands", "requirements.txt")
    requirements = (ROOT / "requirements.txt").read_text()
    pinned = re.search(r"^ray(\[[^\]]*\])?==(\S+)", requirements, re.M)
    assert pinned, "requirements.txt does not pin ray"
    extra = re.findall(r"ray\[[^\]]*\]==([\w.]+)", install)
    for version in extra:
        assert version == pinned.group(2), f"cluster.yaml installs ray {version}, requirements pin {pinned.group(2)}"


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_every_node_starts_ray_with_token_authentication(cfg, key):
    """RAY_AUTH_MODE=token and the token file are exported before `ray start` on head and workers alike."""
    cmd = the_command(cfg, key, "ray start")
    before = cmd[: cmd.index("ray start")]
    assert re.search(r"export [^;]*RAY_AUTH_MODE=token", before), cmd
    assert 'RAY_AUTH_TOKEN_PATH="$HOME/.avb-secrets/ray_token"' in before, cmd


def test_head_starts_ray_head_with_autoscaler(cfg):
    from ray.scripts.scripts import start

    cmd = the_command(cfg, "head_start_ray_commands", "ray start")
    ctx = start.make_context("start", cli_args_after(cmd, "ray start"))
    assert ctx.params["head"] is True
    assert ctx.params["autoscaling_config"] == "~/ray_bootstrap_config.yaml"
    # The dashboard and its Jobs API: loopback only, reached through `ray dashboard cluster.yaml` (SSH).
    assert ctx.params["dashboard_host"] == "127.0.0.1"


def test_head_starts_an_mlflow_tracking_server(cfg, monkeypatch):
    from mlflow.cli import cli as mlflow_cli

    cmd = the_command(cfg, "head_start_ray_commands", "mlflow server")
    # Parse the options with mlflow's own CLI: a misspelled flag raises here.
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    args = cli_args_after(cmd, "mlflow server")
    p = mlflow_cli.commands["server"].make_context("server", args).params
    assert p["app_name"] == "basic-auth"  # MLflow's login
    assert p["host"] == "0.0.0.0"  # reachable from the workers (inside the VPC) and through the SSH tunnel
    assert int(p["port"]) == 5000
    # No database URL on the command line (`ps` shows it): the server reads $MLFLOW_BACKEND_STORE_URI.
    assert p["backend_store_uri"] is None and not any("postgresql" in a for a in args)
    assert 'MLFLOW_BACKEND_STORE_URI="$AVB_DB_URL/mlflow"' in cmd
    assert p["serve_artifacts"] is True
    assert str(p["artifacts_destination"]).startswith("s3://")
    # MLflow 3's host-header check stays on.
    assert p.get("allowed_hosts") in (None, "") or "*" not in p["allowed_hosts"]
    assert not p.get("disable_security_middleware")
    # Detached from the SSH session that `ray up` uses, output kept in a log.
    assert "nohup" in cmd and "& }" in cmd
    assert "> ~/mlflow/server.log" in cmd


def fake_head_tools(folder: Path, code: str) -> str:
    """Stand-ins for `mlflow` (writes its arguments and the environment it got) and `curl` (answers `code` to
    the login probe, succeeds on the final wait); returns a PATH with them first."""
    folder.mkdir(exist_ok=True)
    (folder / "mlflow").write_text(
        '#!/bin/sh\nprintf "%s\\n" "$@" > "$HOME/args.tmp" && env > "$HOME/env.tmp" && '
        'mv "$HOME/env.tmp" "$HOME/mlflow-env" && mv "$HOME/args.tmp" "$HOME/mlflow-args"\n')
    (folder / "curl").write_text(f'#!/bin/sh\ncase "$*" in *--retry*) exit 0;; *http_code*) printf {code};; '
                                 '*) exit 7;; esac\n')
    for f in folder.iterdir():
        f.chmod(0o755)
    return f"{folder}:{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"


def wait_for(path: Path, timeout: float = 20) -> Path:
    deadline = time.monotonic() + timeout  # the server is started in the background
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return path


def test_head_mlflow_command_gives_the_server_its_secrets_through_the_environment(cfg, tmp_path):
    """The head's command as bash runs it, with stand-ins for `mlflow` and `curl`: the server gets the database
    URL, its auth settings and the admin password from ~/.avb-secrets, in its environment only."""
    cmd = the_command(cfg, "head_start_ray_commands", "mlflow server")
    node_env(cfg, tmp_path)
    ok = bash(cmd, tmp_path, PATH=fake_head_tools(tmp_path / "bin", "000"))
    assert ok.returncode == 0, ok.stderr
    args = wait_for(tmp_path / "mlflow-args").read_text().splitlines()
    env = dict(line.split("=", 1) for line in (tmp_path / "mlflow-env").read_text().splitlines() if "=" in line)
    assert env["MLFLOW_BACKEND_STORE_URI"] == f"{USER_DB}/mlflow"
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == SECRETS["AVB_MLFLOW_ADMIN_PASSWORD"]
    assert len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64
    assert not any(v in "\n".join(args) for v in SECRETS.values())  # nothing secret in `ps`
    # The auth app's settings: its user database "mlflow_auth", a file only its owner reads.
    ini = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini == tmp_path / "mlflow" / "basic_auth.ini" and ini.stat().st_mode & 0o777 == 0o600
    assert f"database_uri = {USER_DB}/mlflow_auth" in ini.read_text()
    assert SECRETS["AVB_MLFLOW_ADMIN_PASSWORD"] not in ini.read_text()


@pytest.mark.parametrize("code, started", [("200", False), ("401", False)])
def test_head_mlflow_command_never_keeps_a_server_without_login(cfg, tmp_path, code, started):
    """A server already answering: with a login (401) it is kept; without one (200, started before this file had
    auth) `ray up` stops in one line."""
    cmd = the_command(cfg, "head_start_ray_commands", "mlflow server")
    node_env(cfg, tmp_path)
    out = bash(cmd, tmp_path, PATH=fake_head_tools(tmp_path / "bin", code))
    time.sleep(1)
    assert not (tmp_path / "mlflow-args").exists()
    if code == "200":
        assert out.returncode != 0 and out.stderr.strip().count("\n") == 0, out.stderr
        assert "without login" in out.stderr and "pkill" in out.stderr
    else:
        assert out.returncode == 0, out.stderr


def test_every_node_gets_the_stores_and_a_data_root(cfg, tmp_path):
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    env = node_env(cfg, tmp_path)
    assert env["AVB_HOME"] == f"{tmp_path}/avb"
    assert env["AVB_DATA_ROOT"] == f"{tmp_path}/avb-data" and (tmp_path / "avb-data").is_dir()
    optuna_url, user = make_url(env["AVB_OPTUNA_STORAGE"]), make_url(USER_DB)
    assert optuna_url.drivername == "postgresql+psycopg" and optuna_url.database == "optuna"
    assert (optuna_url.host, optuna_url.username, optuna_url.password) == (user.host, user.username, user.password)
    # The driver named in the URL is installed (requirements.txt); no connection is made.
    create_engine(env["AVB_OPTUNA_STORAGE"]).dispose()
    # The Ray token and the study's MLflow login; the server's URL and the admin password stay out.
    assert (env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN_PATH"]) == ("token", f"{tmp_path}/.avb-secrets/ray_token")
    assert (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"]) == ("study",
                                                                                  SECRETS["AVB_MLFLOW_PASSWORD"])
    assert "AVB_DB_URL" not in env and SECRETS["AVB_MLFLOW_ADMIN_PASSWORD"] not in "\n".join(env.values())
    # ~/.avb-env.sh holds no secret (it reads them from ~/.avb-secrets), and the secrets are the owner's only.
    text = (tmp_path / ".avb-env.sh").read_text()
    assert not any(v in text for v in SECRETS.values()) and "Secret42" not in text
    for path in (tmp_path / ".avb-secrets").iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    assert (tmp_path / ".avb-secrets").stat().st_mode & 0o777 == 0o700

    # Every later shell (hence `ray start`, trials, the driver) sources it with the venv ...
    bashrc = (tmp_path / ".bashrc").read_text()
    assert "source ~/venv/bin/activate; source ~/.avb-env.sh" in bashrc
    # ... and a later `ray up` with other secrets changes what they see, without a second .bashrc line.
    other = "postgresql+psycopg://avb:Other7abcdef@10.0.3.4:5432"
    assert node_env(cfg, tmp_path, {**SECRETS, "AVB_DB_URL": other})["AVB_OPTUNA_STORAGE"] == f"{other}/optuna"
    assert (tmp_path / ".bashrc").read_text() == bashrc


def test_no_sqlite_in_the_cluster_path(cfg):
    """Comments aside, nothing in the file may point a store at SQLite."""
    assert "sqlite" not in json.dumps(cfg).lower()


def test_git_metadata_is_synced_for_the_code_version(cfg):
    """The driver on the head reads the commit from ~/avb/.git."""
    excluded = [p for p in cfg.get("rsync_exclude") or [] if fnmatch(".git", p) or fnmatch(".git/HEAD", p)]
    assert not excluded, f"rsync_exclude drops .git: {excluded}"
    for name in cfg.get("rsync_filter") or []:  # dir-merge filters: .gitignore files
        ignore = ROOT / name
        if ignore.is_file():
            lines = {line.strip().rstrip("/") for line in ignore.read_text().splitlines()}
            assert not lines & {".git", "/.git", ".git*"}, f"{name} would keep .git off the nodes"


def test_trials_get_a_reachable_mlflow_uri(cfg):
    worker = the_command(cfg, "worker_start_ray_commands", "ray start")
    assert "MLFLOW_TRACKING_URI=http://$RAY_HEAD_IP:5000" in worker
    # exported before `ray start`, so the raylet (and every trial) inherits it
    assert worker.index("MLFLOW_TRACKING_URI") < worker.index("ray start")


# --------------------------------------------------------------------------
# node types, storage and exposure
# --------------------------------------------------------------------------


def test_no_trials_on_the_head_and_gpu_workers_autoscale(cfg):
    types = cfg["available_node_types"]
    assert types["head"]["resources"].get("CPU") == 0
    gpu = types["gpu_worker"]
    assert gpu["min_workers"] == 0
    assert 0 < gpu["max_workers"] <= cfg["max_workers"]
    assert gpu["node_config"]["InstanceType"].startswith(("g4", "g5", "g6", "p3", "p4", "p5"))


def test_image_ids_are_explicit(cfg):
    """Without ImageId (or with "latest_dlami") Ray falls back to an Ubuntu
    18.04 DLAMI, whose Python is too old for this project."""
    images = {name: t["node_config"].get("ImageId", "") for name, t in cfg["available_node_types"].items()}
    for name, image in images.items():
        assert image.startswith("ami-") and image.lower() != "latest_dlami", (name, image)
    assert len(set(images.values())) == 1, "head and workers should share one AMI (same Python)"


def test_workers_have_an_instance_profile_for_s3(cfg):
    """Trials upload checkpoints to the S3 storage_path from the worker that
    runs them; Ray gives an instance profile only to the head by default."""
    profile = cfg["available_node_types"]["gpu_worker"]["node_config"].get("IamInstanceProfile")
    assert profile and (profile.get("Name") or profile.get("Arn"))


def test_mlflow_and_dashboard_ports_not_opened_to_the_internet(cfg):
    rules = cfg["provider"].get("security_group", {}).get("IpPermissions", [])
    for rule in rules:
        lo, hi = rule.get("FromPort", -1), rule.get("ToPort", -1)
        world = any(r.get("CidrIp") == "0.0.0.0/0" for r in rule.get("IpRanges", [])) or any(
            r.get("CidrIpv6") == "::/0" for r in rule.get("Ipv6Ranges", [])
        )
        for port in (5000, 8265):
            covered = lo == -1 or lo <= port <= hi
            assert not (world and covered), f"port {port} opened to the internet by {rule}"
