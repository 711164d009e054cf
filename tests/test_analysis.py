"""Analysis of a study: Parquet export, report, notebook, from any directory, and the one-line errors.

Tests marked slow read a real study (study/run.py, 4 trials, run once for the module); the others read a
small study written here straight into MLflow and Optuna (`fake`: an image preset with test-set figures).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import nbclient
import nbformat
import numpy as np
import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow.entities import Metric, Param

from analysis import configs, export, figures, importances, report, tables
from tests.study_utils import FAST, ROOT, run_study, study_env
from trainables import tracking

STUDY = "analysed"
# FAST's --set fields
FIXED = ("adv_hidden", "adv_inner", "batch_size", "eval_kl_samples", "eval_points", "eval_samples", "hidden")
SEARCHED = ("adv_depth", "lr", "adv_lr", "adv_steps", "beta1")  # AVB's less the fixed ones (no method)
FIGURES = ("importances.png", "anytime.png", "learning_curves.png", "params.png", "capacity.png", "latent.png")
STORE_ENV = ("MLFLOW_TRACKING_URI", "AVB_OPTUNA_STORAGE", "AVB_RESULTS_DIR", "AVB_STUDY", "AVB_OUT")


def run_module(module: str, args: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=study_env(**env), capture_output=True,
                          text=True, timeout=300)


pytestmark = pytest.mark.xdist_group("analysis")  # its module fixtures (a study, the stores) run once

@pytest.fixture(autouse=True)
def no_store_env(monkeypatch):
    """The stores come from the flags and folders each test gives, never from the caller's environment."""
    for name in STORE_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> dict:
    """One small finished study, run once for the module; its stores lie in TMP/results."""
    root = tmp_path_factory.mktemp("analysis")
    results = root / "results"
    out = run_study(["--results-dir", str(results), "--study-name", STUDY, "--num-trials", "4",
                     "--scheduler", "none", *FAST], cwd=root)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"root": root, "results": results, "uri": f"sqlite:///{results / 'mlflow.db'}",
            "storage": f"sqlite:///{results / 'optuna.db'}"}


@pytest.fixture(scope="module")
def reported(study) -> dict:
    """`python -m analysis.report --study NAME` run where study/run.py ran: every default."""
    out = run_module("analysis.report", ["--study", STUDY], cwd=study["root"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folder = study["results"] / "analysis" / STUDY / "report"
    return {**study, "folder": folder, "md": (folder / "report.md").read_text()}


# ----------------------------------------------------------------------------- a study written by hand
def fake_study(folder: Path, name: str = "fake", fates: tuple[str, ...] = ("finished", "finished", "diverged"),
               seed: int = 0) -> dict:
    """An image-preset study as study/run.py records it, written directly: trial 0 AVB+AC and trial 1 VAE
    finished with test-set figures and test_per_image.json, trial 2 AVB diverged (FAILED, with an error)."""
    folder.mkdir(parents=True, exist_ok=True)
    uri, storage = f"sqlite:///{folder / 'mlflow.db'}", f"sqlite:///{folder / 'optuna.db'}"
    rng = np.random.default_rng(seed)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment(name, artifact_location=(folder / "mlartifacts").as_uri(),
                                   tags={tracking.STUDY: name, tracking.PRESET: "mnist"})
    parent = client.create_run(exp, run_name=name, tags={tracking.KIND: "study", tracking.PRESET: "mnist"}).info.run_id
    client.log_batch(parent, params=[Param(k, v) for k, v in {"preset": "mnist", "iterations": "2",
                                                               "steps_per_iteration": "10", "scheduler": "asha",
                                                               "sampler": "tpe", "set.hidden": "16"}.items()])
    ostudy = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    base = rng.normal(-100, 5, size=16)  # per-image log-likelihoods shared by both methods (paired)
    per_image = {0: base + 2 + rng.normal(0, 0.5, 16), 1: base}
    methods = {0: ("avb", True, "AVB+AC"), 1: ("vae", False, "VAE"), 2: ("avb", False, "AVB")}
    for number, fate in enumerate(fates):
        objective, ac, method = methods[number % 3]
        params = {"objective": objective, "lr": 1e-3 * (number + 1), "hidden": 16}
        if objective == "avb":
            params |= {"adaptive_contrast": ac, "adv_hidden": 8 * (number + 1), "adv_depth": 2}
        run = client.create_run(exp, run_name=f"#{number} {method}", tags={
            tracking.PARENT: parent, tracking.TRIAL_NUMBER: str(number), tracking.TRIAL_ID: f"t{number}",
            tracking.METHOD: method, tracking.SEARCHED: "lr,objective", tracking.FIXED: "hidden"}).info.run_id
        client.log_batch(run, params=[Param(k, str(v)) for k, v in params.items()])
        steps = (10, 20) if fate == "finished" else (10,)
        elbo = "elbo" if objective == "vae" else "adversary_elbo"
        metrics = [Metric(k, v, 0, s) for s in steps for k, v in {
            "log_likelihood": -110 - number + s / 10, "log_likelihood_se": 1.0 + s / 100, "log_likelihood_mc_se": 0.1,
            elbo: -112 + s / 10, "fidelity": s / 20}.items()]
        if fate == "finished" and number in per_image:
            values = per_image[number]
            metrics += [Metric(f"test_{k}", float(values.mean()) + off, 0, 0) for k, off in
                        (("log_likelihood", 0), ("ais_log_likelihood", 0.5))]
            metrics += [Metric(f"test_{k}_se", float(values.std(ddof=1) / 4), 0, 0) for k in
                        ("log_likelihood", "ais_log_likelihood")]
            path = folder / f"per_image_{number}" / "test_per_image.json"
            path.parent.mkdir()
            path.write_text(json.dumps({"checkpoint_step": 20, **{
                k: {"values": (values + off).tolist(), "mc_se": [0.1] * 16}
                for k, off in (("test_log_likelihood", 0), ("test_ais_log_likelihood", 0.5))}}))
            client.log_artifact(run, str(path))
        client.log_batch(run, metrics=metrics)
        tracking.close_trial_run(client, client.get_run(run), tracking.Fate(fate),
                                 "diverged: loss is nan" if fate == "diverged" else "")
        trial = ostudy.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
        trial.set_user_attr("full_fidelity", fate == "finished")
        trial.set_user_attr("fate", fate)
        ostudy.tell(trial, -110 - number if fate == "finished" else None,
                    state=optuna.trial.TrialState.COMPLETE if fate == "finished" else optuna.trial.TrialState.FAIL)
    client.set_terminated(parent)
    return {"folder": folder, "uri": uri, "storage": storage, "per_image": per_image, "name": name}


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> dict:
    return fake_study(tmp_path_factory.mktemp("fake") / "results")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` with a hash of its bytes: 'nothing changed' is an equal snapshot."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- export
@pytest.mark.slow
def test_export_from_another_directory_writes_one_row_per_trial(study, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run_module("analysis.export", ["--study", STUDY, "--results-dir", str(study["results"])], cwd=elsewhere)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = study["results"] / "analysis" / STUDY  # the default output: inside the results folder
    trials = pq.read_table(folder / "trials.parquet")
    history = pq.read_table(folder / "history.parquet").to_pandas()
    assert not (elsewhere / "results").exists()

    assert trials.num_rows == 4
    schema = {f.name: f.type for f in trials.schema}
    expected = {"trial_number", "trial_id", "run_id", "status", "fate", "method", "iterations", "fidelity",
                "full_fidelity", "stopped_early", "diverged", "crashed", "failed", "best_step", "searched", "fixed",
                "final_log_likelihood", "final_log_likelihood_se", "best_log_likelihood", "final_elbo",
                "final_adversary_elbo", "best_kl_qz_pz", *SEARCHED, "objective", "hidden", "eval_samples"}
    assert expected <= set(schema), expected - set(schema)
    assert schema["lr"] == pa.float64() and schema["adv_hidden"] == pa.int64() and schema["trial_number"] == pa.int64()
    assert schema["adaptive_contrast"] == pa.bool_() and schema["full_fidelity"] == pa.bool_()
    assert pa.types.is_string(schema["fate"]) or pa.types.is_large_string(schema["fate"])

    df = trials.to_pandas()
    assert sorted(df["trial_number"]) == [0, 1, 2, 3] and df["trial_id"].nunique() == 4
    assert (df["fate"] == "finished").all() and (df["status"] == "FINISHED").all()
    assert df["full_fidelity"].all() and not (df["diverged"] | df["stopped_early"] | df["failed"]).any()
    assert (df["iterations"] == 2).all() and (df["fidelity"] == 1.0).all() and (df["hidden"] == 16).all()
    assert set(df["fixed"]) == {",".join(FIXED)}
    vae, avb = df[df["method"] == "VAE"], df[df["method"] != "VAE"]
    assert len(vae) >= 1 and set(df["method"]) <= {"VAE", "AVB", "AVB+AC"}  # the VAE baseline ran
    assert vae["adv_depth"].isna().all() and avb["adv_depth"].notna().all()  # a VAE logs no adversary params
    assert vae["final_elbo"].notna().all() and vae["final_adversary_elbo"].isna().all()
    assert avb["final_adversary_elbo"].notna().all() and avb["final_elbo"].isna().all()

    assert list(history.columns) == ["run_id", "trial_number", "trial_id", "metric", "step", "value", "timestamp"]
    ll = history[history["metric"] == "log_likelihood"]
    assert sorted(ll.groupby("run_id")["step"].apply(list).tolist()) == [[20, 40]] * 4
    last = ll.sort_values("step").groupby("run_id")["value"].last()
    assert df.set_index("run_id")["final_log_likelihood"].sort_index().tolist() == last.sort_index().tolist()
    assert (df["best_log_likelihood"] >= df["final_log_likelihood"]).all()

    loaded = export.load_trials(study["uri"], STUDY)  # the notebook's way, no files
    assert sorted(loaded["run_id"]) == sorted(df["run_id"])


@pytest.mark.slow
def test_best_config_is_the_best_trial_as_it_ran(study):
    """What benchmarks/images.py --from-study retrains: the Config of the trial the study chose on validation."""
    cfg, number = configs.best_config(study["uri"], STUDY)
    runs = export.open_study(study["uri"], STUDY)
    assert number == runs.info["best_trial_number"] is not None
    run = next(r for r in runs.trials if export.trial_number(r) == number)
    logged = {k: export.param_value(k, v) for k, v in run.data.params.items() if k in export.CONFIG_TYPES}
    assert logged and all(getattr(cfg, k) == v for k, v in logged.items())
    assert cfg.hidden == 16 and tracking.method_of(cfg.to_dict()) == run.data.tags[tracking.METHOD]
    other = next(r for r in runs.trials if export.trial_number(r) != number)  # STUDY#N: a given trial
    cfg_other, n_other = configs.best_config(study["uri"], STUDY, export.trial_number(other))
    assert n_other == export.trial_number(other) and cfg_other.lr == export.param_value("lr", other.data.params["lr"])
    with pytest.raises(export.AnalysisError, match="has no trial 99"):
        configs.best_config(study["uri"], STUDY, 99)


@pytest.mark.slow
def test_exported_config_retrains_without_the_stores(study, tmp_path):
    """--from-study METHOD=trials.parquet[#N]: the same Config as best_config, from the committed export alone."""
    path = export.export(study["uri"], STUDY, tmp_path)["trials"]
    rows = pq.read_table(path).to_pandas().set_index("trial_number")

    def same(a: tuple, b: tuple) -> bool:  # every field the trial logged (what its method uses), and the method
        used = [k for k in export.CONFIG_TYPES if k in rows.columns and not rows[k].isna()[a[1]]]
        return (a[1] == b[1] and len(used) >= 10 and all(getattr(a[0], k) == getattr(b[0], k) for k in used)
                and tracking.method_of(a[0].to_dict()) == tracking.method_of(b[0].to_dict()))

    assert same(configs.exported_config(path), configs.best_config(study["uri"], STUDY))
    other = next(n for n in rows.index if n != configs.best_config(study["uri"], STUDY)[1])
    assert same(configs.exported_config(path, other), configs.best_config(study["uri"], STUDY, other))
    with pytest.raises(export.AnalysisError, match="has no trial 99"):
        configs.exported_config(path, 99)
    with pytest.raises(export.AnalysisError, match="no file .*missing.parquet; pass the trials.parquet"):
        configs.exported_config(tmp_path / "missing.parquet")


def test_export_reads_mlflow_tracking_uri(study, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ./results here: the store comes from the environment, as on a cluster head
    monkeypatch.setenv("MLFLOW_TRACKING_URI", study["uri"])
    assert export.main(["--study", STUDY, "--out", "out"]) == 0, capsys.readouterr().err
    assert pq.read_metadata(tmp_path / "out" / "trials.parquet").num_rows == 4


@pytest.mark.slow
def test_export_of_an_image_study_has_test_figures_and_fates(fake):
    df = export.load_trials(fake["uri"], fake["name"])
    assert df["fate"].tolist() == ["finished", "finished", "diverged"]
    assert df["failed"].tolist() == [False, False, True] and df["diverged"].tolist() == [False, False, True]
    assert df["status"].tolist() == ["FINISHED", "FINISHED", "FAILED"]
    assert df["error"].iloc[2] == "diverged: loss is nan"
    assert df["method"].tolist() == ["AVB+AC", "VAE", "AVB"]
    for name in ("test_log_likelihood", "test_log_likelihood_se", "test_ais_log_likelihood"):
        assert df[name].notna().tolist() == [True, True, False], name
    # best_ of a standard error is the one at the step where its metric was best, not the smallest
    assert df["best_log_likelihood_se"].tolist() == pytest.approx([1.2, 1.2, 1.1])
    assert export.study_info(fake["uri"], fake["name"])["set.hidden"] == 16


# ----------------------------------------------------------------------------- report
@pytest.mark.slow
def test_report_has_its_tables_and_every_figure(reported):
    md, folder = reported["md"], reported["folder"]
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert set(FIGURES) <= set(linked), linked
    for name in linked:
        assert (folder / name).stat().st_size > 1000, name
    assert "## Best trials" in md and "## Against the paper's Table 1" in md and "## Test set" not in md
    best = md.split("## Best trials")[1].split("##")[0]
    assert "| trial_number | method | fate |" in best and "ELBO (adversary's estimate, not a bound)" in best
    table1 = md.split("## Against the paper's Table 1")[1].split("##")[0]
    assert "paper AVB" in table1 and "-1.462" in table1
    label = r"\| log p\(x\) \(the study.s estimator\) \(`log_likelihood`\)"
    assert re.search(label + r" \| -1\.593 \| -1\.462 \| -\d+\.\d+ \|", table1), table1  # the VAE baseline
    assert re.search(r"\| ELBO \(exact, VAE\) \(`elbo`\) \| -1\.7 \| — \| -\d", table1), table1
    assert "| ELBO (adversary's estimate, not a bound) (`adversary_elbo`) | — | -1.483 |" in table1
    importance_section = md.split("## Hyperparameter importances")[1].split("##")[0]
    for name in SEARCHED:
        assert f"| {name} |" in importance_section, name
    for name in FIXED:  # fixed with --set: never sampled, never ranked
        assert f"| {name} |" not in importance_section, name


def test_a_baseline_outside_the_prior_is_ranked_with_the_rest():
    """The paper's lr 2e-5 lies under the synthetic prior (1e-4 to 3e-3): the copy widens lr's range for every
    trial alike, so Optuna still ranks lr (it ranks only parameters with one distribution in all trials)."""
    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial({"lr": 2e-5, "beta1": 0.5})  # as the study enqueues the paper's setting
    for _ in range(24):
        trial = study.ask()
        with pytest.warns(UserWarning, match="out of range") if trial.number == 0 else contextlib.nullcontext():
            lr = trial.suggest_float("lr", 1e-4, 3e-3, log=True)
        trial.suggest_categorical("beta1", [0.0, 0.5, 0.9])
        trial.set_user_attr("full_fidelity", True)
        study.tell(trial, -abs(np.log10(lr) + 3))
    assert study.trials[0].params["lr"] == 2e-5
    copy = importances.full_fidelity_study(study)
    assert len(copy.trials) == 24 and len({repr(t.distributions["lr"]) for t in copy.trials}) == 1
    fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
    ranked = optuna.importance.get_param_importances(copy, evaluator=fanova)
    assert set(ranked) == {"lr", "beta1"} and ranked["lr"] > ranked["beta1"]


@pytest.mark.slow
def test_importances_cover_every_searched_parameter(reported):
    imps, notes = importances.importances(reported["storage"], STUDY)
    assert set(imps) == {"PED-ANOVA", "fANOVA"}, notes
    for name, values in imps.items():
        assert set(SEARCHED) <= set(values), (name, values)
        assert not set(FIXED) & set(values)
        assert sum(values.values()) == pytest.approx(1.0)


@pytest.mark.slow
def test_report_is_logged_to_the_parent_run(reported):
    client = mlflow.MlflowClient(reported["uri"])
    exp = client.get_experiment_by_name(STUDY)
    parent = tracking.find_study_run(client, exp.experiment_id)
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
    copy = importances.full_fidelity_study(storage, "mixed")
    assert [t.number for t in copy.trials] == [0, 1]
    assert copy.direction == optuna.study.StudyDirection.MAXIMIZE


def test_importances_from_few_trials_come_with_their_spread_and_are_not_ranked():
    """With fewer full-fidelity trials than MIN_TRIALS_TO_RANK the table is alphabetical, says so, and shows how
    far each importance moves over bootstrap resamples. fANOVA still finds the parameter that decides the value;
    PED-ANOVA's at 8 trials is a coin flip (0.34-0.68 for zeta over 20 sampler seeds), which is why it is not ranked."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    rng = np.random.default_rng(0)
    for _ in range(8):
        trial = study.ask({"zeta": optuna.distributions.FloatDistribution(0, 1),
                           "alpha": optuna.distributions.FloatDistribution(0, 1)})
        trial.set_user_attr("full_fidelity", True)
        study.tell(trial, -10 * trial.params["zeta"] + 0.01 * rng.normal())
    imps, notes = importances.importances(study)
    assert "too few to rank parameters (at least 20" in notes[0]
    spread = importances.importance_spread(study)
    assert set(spread) == {"zeta", "alpha"} and all(v >= 0 for v in spread.values())
    table = importances.importance_table(imps, spread, trials=8)
    assert list(table["parameter"]) == ["alpha", "zeta"] and "PED-ANOVA spread (bootstrap sd)" in table
    assert imps["fANOVA"]["zeta"] > imps["fANOVA"]["alpha"]
    ranked = importances.importance_table(imps, trials=importances.MIN_TRIALS_TO_RANK)
    ped = imps["PED-ANOVA"]
    assert list(ranked["parameter"]) == sorted(ped, key=ped.get, reverse=True) and ped["zeta"] != ped["alpha"]


@pytest.mark.slow
def test_figures_tell_early_stopped_trials_apart(study, tmp_path):
    trials = export.load_trials(study["uri"], STUDY)
    history = export.load_history(study["uri"], STUDY)
    top = tables.ranked(trials).index[0]
    trials.loc[top, ["fate", "full_fidelity", "stopped_early"]] = ["stopped_early", False, True]  # as if ASHA had
    assert tables.best_trial(trials)["run_id"] != trials.loc[top, "run_id"]
    assert tables.best_trials_table(trials)["fate"].iloc[-1] == "stopped_early"
    runs = export.open_study(study["uri"], STUDY)
    pictures, notes = figures.model_figures(runs, tables.best_trial(trials), tmp_path, from_checkpoint=True)
    assert [p.name for p in pictures] == ["latent.png"] and not notes  # drawn from checkpoint/trainer.pt
    for path in (figures.params_figure(trials, tables.searched_params(trials), tmp_path / "p.png", {"lr"}),
                 figures.capacity_figure(trials, tmp_path / "c.png"),
                 figures.learning_curves_figure(trials, history, tmp_path / "l.png"), *pictures):
        assert path.stat().st_size > 1000


def test_report_of_an_image_study_shows_test_figures_and_the_paired_difference(fake, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(fake["folder"], copy)  # the report logs itself to the study: not to the shared one
    assert report.main(["--study", fake["name"], "--results-dir", str(copy)]) == 0
    md = (copy / "analysis" / fake["name"] / "report" / "report.md").read_text()
    assert "## Trials that did not finish" in md and "diverged: loss is nan" in md
    test = md.split("## Test set")[1].split("\n## ")[0]
    assert "| trial_number | method | validation log p(x) | test log p(x), IS | ± over images (IS) |" in test
    assert "The paper's AIS figures: AVB+AC -79.5" in test
    a, b = fake["per_image"][0], fake["per_image"][1]
    diff, se = float((a - b).mean()), float((a - b).std(ddof=1) / math.sqrt(len(a)))
    row = re.search(r"\| test log p\(x\), IS \| #0 AVB\+AC \| #1 VAE \| 16 \| (\S+) \| (\S+) \|", test)
    assert row, test
    assert float(row.group(1)) == pytest.approx(diff, rel=1e-3) and float(row.group(2)) == pytest.approx(se, rel=1e-3)
    assert "the best trial of each of the two best methods" in test


# ----------------------------------------------------------------------------- notebook
@pytest.mark.slow
def test_walkthrough_notebook_finds_the_study_where_jupyter_started(study, monkeypatch):
    path = ROOT / "analysis" / "walkthrough.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    before = {p for p in (ROOT / "analysis").rglob("*") if "__pycache__" not in p.parts}
    monkeypatch.setenv("PWD", str(study["root"]))  # Jupyter started where study/run.py ran
    monkeypatch.setenv("AVB_STUDY", STUDY)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,  # the kernel runs in the notebook's folder
                            resources={"metadata": {"path": str(ROOT / "analysis")}}).execute()
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 4  # learning curves, parameters, capacity, latent space (+ importances with 2 AVB trials)
    assert (study["results"] / "analysis" / STUDY / "trials.parquet").exists()
    after = {p for p in (ROOT / "analysis").rglob("*") if "__pycache__" not in p.parts}
    assert after == before and not (ROOT / "results" / "analysis" / STUDY).exists()  # nothing in the repository


def test_the_notebook_without_a_study_names_its_environment_variables(tmp_path, monkeypatch):
    """Started where no study ran: the error names what the notebook reads (AVB_RESULTS_DIR, ...), not flags."""
    nb = nbformat.read(ROOT / "analysis" / "walkthrough.ipynb", as_version=4)
    monkeypatch.setenv("PWD", str(tmp_path))
    with pytest.raises(nbclient.exceptions.CellExecutionError) as err:
        nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                                resources={"metadata": {"path": str(ROOT / "analysis")}}).execute()
    last = str(err.value).strip().splitlines()[-1]
    assert f"no MLflow store at {tmp_path / 'results' / 'mlflow.db'}; set AVB_RESULTS_DIR=" in last, last
    assert "--" not in last


def test_the_jupyter_commands_the_notebook_names_are_installed():
    """The notebook tells users to run `jupyter lab` and `jupyter execute`: requirements-dev.txt installs both."""
    text = (ROOT / "analysis" / "walkthrough.ipynb").read_text()
    for command in ("lab", "execute"):
        assert f"jupyter {command} " in text
        out = subprocess.run(["jupyter", command, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]


# ----------------------------------------------------------------------------- errors
def damaged(source: Path, folder: Path, how: str) -> Path:
    """`source` (an mlflow.db or optuna.db) copied into `folder`, damaged: random bytes, or cut short."""
    path = folder / source.name
    data = np.random.default_rng(0).bytes(20000) if how == "random" else source.read_bytes()[:3000]
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory, fake) -> dict:
    """The fake study's stores, a store whose study has no finished trial, and an Optuna file with another study."""
    unfinished = fake_study(tmp_path_factory.mktemp("unfinished") / "results", "unfinished", ("crashed",))
    other = tmp_path_factory.mktemp("other")
    optuna.create_study(study_name="other", storage=f"sqlite:///{other / 'optuna.db'}")
    return {"fake": fake, "unfinished": unfinished, "other_optuna": f"sqlite:///{other / 'optuna.db'}"}


def case_args(case: str, stores: dict, tmp: Path) -> tuple[list[str], str]:
    """(command-line arguments, a fragment of the one error line) for a bad input."""
    fake = stores["fake"]
    good = ["--study", "fake", "--results-dir", str(fake["folder"])]
    if case == "missing store":
        return ["--study", "fake", "--results-dir", str(tmp / "nothing")], "no MLflow store at"
    if case == "results dir is a file":
        (tmp / "file").write_text("x")
        return ["--study", "fake", "--results-dir", str(tmp / "file")], "is a file, not a folder"
    if case == "tracking uri is a path":
        return [*good, "--tracking-uri", "results/mlflow.db"], "is not a URL"
    if case in ("random mlflow.db", "truncated mlflow.db"):
        path = damaged(fake["folder"] / "mlflow.db", tmp, case.split()[0])
        return [*good, "--tracking-uri", f"sqlite:///{path}"], "cannot be read"
    if case == "optuna.db as mlflow store":
        return [*good, "--tracking-uri", fake["storage"]], "is not an MLflow store"
    if case == "unknown study":
        return ["--study", "nope", "--results-dir", str(fake["folder"])], "no study named 'nope'"
    if case == "unreachable server":
        from tests.conftest import free_port

        return [*good, "--tracking-uri", f"http://127.0.0.1:{free_port()}"], "is unreachable"
    if case == "out is a file":
        (tmp / "out.txt").write_text("x")
        return [*good, "--out", str(tmp / "out.txt")], "is a file, not a folder"
    if case == "no finished trial":
        return ["--study", "unfinished", "--results-dir", str(stores["unfinished"]["folder"])], \
            "has no finished trial yet (1 crashed)"
    if case == "missing optuna storage":
        return [*good, "--optuna-storage", f"sqlite:///{tmp / 'none.db'}"], "no Optuna storage at"
    if case in ("random optuna.db", "truncated optuna.db"):
        path = damaged(fake["folder"] / "optuna.db", tmp, case.split()[0])
        return [*good, "--optuna-storage", f"sqlite:///{path}"], "cannot be read"
    if case == "study not in optuna":
        return [*good, "--optuna-storage", stores["other_optuna"]], "has no study 'fake' (studies there: other)"
    raise AssertionError(case)


BOTH = ["missing store", "results dir is a file", "tracking uri is a path", "random mlflow.db", "truncated mlflow.db",
        "optuna.db as mlflow store", "unknown study", "unreachable server", "out is a file", "no finished trial"]
REPORT_ONLY = ["missing optuna storage", "random optuna.db", "truncated optuna.db", "study not in optuna"]


@pytest.mark.parametrize("module, case", [(m, c) for m in ("export", "report") for c in BOTH]
                         + [("report", c) for c in REPORT_ONLY])
@pytest.mark.slow
def test_a_bad_input_is_one_line_exit_2_and_changes_nothing(stores, tmp_path, capsys, module, case):
    args, message = case_args(case, stores, tmp_path)
    before = {name: snapshot(s["folder"]) for name, s in (("fake", stores["fake"]),
                                                           ("unfinished", stores["unfinished"]))}
    made = set(tmp_path.iterdir())
    main = export.main if module == "export" else report.main
    assert main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert captured.out == ""
    after = {name: snapshot(s["folder"]) for name, s in (("fake", stores["fake"]),
                                                          ("unfinished", stores["unfinished"]))}
    assert after == before  # neither study's stores nor artifacts changed, no analysis folder made
    assert set(tmp_path.iterdir()) == made  # nothing created beside the bad input (no missing store made)
    if case == "unknown study":
        assert "studies there: fake" in lines[0]


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: --study"),
    (["--study", "x", "--bogus"], "unrecognized arguments: --bogus"),
])
@pytest.mark.parametrize("module", [export, report])
def test_a_bad_flag_is_one_line_without_usage(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        module.main(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "usage" not in lines[0], lines


@pytest.mark.parametrize("module, case", [("analysis.export", "random mlflow.db"),
                                          ("analysis.report", "missing optuna storage")])
@pytest.mark.slow
def test_errors_as_a_user_sees_them(stores, tmp_path, module, case):
    """A real process: stderr is exactly one line (no warning or log line from MLflow, Optuna or Python)."""
    args, message = case_args(case, stores, tmp_path)
    out = run_module(module, args, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == "", out.stdout + out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and message in out.stderr, out.stderr


@pytest.mark.parametrize("module", ["analysis.export", "analysis.report"])
@pytest.mark.slow
def test_a_read_only_results_folder_is_one_line_naming_out(tmp_path, module):
    """The study's folder on a read-only file system (a bind mount in a user namespace, as root or not): one
    line that names --out, nothing written; with --out elsewhere the same command works."""
    mount = tmp_path / "mounted"
    fake_study(mount / "results")
    command = [sys.executable, "-m", module, "--study", "fake"]
    script = (f"mount --bind -o ro {mount} {mount} && cd {mount} && {shlex.join(command)} 2>&1; echo rc=$?; "
              f"{shlex.join(command)} --out {tmp_path / 'elsewhere'} >/dev/null 2>&1; echo rc=$?")
    out = subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", script], env=study_env(),
                         capture_output=True, text=True, timeout=300)
    lines = out.stdout.strip().splitlines()
    assert lines[:2] == [f"error: cannot write into {mount / 'results'} (read-only); pass a writable folder "
                         "with --out", "rc=2"], out.stdout + out.stderr
    assert lines[2:] == ["rc=0"] and any((tmp_path / "elsewhere").iterdir()), out.stdout + out.stderr


def test_rung_table_ranks_the_rung_against_the_end():
    import pandas as pd

    trials = pd.DataFrame({"trial_number": [0, 1, 2, 3], "method": ["AVB+AC"] * 4,
                           "fate": ["finished", "finished", "finished", "stopped_early"],
                           "final_log_likelihood": [-100.0, -110.0, -105.0, -130.0]})
    rows = [(n, step, v) for n, values in {0: (-120, -100), 1: (-115, -110), 2: (-118, -105), 3: (-130,)}.items()
            for step, v in zip((4000, 8000), values)]
    history = pd.DataFrame(rows, columns=["trial_number", "step", "value"]).assign(metric="log_likelihood")
    table, rho = tables.rung_table(trials, history, 4000)
    assert list(table["trial_number"]) == [1, 2, 0, 3]  # best at the rung first
    assert rho == pytest.approx(-1.0)  # the rung ranked the three finished trials backwards
    assert math.isnan(tables.rung_table(trials.head(2), history, 4000)[1])  # fewer than 3 finished


def test_importances_take_a_baseline_outside_the_searched_range():
    """An enqueued baseline (the authors' lr 5e-5) may lie under the prior's low end (1e-4): still counted."""
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"lr": 5e-5})
    for value in (-2.0, -1.0):
        trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)})
        trial.set_user_attr("full_fidelity", True)
        study.tell(trial, value)
    copy = importances.full_fidelity_study(study)
    assert sorted(t.params["lr"] for t in copy.trials)[0] == 5e-5 and len(copy.trials) == 2
