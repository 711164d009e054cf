"""The report's anytime curve and random search's expectation from recorded curves (analysis/anytime.py)."""

import numpy as np
import pandas as pd
import pytest

from analysis import anytime


def test_random_search_expectation_is_the_expected_best_of_k_draws():
    finals = np.array([-2.0, -1.6, -1.5, -1.45])
    got = anytime.random_search_expectation(finals, np.array([4, 8, 16, 8 * 200]), 8)
    assert np.isnan(got[0])  # not one full trial yet
    assert got[1] == pytest.approx(finals.mean())  # one draw
    assert got[2] == pytest.approx(np.mean([max(a, b) for a in finals for b in finals]))  # two draws
    assert got[3] == pytest.approx(-1.45, abs=1e-6)  # many draws: the best recorded value


def history_rows(run_id, values, start, spacing=10.0):
    t0 = pd.Timestamp("2026-12-06T00:00:00Z")
    return [{"run_id": run_id, "metric": "log_likelihood", "step": 100 * (k + 1), "value": v,
             "timestamp": t0 + pd.Timedelta(seconds=start + spacing * k)} for k, v in enumerate(values)]


def test_study_curve_counts_iterations_in_logged_order_and_only_full_trials():
    trials = pd.DataFrame({"run_id": ["a", "b", "c"], "full_fidelity": [True, False, True]})
    history = pd.DataFrame(history_rows("a", [-2.0, -1.6], 0) + history_rows("b", [-1.3], 5)
                           + history_rows("c", [-1.9, -1.5], 12))
    curve = anytime.study_curve(trials, history)
    # logged order: a1 (0 s), b1 (5 s), a2 (10 s), c1 (12 s), c2 (22 s); b was stopped early: never counted
    assert curve["spent"].tolist() == [1, 2, 3, 4, 5]
    assert curve["best"].fillna(0).tolist() == [0, 0, -1.6, -1.6, -1.5]


def test_recorded_finals_only_for_the_recorded_settings(tmp_path):
    path = tmp_path / "curves.csv"
    pd.DataFrame({"hidden": [128] * 25, "batch_size": [128] * 25, "steps": [4000] * 25,
                  "ll_8": np.linspace(-1.6, -1.4, 25)}).to_csv(path, index=False)
    trials = pd.DataFrame({"hidden": [128, 128], "batch_size": [128, 128], "steps": [4000, 4000]})
    assert len(anytime.recorded_finals(trials, "synthetic", path)) == 25
    assert anytime.recorded_finals(trials.assign(hidden=256), "synthetic", path) is None
    assert anytime.recorded_finals(trials, "mnist_mlp", path) is None
