"""Tune's saved state made to agree with the study's records before a restore (study/tune_state.py): the real
Optuna store, a state file in the layout Ray 2.60 writes (the full path through Ray: tests/test_resume.py)."""

from __future__ import annotations

import json
from pathlib import Path

import optuna

from study.settings import StudySettings
from study.tune_state import keep_crashed_trials_crashed
from trainables import tracking


def saved_trial(number: int, status: str, folder: str) -> list[str]:
    trial = {"trial_id": f"t{number}", "status": status, "relative_logdir": folder,
             "config": {"lr": 1e-4, tracking.TRIAL_NUMBER: number}}
    meta = {"error_filename": None, "pickled_error_filename": None, "num_failures": 0}
    return [json.dumps(trial), json.dumps(meta)]


def study_with(tmp_path: Path, fates: list[tuple[optuna.trial.TrialState, str]]) -> StudySettings:
    settings = StudySettings(study_name="s", optuna_storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(study_name="s", storage=settings.optuna_storage, direction="maximize")
    for state, fate in fates:
        trial = study.ask()
        trial.set_user_attr(tracking.FATE, fate)
        study.tell(trial, 0.0 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return settings


def test_a_crashed_trial_saved_as_running_is_saved_as_error_with_an_error_file(tmp_path):
    FAIL, COMPLETE = optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE
    settings = study_with(tmp_path, [(FAIL, "crashed"), (COMPLETE, "finished"), (FAIL, "diverged"), (FAIL, "crashed")])
    experiment = tmp_path / "ray" / "s"
    for folder in ("a", "b", "c", "d"):
        (experiment / folder).mkdir(parents=True)
    older = experiment / "experiment_state-2026-01-01_00-00-00.json"
    older.write_text(json.dumps({"trial_data": [saved_trial(0, "RUNNING", "a")]}))
    trials = [saved_trial(0, "RUNNING", "a"), saved_trial(1, "RUNNING", "b"), saved_trial(2, "RUNNING", "c"),
              saved_trial(3, "TERMINATED", "d")]  # 3: crashed by Optuna, ended by Tune: Tune's say, as any end
    newest = experiment / "experiment_state-2026-01-02_00-00-00.json"
    newest.write_text(json.dumps({"trial_data": trials, "runner_data": {"x": 1}}))

    assert keep_crashed_trials_crashed(settings, str(experiment)) == {0: "t0"}
    state = json.loads(newest.read_text())
    (crashed, crashed_meta), *others = [tuple(map(json.loads, t)) for t in state["trial_data"]]
    assert crashed["status"] == "ERROR" and crashed_meta["error_filename"] == "error.txt"
    assert crashed_meta["pickled_error_filename"] is None  # no error.pkl to name
    assert "crashed" in (experiment / "a" / "error.txt").read_text()
    assert [t["status"] for t, _ in others] == ["RUNNING", "RUNNING", "TERMINATED"]  # finished, diverged: Tune's
    assert state["runner_data"] == {"x": 1} and json.loads(older.read_text())["trial_data"][0][0] == trials[0][0]
    assert not list(experiment.glob("*.tmp")) and not list(experiment.glob("[bcd]/error.txt"))


def test_a_state_that_agrees_is_left_untouched(tmp_path):
    settings = study_with(tmp_path, [(optuna.trial.TrialState.FAIL, "crashed")])
    experiment = tmp_path / "ray" / "s"
    (experiment / "a").mkdir(parents=True)
    (experiment / "a" / "error.txt").write_text("Tune's own error\n")
    state_file = experiment / "experiment_state-2026-01-01_00-00-00.json"
    trial, meta = saved_trial(0, "ERROR", "a")
    state_file.write_text(json.dumps({"trial_data": [[trial, meta]]}))
    before = state_file.stat().st_mtime_ns, state_file.read_text()

    assert keep_crashed_trials_crashed(settings, str(experiment)) == {}
    assert (state_file.stat().st_mtime_ns, state_file.read_text()) == before
    assert (experiment / "a" / "error.txt").read_text() == "Tune's own error\n"
