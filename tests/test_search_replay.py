"""The search replay (benchmarks/search_replay.py) and its surrogate (benchmarks/surrogate.py): recorded curves
read back as the study wrote them, and the study's own sampler and ASHA scheduler driven as Tune drives them."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks import search_replay, surrogate

ROOT = Path(__file__).resolve().parents[1]


def fake_curves(n: int, seed: int = 0) -> pd.DataFrame:
    """Curves whose final value is a known function of lr and adv_hidden (best near lr 1e-3, adv_hidden 256)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        lr, adv_lr = 10 ** rng.uniform(-4, math.log10(3e-3)), 10 ** rng.uniform(-4, math.log10(3e-3))
        hidden = int(2 ** rng.uniform(5, 9))
        final = -1.40 - 0.1 * (math.log10(lr) + 3) ** 2 - 0.02 * (math.log2(hidden) - 8) ** 2
        curve = [final - 0.8 * 0.6 ** k for k in range(8)]
        rows.append({"study": "fake", "trial_number": i, "fate": "finished", "lr": lr, "adv_lr": adv_lr,
                     "adv_hidden": hidden, "adv_inner": int(2 ** rng.uniform(4, 9)),
                     "adv_depth": int(rng.integers(1, 4)),
                     "adv_steps": int(rng.integers(1, 3)), "beta1": float(rng.choice([0.0, 0.5, 0.9])),
                     **dict(zip(surrogate.LL, curve)), "seconds_per_iteration": 5 + hidden / 100})
    return pd.DataFrame(rows)


def test_curves_are_read_as_the_study_recorded_them():
    """A finished trial keeps its 8 values; a diverged one counts as FLOOR from its divergence on; a trial cut
    short (interrupted) is left out; seconds per iteration come from the metric timestamps."""
    params = {"lr": 1e-3, "adv_lr": 1e-3, "adv_hidden": 64, "adv_inner": 64, "adv_depth": 2, "adv_steps": 1,
              "beta1": 0.5}
    trials = pd.DataFrame([{"trial_number": n, "run_id": f"r{n}", "fate": fate, **params}
                           for n, fate in enumerate(["finished", "diverged", "interrupted"])])
    t0 = pd.Timestamp("2026-12-06T00:00:00Z")
    history = [{"run_id": "r0", "metric": "log_likelihood", "step": k, "value": -2.0 + 0.05 * k,
                "timestamp": t0 + pd.Timedelta(seconds=6 * k)} for k in range(1, 9)]
    history += [{"run_id": "r1", "metric": "log_likelihood", "step": k, "value": v,
                 "timestamp": t0 + pd.Timedelta(seconds=4 * k)} for k, v in ((1, -2.1), (2, -2.0), (3, -math.inf))]
    history += [{"run_id": "r2", "metric": "log_likelihood", "step": 1, "value": -2.2, "timestamp": t0}]
    curves = surrogate.curves_of(trials, pd.DataFrame(history), "s")
    assert curves["trial_number"].tolist() == [0, 1]
    assert curves.loc[0, surrogate.LL].tolist() == pytest.approx([-2.0 + 0.05 * k for k in range(1, 9)])
    assert curves.loc[1, surrogate.LL].tolist() == [-2.1, -2.0] + [surrogate.FLOOR] * 6
    assert curves["seconds_per_iteration"].tolist() == [6.0, 4.0]


def test_the_surrogate_ranks_held_out_configurations():
    """The held-out check can tell a surrogate that learned the curves (a known function here) from noise."""
    curves = fake_curves(80)
    good = surrogate.heldout_check(curves, "extra_trees")
    shuffled = curves.copy()
    shuffled[surrogate.LL] = shuffled[surrogate.LL].sample(frac=1, random_state=1).to_numpy()
    noise = surrogate.heldout_check(shuffled, "extra_trees")
    assert good["spearman_final"] > 0.8 and abs(noise["spearman_final"]) < 0.4, (good, noise)
    pred = surrogate.Surrogate(curves).predict(curves.iloc[:3])
    assert pred.shape == (3, 9) and (pred[:, 8] > 5).all()  # seconds per iteration, back on their scale


def test_replay_drives_the_studys_asha_and_sampler():
    """ASHA (the study's scheduler object) stops trials only at its rungs (iterations 2 and 4 of 8); random search
    runs every trial to the end; the searcher records the fates in Optuna; a seed replays identically."""
    model = surrogate.Surrogate(fake_curves(60))
    asha = search_replay.replay("random_asha", 0, 4, 160, model, 0.004)
    assert set(asha["stopped_at"]) <= {2, 4} and sum(asha["stopped_at"].values()) >= 5, asha
    assert asha["fates"]["finished"] >= 3 and asha["fates"].get("running", 0) == 4
    plain = search_replay.replay("random", 0, 4, 160, model, 0.004)
    assert "stopped_early" not in plain["fates"] and 160 // 8 - 4 <= plain["fates"]["finished"] < 160 // 8
    budgets = [s for s, _ in asha["trace"]]
    assert budgets == sorted(budgets) and all(b <= 160 for b in budgets)
    assert [v for _, v in asha["trace"]] == sorted(v for _, v in asha["trace"])  # the best so far only rises
    tpe = search_replay.replay("tpe_asha", 3, 8, 120, model, 0.004)
    assert tpe == search_replay.replay("tpe_asha", 3, 8, 120, model, 0.004)


def test_ratios_are_medians_over_seeds_with_an_interval():
    rng = np.random.default_rng(0)
    point, lo, hi = search_replay.median_ratio([10, 20, 30], [40, 40, 80], rng)
    assert point == 0.5 and lo <= point <= hi
    assert math.isinf(search_replay.median_ratio([math.inf] * 3, [10, 20, 30], rng)[0])
    trace = [(16, -1.6), (40, -1.45), (90, -1.41)]
    assert search_replay.best_at(trace, 50) == -1.45 and search_replay.reach(trace, -1.42, 100) == 90
    assert math.isinf(search_replay.reach(trace, -1.42, 64))


@pytest.mark.slow
def test_smoke_run_and_bad_strategy(tmp_path):
    curves = tmp_path / "curves.csv"
    fake_curves(40).to_csv(curves, index=False)
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_replay.py"), *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=tmp_path, timeout=300)
    out = run("--smoke", "--curves", str(curves), "--workers", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| 32 | 4 |" in out.stdout and "random + ASHA" in out.stdout and "[9/18]" in out.stdout
    bad = run("--strategies", "tpe_asha,simulated_annealing", "--curves", str(curves))
    assert bad.returncode == 2 and "simulated_annealing" in bad.stderr and "known:" in bad.stderr
    bad = run("--noise", "loud", "--curves", str(curves))
    assert bad.returncode == 2 and "--noise" in bad.stderr
    check = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "surrogate.py"), "check", "--curves",
                            str(curves), "--models", "extra_trees,knn"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0 and "| extra_trees |" in check.stdout and "| knn |" in check.stdout, check.stderr
