"""Real services with their logins, started the way cluster.yaml starts them, for the security tests:

- `MlflowAuthServer`: `mlflow server --app-name basic-auth`, its settings written by `python -m study.cluster_auth
  auth-config`, the backend URL, the admin password and the Flask key in its environment only;
- `TokenCluster`: Ray nodes started by `ray start --block` with RAY_AUTH_MODE=token and a token file (mode 600),
  each in its own session and stopped by its own SIGTERM (never `ray stop`, which stops every Ray here);
- `status`: one HTTP request's status code; `leaks`: a grep of files and texts for secret values.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.postgres import free_port

ROOT = Path(__file__).resolve().parents[1]
CLEAN = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "AVB_OPTUNA_STORAGE", "AVB_DATA_ROOT")


def base_env(**extra: str) -> dict:
    """This environment without any store, login or cluster it names (MLFLOW_*, RAY_AUTH_*, ...), plus `extra`;
    RAY_ADDRESS=local as in study_utils.study_env."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN and not k.startswith("MLFLOW_")}
    return env | {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"} | extra


def token_file(folder: Path) -> tuple[str, Path]:
    """A new Ray token in a file only its owner reads, as `python -m study.cluster_auth secrets` makes it."""
    token, path = secrets.token_hex(32), folder / "ray_token"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(token)
    path.chmod(0o600)
    return token, path


def short_tmp() -> Path:
    """A private temp folder with a short path: Ray's unix sockets live under it (108-byte limit)."""
    return Path(tempfile.mkdtemp(prefix="avbs", dir="/tmp"))


def status(url: str, method: str = "GET", body: dict | None = None, bearer: str | None = None,
           basic: tuple[str, str] | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if bearer is not None:
        headers["Authorization"] = f"Bearer {bearer}"
    if basic is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    data = json.dumps(body).encode() if body is not None else None
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=120) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def get_json(url: str, bearer: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {bearer}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def stop_session(proc: subprocess.Popen, grace: float = 60) -> None:
    """SIGTERM to the process (Ray's `--block` and MLflow's server stop their children), then SIGKILL to what is
    left of its session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=30)


class MlflowAuthServer:
    def __init__(self, folder: Path, backend: str, auth_db: str, admin_password: str, host: str = "127.0.0.1"):
        self.folder, self.host, self.port = folder, host, free_port()
        self.uri = f"http://{host}:{self.port}"
        self.env = base_env(MLFLOW_BACKEND_STORE_URI=backend, AVB_MLFLOW_AUTH_DB=auth_db,
                            MLFLOW_AUTH_CONFIG_PATH=str(folder / "basic_auth.ini"),
                            MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
                            MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(32))
        self.log = folder / "server.log"
        self.proc = None

    def __enter__(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "study.cluster_auth", "auth-config", self.env["MLFLOW_AUTH_CONFIG_PATH"]],
                       env=self.env, cwd=ROOT, check=True, timeout=60)
        cmd = [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", self.host,
               "--port", str(self.port), "--workers", "1", "--artifacts-destination", str(self.folder / "artifacts")]
        if self.host != "127.0.0.1":  # MLflow's host check: loopback and private ranges only, by default
            cmd += ["--allowed-hosts", f"{self.host}:{self.port},127.0.0.1:{self.port},localhost:{self.port}"]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            if status_or_none(self.uri + "/health") == 200:
                return self
            time.sleep(1)
        raise AssertionError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc):
        stop_session(self.proc, grace=30)

    def add_user(self, user: str, password: str) -> subprocess.CompletedProcess:
        """`python -m study.cluster_auth user`, as cluster.yaml runs it on the head."""
        env = base_env(MLFLOW_AUTH_ADMIN_PASSWORD=self.env["MLFLOW_AUTH_ADMIN_PASSWORD"],
                       MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password)
        return subprocess.run([sys.executable, "-m", "study.cluster_auth", "user", "--uri", self.uri], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=120)


def status_or_none(url: str) -> int | None:
    try:
        return status(url)
    except OSError:
        return None


class TokenCluster:
    """A head and workers on this machine, each `ray start --block` with the cluster's token in its environment
    (and whatever else a node's ~/.avb-env.sh would export: `node_env`)."""

    def __init__(self, folder: Path, token_path: Path, node_env: dict[str, str]):
        self.tmp, self.token = short_tmp(), token_path.read_text()
        self.env = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), RAY_TMPDIR=str(self.tmp),
                            **node_env)
        self.port, self.dashboard_port, self.client_port = free_port(), free_port(), free_port()
        self.folder, self.nodes, self.agent_ports = folder, [], []

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def add_node(self, head: bool = False, num_cpus: int = 1) -> None:
        from ray.util import get_node_ip_address

        self.agent_ports.append(free_port())  # each node's dashboard agent (HTTP), which can start jobs there
        ports = ["--dashboard-agent-listen-port", str(self.agent_ports[-1]), "--metrics-export-port",
                 str(free_port()), "--runtime-env-agent-port", str(free_port())]
        where = ["--head", "--port", str(self.port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
                 str(self.dashboard_port), "--include-dashboard", "true", "--ray-client-server-port",
                 str(self.client_port), "--temp-dir", str(self.tmp / "ray")] if head else \
            ["--address", f"{get_node_ip_address()}:{self.port}"]
        log = open(self.folder / f"node-{len(self.nodes)}.log", "w")  # noqa: SIM115  (closed with the node)
        self.nodes.append((subprocess.Popen(
            [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus", str(num_cpus), *where,
             *ports], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))

    def wait_for_nodes(self, count: int, timeout: float = 240) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc, log in self.nodes:
                assert proc.poll() is None, Path(log.name).read_text()[-3000:]
            try:
                nodes = self.state("nodes")
                if len([n for n in nodes if n["state"] == "ALIVE"]) == count:
                    return nodes
            except OSError:
                pass
            time.sleep(1)
        raise AssertionError(f"{count} Ray nodes did not come up")

    def state(self, kind: str) -> list[dict]:
        """Ray's state API (through the dashboard, with the token): nodes, actors, ..."""
        answer = get_json(f"{self.dashboard}/api/v0/{kind}?limit=1000&detail=true", self.token)
        return answer["data"]["result"]["result"]

    def stop(self) -> None:
        for proc, log in reversed(self.nodes):
            stop_session(proc)
            log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def leaks(values: dict[str, str], folders: list[Path], texts: dict[str, str]) -> list[str]:
    """'NAME in WHERE' for every secret value found in a file under `folders` or in one of `texts`."""
    found = []
    for folder in folders:
        for path in (p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{name} in {path}" for name, value in values.items() if value.encode() in data]
    for where, text in texts.items():
        found += [f"{name} in {where}" for name, value in values.items() if value in text]
    return found
