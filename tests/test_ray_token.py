"""A Ray cluster of a head and a worker node on this machine, each started by `ray start` with token
authentication the way cluster.yaml starts them (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH naming a file of mode
600, the dashboard on 127.0.0.1), beside an MLflow server with its login:

- without the token, or with another cluster's, the Jobs API answers 401 / 403, Ray Client is turned away (its
  proxy logs the missing token), and study/run.py --address stops with one line before it starts the study;
- with the token a small study runs to the end with its trials on both nodes, which log in to MLflow with the
  login their node's environment gives them (as ~/.avb-env.sh does on a cluster);
- the token and the passwords land in nothing the study wrote or printed, nor in Ray's logs.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.secured import MlflowAuthServer, TokenCluster, base_env, leaks, status, token_file
from tests.study_utils import FAST, copy_run_py, run_summary

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray_clusters")]  # one multi-node Ray here at a time
ADMIN_PASSWORD, STUDY_PASSWORD = "admin-Pw-5t8w2e6r9y", "study-Pw-7u1i4o8p3a"
LOGIN = {"MLFLOW_TRACKING_USERNAME": "study", "MLFLOW_TRACKING_PASSWORD": STUDY_PASSWORD}
CLIENT = """import ray, sys
try:
    ray.init(sys.argv[1], logging_level="ERROR")
    print("connected", ray.cluster_resources().get("CPU"))
except Exception as err:
    print("refused", type(err).__name__)
"""


def ray_client(address: str, env: dict) -> str:
    out = subprocess.run([sys.executable, "-c", CLIENT, f"ray://{address}"], env=env, capture_output=True, text=True,
                         timeout=180)
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-500:]


def study(folder: Path, args: list[str], env: dict) -> subprocess.CompletedProcess:
    script = copy_run_py(folder / "submitted")
    return subprocess.run([sys.executable, str(script), *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)


def assert_one_line(out: subprocess.CompletedProcess, message: str, results: Path) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and message in lines[0], out.stdout[-2000:] + out.stderr[-3000:]
    assert "docs/security.md" in lines[0] and "check --address" not in lines[0]
    assert not (results / "ray").exists()  # no Ray state, no saved settings: the study never started


def test_token_cluster_refuses_strangers_and_runs_a_study_across_both_nodes(tmp_path, monkeypatch):
    pytest.importorskip("aiohttp_cors", reason="the Ray dashboard and its Jobs API need ray[default] "
                                               "(pip install -r requirements-dev.txt)")
    from ray.util import get_node_ip_address

    ip = get_node_ip_address()
    token, token_path = token_file(tmp_path / "secrets")
    with MlflowAuthServer(tmp_path / "server", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}",
                          f"sqlite:///{tmp_path / 'server' / 'basic_auth.db'}", ADMIN_PASSWORD, host=ip) as server:
        assert server.add_user("study", STUDY_PASSWORD).returncode == 0
        cluster = TokenCluster(tmp_path, token_path, LOGIN)
        try:
            cluster.add_node(head=True)
            cluster.wait_for_nodes(1)
            cluster.add_node()
            assert len(cluster.wait_for_nodes(2)) == 2
            address = f"{ip}:{cluster.port}"

            # Strangers: the Jobs API (submitting a job = running code on every node), the state API, Ray Client.
            jobs, job = f"{cluster.dashboard}/api/jobs/", {"entrypoint": f"touch {tmp_path / 'pwned'}"}
            codes = {"GET /api/jobs/": status(jobs), "POST /api/jobs/ (submit)": status(jobs, "POST", job),
                     "GET /api/v0/nodes": status(f"{cluster.dashboard}/api/v0/nodes"),
                     "POST worker agent /api/job_agent/jobs/": status(
                         f"http://{ip}:{cluster.agent_ports[1]}/api/job_agent/jobs/", "POST", job),
                     "GET /api/jobs/, another token": status(jobs, bearer="0" * 64),
                     "POST /api/jobs/, another token": status(jobs, "POST", job, bearer="0" * 64)}
            print("UNAUTHENTICATED Ray", codes)
            assert [v for k, v in codes.items() if "another" not in k] == [401, 401, 401, 401], codes
            assert [v for k, v in codes.items() if "another" in k] == [403, 403], codes
            assert status(jobs, bearer=token) == 200  # the owner, e.g. through `ray dashboard cluster.yaml`
            cli = [sys.executable, "-m", "ray.scripts.scripts", "job", "list", "--address", cluster.dashboard]
            owner = subprocess.run(cli, env=cluster.env, capture_output=True, text=True, timeout=120)
            stranger = subprocess.run(cli, env=base_env(), capture_output=True, text=True, timeout=120)
            assert owner.returncode == 0 and stranger.returncode != 0, owner.stderr[-2000:]  # Ray's own CLI
            assert not (tmp_path / "pwned").exists()
            refused = ray_client(f"{ip}:{cluster.client_port}", base_env(RAY_TMPDIR=str(cluster.tmp)))
            proxy_log = "".join(p.read_text() for p in cluster.tmp.glob("ray/session_*/logs/ray_client_server.err"))
            print(f"UNAUTHENTICATED Ray Client: {refused}")
            assert refused.startswith("refused") and "no authorization header provided" in proxy_log, refused

            # The study: without the token, with another cluster's, then with this cluster's.
            results = tmp_path / "results"
            args = ["--address", address, "--tracking-uri", server.uri, "--results-dir", str(results),
                    "--study-name", "tokened", "--num-trials", "2", "--scheduler", "none", *FAST,
                    "--iterations", "1", "--steps-per-iteration", "5"]
            env = base_env(RAY_TMPDIR=str(cluster.tmp), RAY_DEDUP_LOGS="0", **LOGIN)
            no_token = study(tmp_path, args, env)
            assert_one_line(no_token, "requires a token and this driver sent none", results)
            other = study(tmp_path, args, env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "1" * 64})
            assert_one_line(other, "rejected the token from $RAY_AUTH_TOKEN (InvalidAuthToken)", results)
            print(f"STUDY without the token: {no_token.stderr.strip()}\nSTUDY with another: {other.stderr.strip()}")

            out = study(tmp_path, args, env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)})
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
            trials = [a for a in cluster.state("actors") if "Trainable" in a["class_name"]]
            assert len({a["node_id"] for a in trials}) == 2, [(a["class_name"], a["node_id"]) for a in trials]
            values = {"the Ray token": token, "the study's password": STUDY_PASSWORD,
                      "the admin password": ADMIN_PASSWORD}
            in_ray_logs = leaks(values, [cluster.tmp], {})  # Ray's own session folder: logs of every process
        finally:
            cluster.stop()
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
        assert run_summary(server.uri, "tokened") == Counter({("FINISHED", "finished"): 2})

    found = in_ray_logs + leaks(values, [results, server.folder / "artifacts"],
                                {"the study's output": out.stdout + out.stderr + no_token.stderr + other.stderr,
                                 "the MLflow server's log": server.log.read_text()})
    print(f"GREP for {len(values)} secrets in {results}, Ray's session folder, MLflow's artifacts and log, "
          f"the study's output: {len(found)} found")
    assert not found, found
