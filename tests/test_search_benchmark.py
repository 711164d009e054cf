"""benchmarks/search_efficiency.py: its arithmetic on hand-made records, and its code paths end to end at a tiny
budget (the smoke mode; real Ray, MLflow and Optuna). The measurement itself is not run here."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.study_utils import ROOT, study_env

sys.path.insert(0, str(ROOT / "benchmarks"))
import search_efficiency as bench  # noqa: E402

from benchmarks import study_records as records  # noqa: E402

SCRIPT = ROOT / "benchmarks" / "search_efficiency.py"


def trial(number, fate, values, start=0, step=10, iterations=4, diverged_at=None):
    """A Trial whose iteration i (1-based) was logged at start + i * step ms."""
    events = [(start + i * step, i, v) for i, v in enumerate(values, 1)]
    if diverged_at is not None:
        events.append((start + diverged_at * step, diverged_at, None))
    return records.Trial(number, fate, events, method="AVB")


def test_anytime_curve_counts_only_full_fidelity_values_in_logged_order():
    trials = [
        trial(0, "stopped_early", [-1.30, -1.30], start=0),  # great early values, never full fidelity: ignored
        trial(1, "finished", [-1.6, -1.5, -1.45, -1.44], start=5),  # full at t=45
        trial(2, "diverged", [-1.7], start=21, diverged_at=2),  # 2 iterations spent, no value
        trial(3, "finished", [-1.5, -1.45, -1.41, -1.40], start=50),  # full at t=90
    ]
    curve = records.anytime_curve(trials, iterations=4, budget=12)
    # order: t0:10 t1:15 t0:20 t1:25 t2:31 t1:35 t2:41(div) t1:45(full -1.44) t3:60 70 80 90(full -1.40)
    assert curve[:7] == [-math.inf] * 7
    assert curve[7:11] == [-1.44] * 4 and curve[11] == -1.40
    assert records.budget_to_target(curve, -1.42) == 12
    assert records.budget_to_target(curve, -1.45) == 8
    assert records.budget_to_target(records.anytime_curve(trials, 4, 11), -1.42) is None  # cut by the budget
    assert records.fates_at_budget(trials, 4, 10) == {"stopped_early": 1, "finished": 1, "diverged": 1, "cut": 1}
    assert records.finished_methods(trials, 4, 12) == {"AVB": 2}


def test_medians_and_the_ratio_line():
    assert records.median_budget([10, None, 30]) == 30
    assert math.isinf(records.median_budget([None, None, 30]))
    assert bench.ratio(20, 40, 64) == "0.50"
    assert bench.ratio(math.inf, 32, 64).startswith("> 2.00 ")  # TPE needed more than 64, random 32
    assert bench.ratio(32, math.inf, 64).startswith("< 0.50 ")  # TPE needed 32, random more than 64


def search_result(ratio="0.50"):
    curve = [None, -1.5, -1.41]
    seed = {"seed": 0, "budget_to_target": 3, "curve": curve, "trials": 2, "fates": {"finished": 1, "cut": 1},
            "wall_s": 60.0}
    return {"budget": 3, "target": -1.42, "seeds": [0], "iterations": 1, "steps_per_iteration": 10,
            "set": ["hidden=16"], "baselines": False, "concurrency": 2, "when": "now", "command": "python x",
            "figure": "f.png", "ratio": ratio,
            "strategies": {s: {"label": bench.STRATEGIES[s][0], "seeds": [seed], "median_budget": 3}
                           for s in ("tpe_asha", "random")}}


def test_document_blocks_are_filled_and_hand_written_text_is_kept(tmp_path):
    doc = tmp_path / "search.md"
    doc.write_text("# Title\n\nhand-written analysis\n\n<!-- search:begin -->\nold\n<!-- search:end -->\n\ntail\n")
    overhead = {"when": "now", "command": "python x", "load": [[0.1, 0.2, 0.3], [0.2, 0.2, 0.3]],
                "config": {"lr": 1e-3}, "iterations": 3, "steps_per_iteration": 10,
                "plain": [{"s_per_iteration": 1.0, "total_s": 3.0}], "tune": [{"s_per_iteration": 1.03,
                                                                                "study_wall_s": 30.0}],
                "plain_s_per_iteration": 1.0, "tune_s_per_iteration": 1.03, "overhead_percent": 3.0}
    bench.write_doc(doc, {"search": search_result(), "overhead": overhead, "packing": {}}, new=["overhead"])
    text = doc.read_text()
    assert "hand-written analysis" in text and "tail" in text and "old" not in text
    assert "\nbudget ratio (TPE+ASHA / random search): 0.50\n" in text
    assert "\nTune overhead: 3%\n" in text and "<!-- overhead:begin -->" in text
    assert "packing:begin" not in text  # a block neither in the document nor new is left out
    bench.write_doc(doc, {"search": search_result("0.25")})  # filled again: replaced, not appended
    assert text.count("budget ratio") == 1 and "search): 0.25" in doc.read_text()


def test_figure_is_written(tmp_path):
    bench.plot(search_result(), tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000


def test_help_states_defaults():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())  # argparse wraps lines
    for default in ("default: 64", "default: -1.42", "default: 0,1,2", "hidden=128", "--smoke"):
        assert default in text


def run_smoke(tmp_path, *args):
    out = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--results-dir", str(tmp_path), *args],
                         cwd=tmp_path, env=study_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads((tmp_path / "smoke" / "search-benchmark.json").read_text())
    return out, data, (tmp_path / "smoke" / "search.md").read_text()


@pytest.mark.slow
def test_smoke_search_stops_asha_studies_at_the_budget(tmp_path):
    out, data, doc = run_smoke(tmp_path, "--parts", "search", "--strategies", "tpe_asha,random")
    search = data["search"]
    for strategy in ("tpe_asha", "random"):
        (seed,) = search["strategies"][strategy]["seeds"]
        assert len(seed["curve"]) == search["budget"] == 4
        assert seed["spent"] == 4 and sum(seed["fates"].values()) == seed["trials"] >= 2
    asha = search["strategies"]["tpe_asha"]["seeds"][0]
    assert asha["stopped_at_budget"]  # 4 trial-iterations, then the study was stopped (it had 4 trials x 2)
    assert "budget ratio (TPE+ASHA / random search): " in doc and "budget ratio" in out.stdout
    assert (tmp_path / "smoke" / "search.png").exists()


@pytest.mark.slow
def test_smoke_timing_parts(tmp_path):
    out, data, doc = run_smoke(tmp_path, "--parts", "overhead,packing", "--packing", "2")
    overhead = data["overhead"]
    assert len(overhead["plain"]) == len(overhead["tune"]) == 1
    assert overhead["plain_s_per_iteration"] > 0 and overhead["tune_s_per_iteration"] > 0
    assert [r["concurrency"] for r in data["packing"]["rows"]] == [2]
    assert data["packing"]["rows"][0]["trial_iterations_per_min"] > 0
    assert "Tune overhead: " in doc and "| 2 | 1 | 0 |" in doc
