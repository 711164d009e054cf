"""Bad input to every entry point: one line naming what is wrong and how to fix it, a non-zero exit, and
nothing written or changed in any existing study.

Each case runs the real command in a fresh process. Cases that need an existing study share one small
finished study (made once for the module); its stores' bytes are compared before and after every case."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.study_utils import FAST, ROOT, copy_run_py, run_study, study_env

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("bad_input")]  # its module fixtures run once


@pytest.fixture(scope="module")
def existing(tmp_path_factory) -> Path:
    """A finished study named 'kept' under ROOT/results (its stores are what must never change)."""
    root = tmp_path_factory.mktemp("existing")
    out = run_study(["--results-dir", str(root / "results"), "--study-name", "kept", "--num-trials", "1",
                     "--scheduler", "none", *FAST, "--iterations", "1"], cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return root


def fingerprint(folder: Path) -> dict[str, str]:
    """Content hashes of every file of a study's results (stores, Ray state, artifacts)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def run(args: list[str], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=study_env(), capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(out: subprocess.CompletedProcess, message: str) -> None:
    assert out.returncode != 0, out.stdout[-2000:]
    lines = out.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and message in lines[-1], out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]


# ----------------------------------------------------------------------------- study/run.py
def prepare(case: str, where: Path) -> list[str]:
    """Files some cases need: returns extra arguments."""
    if case == "file-as-results":
        (where / "a-file").write_text("x")
        return ["--results-dir", str(where / "a-file")]
    if case in ("corrupt-mlflow", "corrupt-optuna"):
        (where / "results").mkdir(exist_ok=True)
        (where / "results" / ("mlflow.db" if case == "corrupt-mlflow" else "optuna.db")).write_bytes(b"not a db" * 99)
        return []
    if case == "empty-folder":
        (where / "empty").mkdir()
        return ["--set", f"data_root={where / 'empty'}"]
    if case == "not-an-image":
        (where / "imgs").mkdir()
        for i in range(3):
            (where / "imgs" / f"{i}.png").write_bytes(b"definitely not a png")
        return ["--set", f"data_root={where / 'imgs'}"]
    if case.startswith("settings-"):  # a damaged avb-study.json of a study named 'damaged'
        import dataclasses
        import json

        from study.settings import STUDY_FILE, StudySettings

        (where / "store" / "damaged").mkdir(parents=True)
        values = [1, 2] if case == "settings-not-an-object" else {**dataclasses.asdict(StudySettings()),
                                                                  "num_trials": -3}
        (where / "store" / "damaged" / STUDY_FILE).write_text(json.dumps(values))
        return ["--resume", "--study-name", "damaged", "--storage-path", str(where / "store")]
    return []


STUDY_CASES = {  # id: (arguments, part of the message)
    "unknown-preset": (["--preset", "cifar"], "unknown preset 'cifar'"),
    "negative-trials": (["--num-trials", "-3"], "--num-trials must be a positive integer"),
    "zero-concurrency": (["--concurrency", "0"], "--concurrency must be a positive integer"),
    "zero-iterations": (["--iterations", "0"], "--iterations must be a positive integer"),
    "negative-steps": (["--steps-per-iteration", "-1"], "--steps-per-iteration must be a positive integer"),
    "zero-cpus": (["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
    "negative-gpus": (["--gpus-per-trial", "-1"], "--gpus-per-trial must be >= 0"),
    "fractional-gpus-above-1": (["--gpus-per-trial", "1.5"], "whole number of GPUs"),
    "negative-failures": (["--max-failures", "-5"], "--max-failures must be >= 0"),
    "retry-without-resume": (["--retry-crashed"], "--retry-crashed needs --resume --study-name NAME"),
    "zero-checkpoints": (["--keep-checkpoints", "0"], "--keep-checkpoints must be a positive integer"),
    "negative-final-ais": (["--final-ais", "-1"], "--final-ais must be >= 0"),
    "zero-ais-temps": (["--ais-temps", "0"], "--ais-temps must be a positive integer"),
    "not-a-number": (["--num-trials", "many"], "argument --num-trials: invalid int value"),
    "unknown-scheduler": (["--scheduler", "pbt"], "argument --scheduler: invalid choice"),
    "unknown-flag": (["--trials", "3"], "unrecognized arguments: --trials"),
    "bad-study-name": (["--study-name", "my study/1"], "--study-name 'my study/1'"),
    "resume-without-name": (["--resume"], "--resume needs --study-name"),
    "resume-unknown-study": (["--resume", "--study-name", "nope"], "no study named 'nope'"),
    "settings-not-an-object": ([], "is not a study's settings file (a JSON list, not an object)"),
    "settings-invalid-value": ([], "saved settings (avb-study.json under --storage-path) are invalid: --num-trials "
                                   "must be a positive integer"),
    "set-negative-lr": (["--set", "lr=-1"], "lr=-1.0 must be a positive learning rate"),
    "set-unknown-field": (["--set", "widht=3"], "unknown config field(s) widht"),
    "set-without-value": (["--set", "hidden"], "expected FIELD=VALUE"),
    "set-unknown-choice": (["--set", "objective=gan"], "objective='gan' is unknown"),
    "set-arch-mismatch": (["--set", "arch=conv"], "does not fit dataset='synthetic'"),
    "unreachable-mlflow": (["--tracking-uri", "http://127.0.0.1:9"], "is unreachable"),
    "tracking-uri-not-a-uri": (["--tracking-uri", "results/mlflow.db"], "is not a URI"),
    "optuna-not-a-uri": (["--optuna-storage", "optuna.db"], "is not a URI"),
    "optuna-unreachable-db": (["--optuna-storage", "postgresql+psycopg://u:hunter2@127.0.0.1:9/x"],
                              "cannot be opened"),
    "tracking-unreachable-db": (["--tracking-uri", "postgresql+psycopg://u:hunter2@127.0.0.1:9/x"],
                                "the MLflow store postgresql+psycopg://u:***@127.0.0.1:9/x cannot be opened"),
    "file-as-results": ([], "is a file, not a folder"),
    "unwritable-results": (["--results-dir", "/proc/avb-results"], "cannot create the folder"),
    "corrupt-mlflow": ([], "cannot be read"),
    "corrupt-optuna": ([], "cannot be opened"),
    "address-not-an-address": (["--address", "not-an-address"], "is not a Ray address"),
    "address-unreachable": (["--address", "127.0.0.1:9"], "no Ray cluster answers there"),
    "unwritable-storage-path": (["--storage-path", "/proc/avb-ray"], "cannot write under --storage-path"),
    "celeba-missing": (["--preset", "celeba", "--set", "data_root=/nonexistent"], "CelebA is not under"),
    "empty-folder": (["--preset", "mnist", "--set", "dataset=folder"], "found 0 image(s)"),
    "not-an-image": (["--preset", "mnist", "--set", "dataset=folder"], "is not a readable image"),
    "too-many-cpus": (["--cpus-per-trial", "64"], "more than this machine has"),
    "gpu-on-a-cpu-machine": (["--gpus-per-trial", "1"], "use --gpus-per-trial 0"),
}


@pytest.fixture(scope="module")
def study_outcomes(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every STUDY_CASES command, three at a time, each in its own folder: the cases are independent and
    most of each one's time is a fresh Python importing Ray, MLflow and torch."""
    def one(case: str) -> tuple[Path, subprocess.CompletedProcess]:
        where = tmp_path_factory.mktemp(case)
        args, extra = STUDY_CASES[case][0], prepare(case, where)
        if "--results-dir" not in args + extra:
            extra += ["--results-dir", str(where / "results")]
        try:
            return where, run([str(copy_run_py(where / "submitted")), *args, *extra], where)
        except subprocess.TimeoutExpired as err:  # fails this case only, with what it printed
            return where, subprocess.CompletedProcess(err.cmd, -9, str(err.stdout), f"timed out: {err.stderr}")

    tmp_path_factory.getbasetemp()  # made once here: mktemp in three threads would race to make it
    with ThreadPoolExecutor(3) as pool:
        return dict(zip(STUDY_CASES, pool.map(one, STUDY_CASES)))


@pytest.mark.parametrize("case", STUDY_CASES)
def test_study_bad_input(case, study_outcomes):
    where, out = study_outcomes[case]
    assert_one_line_error(out, STUDY_CASES[case][1])
    assert out.returncode == 2 and "hunter2" not in out.stdout + out.stderr  # a store's password is masked
    assert not (where / "results" / "ray").exists()  # no trial started, no study written


EXISTING_CASES = {  # against the finished study 'kept'
    "same-name-again": ([], "a study named 'kept' exists already"),
    "same-name-other-storage-path": (["--storage-path", "OTHER"], "a study named 'kept' exists already"),
    "resume-other-trial-count": (["--resume", "--num-trials", "9"], "--num-trials differs from the study's (1)"),
    "resume-other-set": (["--resume", "--set", "hidden=32"], "--set differs from the study's"),
    "resume-into-empty-stores": (["--resume", "--tracking-uri", "sqlite:///EMPTY/mlflow.db",
                                  "--optuna-storage", "sqlite:///EMPTY/optuna.db"], "would split the study"),
}


@pytest.mark.parametrize("case", EXISTING_CASES)
def test_bad_input_leaves_an_existing_study_alone(case, existing, tmp_path):
    args, message = EXISTING_CASES[case]
    args = [a.replace("OTHER", str(tmp_path / "other")).replace("EMPTY", str(tmp_path / "empty")) for a in args]
    before = fingerprint(existing / "results")
    out = run([str(copy_run_py(tmp_path / "submitted")), "--results-dir", str(existing / "results"),
               "--study-name", "kept", *args], tmp_path)
    assert_one_line_error(out, message)
    assert fingerprint(existing / "results") == before


# ----------------------------------------------------------------------------- python -m avb
def test_avb_out_naming_a_file_fails_before_training(tmp_path):
    (tmp_path / "taken").write_text("mine")
    out = run(["-m", "avb", "--steps", "100000", "--out", str(tmp_path / "taken")], tmp_path, timeout=60)
    assert_one_line_error(out, "taken")
    assert (tmp_path / "taken").read_text() == "mine"


@pytest.mark.parametrize("content", [b"", b"\x80\x02garbage" * 10, os.urandom(4096)], ids=["empty", "junk", "random"])
def test_avb_resume_from_an_unreadable_checkpoint(tmp_path, content):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "trainer.pt").write_bytes(content)
    out = run(["-m", "avb", "--resume", "--out", str(tmp_path / "run")], tmp_path, timeout=60)
    assert_one_line_error(out, "trainer.pt")
    assert (tmp_path / "run" / "trainer.pt").read_bytes() == content


def test_avb_truncated_checkpoint(tmp_path):
    ok = run(["-m", "avb", "--hidden", "8", "--adv-hidden", "8", "--adv-inner", "8", "--steps", "2",
              "--eval-samples", "100", "--out", str(tmp_path / "run")], tmp_path, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    path = tmp_path / "run" / "trainer.pt"
    path.write_bytes(path.read_bytes()[:500])
    out = run(["-m", "avb", "--resume", "--out", str(tmp_path / "run")], tmp_path, timeout=60)
    assert_one_line_error(out, "trainer.pt")


AVB_CASES = {
    "zero-width": (["--adv-hidden", "0"], "adv_hidden=0 must be a positive integer"),
    "vae-with-blackbox": (["--objective", "vae", "--encoder", "blackbox"], "cannot be used with objective='vae'"),
    "folder-without-root": (["--dataset", "folder"], "needs data_root"),
    "resume-missing": (["--resume", "--out", "nowhere"], "trainer.pt"),
    "bad-choice": (["--objective", "gan"], "objective"),
}


@pytest.mark.parametrize("case", AVB_CASES)
def test_avb_bad_input(case, tmp_path):
    args, message = AVB_CASES[case]
    out = run(["-m", "avb", *args, *([] if "--out" in args else ["--out", str(tmp_path / "x")])], tmp_path, 60)
    assert_one_line_error(out, message)
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- analysis
ANALYSIS_CASES = {
    "export-unknown-study": ("analysis.export", ["--study", "nope"], "no study named 'nope'"),
    "report-unknown-study": ("analysis.report", ["--study", "nope"], "no study named 'nope'"),
    "export-missing-store": ("analysis.export", ["--study", "kept", "--tracking-uri", "sqlite:///MISSING.db"],
                             "no MLflow store"),
    "report-missing-optuna": ("analysis.report", ["--study", "kept", "--optuna-storage", "sqlite:///MISSING.db"],
                              "Optuna"),
    "export-unreachable": ("analysis.export", ["--study", "kept", "--tracking-uri", "http://127.0.0.1:9"],
                           "unreachable"),
    "export-out-is-a-file": ("analysis.export", ["--study", "kept", "--out", "FILE"], "FILE"),
    "report-no-study-flag": ("analysis.report", [], "--study"),
}


@pytest.mark.parametrize("case", ANALYSIS_CASES)
def test_analysis_bad_input(case, existing, tmp_path):
    module, args, message = ANALYSIS_CASES[case]
    (tmp_path / "FILE").write_text("x")
    args = [a.replace("MISSING", str(tmp_path / "missing")).replace("FILE", str(tmp_path / "FILE")) for a in args]
    before = fingerprint(existing / "results")
    out = run(["-m", module, "--results-dir", str(existing / "results"), *args], tmp_path)
    assert_one_line_error(out, message.replace("FILE", str(tmp_path / "FILE")))
    assert fingerprint(existing / "results") == before
    assert not (tmp_path / "missing.db").exists()


def test_report_with_only_the_mlflow_variable_names_the_optuna_one(existing, tmp_path):
    """A cluster user who exported MLFLOW_TRACKING_URI alone is told which variable names the Optuna storage."""
    env = {**study_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{existing / 'results' / 'mlflow.db'}"}
    env.pop("AVB_OPTUNA_STORAGE", None)
    out = subprocess.run([sys.executable, "-m", "analysis.report", "--study", "kept"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=180)
    assert_one_line_error(out, "(or set $AVB_OPTUNA_STORAGE)")
    assert not (tmp_path / "results").exists()


def test_every_entry_point_has_help_with_defaults(tmp_path):
    for args in (["-m", "avb"], [str(ROOT / "study" / "run.py")], ["-m", "analysis.export"],
                 ["-m", "analysis.report"]):
        out = run([*args, "--help"], tmp_path, 60)
        assert out.returncode == 0 and "default" in out.stdout, args
