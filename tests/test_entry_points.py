"""Every command in the README runs in its smoke mode, and bad input gets one line and a non-zero exit."""

import json
import subprocess
import sys

from tests.study_utils import ROOT

TINY = ["--hidden", "16", "--adv-hidden", "16", "--adv-inner", "8", "--batch-size", "32", "--eval-samples", "500"]


def run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_one_configuration_trains_writes_and_resumes(tmp_path):
    out = run(["-m", "avb", *TINY, "--steps", "40", "--log-every", "20", "--out", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "step      20/40" in out.stdout and "it/s" in out.stdout  # progress while it trains
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"log_likelihood", "log_likelihood_se", "reconstruction_error", "elbo", "kl_qz_pz"}
    assert (tmp_path / "run" / "latent.png").stat().st_size > 5000
    resumed = run(["-m", "avb", "--steps", "60", "--log-every", "20", "--resume", "--out", str(tmp_path / "run")],
                  tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "from step 40" in resumed.stdout and "step      60/60" in resumed.stdout


def test_bad_flag_value_is_one_line(tmp_path):
    out = run(["-m", "avb", "--adv-hidden", "0", "--out", str(tmp_path / "x")], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: adv_hidden=0 must be a positive integer (>= 1)"
    assert not (tmp_path / "x").exists()


def test_help_of_every_entry_point_states_defaults(tmp_path):
    for args in (["-m", "avb"], [str(ROOT / "study" / "run.py")], [str(ROOT / "benchmarks" / "speed.py")],
                 [str(ROOT / "benchmarks" / "reproduce_table1.py")]):
        out = run([*args, "--help"], tmp_path)
        assert out.returncode == 0 and "default" in out.stdout, args


def test_reproduction_smoke_run_writes_table_and_pictures(tmp_path):
    out = run([str(ROOT / "benchmarks" / "reproduce_table1.py"), "--steps", "30", "--out", str(tmp_path)], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "table1.md").read_text()
    assert "| log-likelihood | -1.593 |" in table and "Targets:" in table
    assert {p.name for p in tmp_path.glob("latent_*.png")} == {"latent_vae.png", "latent_avb.png", "latent_avb_ac.png"}


def test_speed_benchmark_smoke_run(tmp_path):
    out = run([str(ROOT / "benchmarks" / "speed.py"), "--quick", "--out", ""], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| synthetic, paper size")]
    assert rows and float(rows[0][5]) > 0, out.stdout  # the it/s column
