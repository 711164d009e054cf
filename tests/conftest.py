import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Session-scoped `postgres`: a real private PostgreSQL server (tests/postgres.py).
from tests.postgres import postgres  # noqa: F401, E402

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ["RAY_ADDRESS"] = "local"  # in-process ray.init(): a Ray of its own, not another test's cluster
torch.set_num_threads(1)  # small ops: one thread is faster and steadier on a shared 2-core machine


@pytest.fixture
def tiny():
    """A config small enough for unit tests on two CPU cores."""
    from avb.config import Config

    return Config(hidden=32, adv_hidden=32, adv_inner=16, batch_size=64, steps=20, eval_samples=2000)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(backend: str, artifacts: Path):
    """A real `mlflow server` process; (process, URI) once /health answers."""
    import subprocess
    import time
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", backend, "--artifacts-destination", str(artifacts)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(uri + "/health", timeout=1)
            return proc, uri
        except OSError:
            time.sleep(0.5)
    proc.kill()
    pytest.fail("mlflow server did not start")


@pytest.fixture
def mlflow_server(tmp_path):
    proc, uri = start_mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts")
    yield uri
    proc.terminate()
    proc.wait(timeout=30)
