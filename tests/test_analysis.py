"""Analysis of a real study (study/run.py, 4 trials): Parquet export, report, notebook, and the one-line errors."""

from __future__ import annotations

import re
import subprocess
import sys

import mlflow
import nbclient
import nbformat
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import export, report
from tests.study_utils import FAST, ROOT, run_study, study_env

STUDY = "analysed"
SEARCHED = ("adv_hidden", "adv_depth", "adv_inner", "lr", "adv_lr", "adv_steps", "beta1", "adaptive_contrast")
FIGURES = ("importances.png", "learning_curves.png", "params.png", "capacity.png", "latent.png")


def run_module(module: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=study_env(), capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """One small finished study, run once for the module; its stores lie in TMP/results (the defaults, run from TMP)."""
    root = tmp_path_factory.mktemp("analysis")
    results = root / "results"
    out = run_study(["--results-dir", str(results), "--study-name", STUDY, "--num-trials", "4",
                     "--scheduler", "none", *FAST], cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"root": root, "uri": f"sqlite:///{results / 'mlflow.db'}", "storage": f"sqlite:///{results / 'optuna.db'}"}


@pytest.fixture(scope="module")
def reported(study) -> dict:
    """`python -m analysis.report --study NAME` with the default stores (relative to the working directory)."""
    out = run_module("analysis.report", ["--study", STUDY], cwd=study["root"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folder = study["root"] / "results" / "analysis" / STUDY / "report"
    return {**study, "folder": folder, "md": (folder / "report.md").read_text()}


# ----------------------------------------------------------------------------- export
def test_export_writes_one_row_per_trial_with_typed_columns(study):
    out = run_module("analysis.export", ["--study", STUDY], cwd=study["root"])  # default URI and --out
    assert out.returncode == 0, out.stderr[-3000:]
    folder = study["root"] / "results" / "analysis" / STUDY
    trials = pq.read_table(folder / "trials.parquet")
    history = pq.read_table(folder / "history.parquet").to_pandas()

    assert trials.num_rows == 4
    schema = {f.name: f.type for f in trials.schema}
    expected = {"trial_id", "run_id", "status", "method", "iterations", "fidelity", "full_fidelity", "diverged",
                "stopped_early", "final_log_likelihood", "best_log_likelihood", "final_elbo", "best_kl_qz_pz",
                *SEARCHED, "objective", "hidden", "eval_samples"}
    assert expected <= set(schema), expected - set(schema)
    assert schema["lr"] == pa.float64() and schema["adv_hidden"] == pa.int64()
    assert schema["adaptive_contrast"] == pa.bool_() and schema["full_fidelity"] == pa.bool_()
    assert pa.types.is_string(schema["objective"]) or pa.types.is_large_string(schema["objective"])

    df = trials.to_pandas()
    assert df["trial_id"].nunique() == 4 and (df["status"] == "FINISHED").all()
    assert df["full_fidelity"].all() and not df["diverged"].any() and not df["stopped_early"].any()
    assert (df["iterations"] == 2).all() and (df["fidelity"] == 1.0).all()
    assert (df["hidden"] == 16).all()
    assert "VAE" in set(df["method"]) and set(df["method"]) <= {"VAE", "AVB", "AVB+AC"}  # the VAE baseline ran

    assert list(history.columns) == ["run_id", "trial_id", "metric", "step", "value", "timestamp"]
    ll = history[history["metric"] == "log_likelihood"]
    assert sorted(ll.groupby("run_id")["step"].apply(list).tolist()) == [[20, 40]] * 4
    last = ll.sort_values("step").groupby("run_id")["value"].last()
    assert df.set_index("run_id")["final_log_likelihood"].sort_index().tolist() == last.sort_index().tolist()
    assert (df["best_log_likelihood"] >= df["final_log_likelihood"]).all()

    loaded = export.load_trials(study["uri"], STUDY)  # the notebook's way, no files
    assert sorted(loaded["run_id"]) == sorted(df["run_id"])


# ----------------------------------------------------------------------------- report
def test_report_has_its_tables_and_every_figure(reported):
    md, folder = reported["md"], reported["folder"]
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert set(FIGURES) <= set(linked), linked
    for name in linked:
        assert (folder / name).stat().st_size > 1000, name
    assert "## Best trials" in md and "## Against the paper's Table 1" in md
    table1 = md.split("## Against the paper's Table 1")[1].split("##")[0]
    assert "paper AVB" in table1 and "-1.462" in table1
    assert re.search(r"\| log_likelihood \| -1\.593 \| -1\.462 \| -\d+\.\d+ \|", table1), table1  # the VAE baseline
    importance_section = md.split("## Hyperparameter importances")[1].split("##")[0]
    for name in SEARCHED:
        assert f"| {name} |" in importance_section, name


def test_importances_cover_every_searched_parameter(reported):
    imps, notes = report.importances(reported["storage"], STUDY)
    assert set(imps) == {"PED-ANOVA", "fANOVA"}, notes
    for name, values in imps.items():
        assert set(SEARCHED) <= set(values), (name, values)
        assert sum(values.values()) == pytest.approx(1.0)


def test_report_is_logged_to_the_parent_run(reported):
    client = mlflow.MlflowClient(reported["uri"])
    exp = client.get_experiment_by_name(STUDY)
    parent = client.search_runs([exp.experiment_id], "tags.kind = 'study'")[0]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.md", *(f"report/{f}" for f in FIGURES)} <= logged, logged


def test_importances_use_only_complete_full_fidelity_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="mixed", storage=storage, direction="maximize")
    for i, (state, full) in enumerate([("COMPLETE", True), ("COMPLETE", True), ("COMPLETE", False),
                                       ("PRUNED", False), ("FAIL", False)]):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True),
                           "adv_steps": optuna.distributions.IntDistribution(1, 3)})
        trial.set_user_attr("full_fidelity", full)
        study.tell(trial, -1.0 - i if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
    copy = report.full_fidelity_study(storage, "mixed")
    assert [t.number for t in copy.trials] == [0, 1]
    assert copy.direction == optuna.study.StudyDirection.MAXIMIZE


def test_figures_tell_early_stopped_trials_apart(study, tmp_path):
    trials = export.load_trials(study["uri"], STUDY)
    history = export.load_history(study["uri"], STUDY)
    top = report.ranked(trials).index[0]
    trials.loc[top, ["full_fidelity", "stopped_early"]] = [False, True]  # as if ASHA had stopped the best one
    assert report.best_trial(trials)["run_id"] != trials.loc[top, "run_id"]
    assert report.fate(trials).value_counts().to_dict() == {"full fidelity": 3, "stopped early": 1}
    assert report.best_trials_table(trials)["fate"].iloc[-1] == "stopped early"
    for path in (report.params_figure(trials, report.searched_params(trials), tmp_path / "p.png", {"adv_hidden"}),
                 report.capacity_figure(trials, tmp_path / "c.png"),
                 report.learning_curves_figure(trials, history, tmp_path / "l.png")):
        assert path.stat().st_size > 1000


# ----------------------------------------------------------------------------- notebook
def test_walkthrough_notebook_runs_on_the_study(study, tmp_path, monkeypatch):
    path = ROOT / "analysis" / "walkthrough.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    monkeypatch.setenv("AVB_TRACKING_URI", study["uri"])
    monkeypatch.setenv("AVB_OPTUNA_STORAGE", study["storage"])
    monkeypatch.setenv("AVB_STUDY", STUDY)
    monkeypatch.setenv("AVB_OUT", str(tmp_path / "out"))
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 5  # importances, learning curves, parameters, capacity, latent space
    assert (tmp_path / "out" / STUDY / "trials.parquet").exists()


# ----------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> str:
    """A store with a study whose only trial run never finished."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('empty') / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp_id = client.create_experiment("empty", tags={"study": "empty", "preset": "synthetic"})
    parent = client.create_run(exp_id, tags={"kind": "study", "study": "empty"})
    client.log_param(parent.info.run_id, "iterations", 2)
    client.create_run(exp_id, tags={"mlflow.parentRunId": parent.info.run_id, "trial_id": "t0"})  # RUNNING
    return uri


@pytest.mark.parametrize("module", ["analysis.export", "analysis.report"])
@pytest.mark.parametrize("case, message", [
    ("unknown", "no study named 'nope'"),
    ("empty", "study 'empty' has no finished trial yet"),
])
def test_missing_or_empty_study_is_one_line_and_exit_2(study, empty_store, tmp_path, module, case, message):
    uri, name = (study["uri"], "nope") if case == "unknown" else (empty_store, "empty")
    out = run_module(module, ["--tracking-uri", uri, "--study", name, "--optuna-storage", study["storage"]]
                     if module == "analysis.report" else ["--tracking-uri", uri, "--study", name], cwd=tmp_path)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    if case == "unknown":
        assert f"studies there: {STUDY}" in lines[0]  # says which studies exist
    assert not (tmp_path / "results").exists()


def test_a_missing_store_is_not_created(tmp_path, capsys):
    assert export.main(["--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--study", "x"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()
