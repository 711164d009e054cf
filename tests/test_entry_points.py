"""Every command in the README runs in its smoke mode, and bad input gets one line and a non-zero exit."""

import json
import math
import re
import subprocess
import sys

import pytest

from tests.study_utils import ROOT

TINY = ["--hidden", "16", "--adv-hidden", "16", "--adv-inner", "8", "--batch-size", "32", "--eval-samples", "500"]


def run(args, cwd):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_one_configuration_trains_writes_and_resumes(tmp_path):
    out = run(["-m", "avb", *TINY, "--steps", "40", "--log-every", "20", "--out", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 0, out.stderr
    assert "step      20/40" in out.stdout and "it/s" in out.stdout  # progress while it trains
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics) == {"log_likelihood", "log_likelihood_se", "log_likelihood_mc_se", "reconstruction_error",
                            "adversary_elbo", "kl_qz_pz"}
    assert "parameters: encoder" in out.stdout
    assert (tmp_path / "run" / "latent.png").stat().st_size > 5000
    resumed = run(["-m", "avb", "--steps", "60", "--log-every", "20", "--resume", "--out", str(tmp_path / "run")],
                  tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "from step 40" in resumed.stdout and "step      60/60" in resumed.stdout


@pytest.mark.slow
def test_bad_flag_value_is_one_line(tmp_path):
    out = run(["-m", "avb", "--adv-hidden", "0", "--out", str(tmp_path / "x")], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: adv_hidden=0 must be a positive integer (>= 1)"
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bad_output_and_resume_are_one_line_before_training(tmp_path):
    (tmp_path / "a_file").write_text("keep me")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "trainer.pt").write_bytes(b"\x00garbage" * 100)
    cases = {
        ("--out", str(tmp_path / "a_file")): "is an existing file",
        ("--out", str(tmp_path / "a_file" / "sub")): "cannot be created",
        ("--resume", "--out", str(tmp_path / "none")): "no checkpoint at",
        ("--resume", "--out", str(tmp_path / "bad")): "not a readable checkpoint",
    }
    for args, message in cases.items():
        out = run(["-m", "avb", *TINY, "--steps", "5", *args], tmp_path)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and message in out.stderr, out.stderr
        assert "step " not in out.stdout  # nothing trained
    assert (tmp_path / "a_file").read_text() == "keep me" and not (tmp_path / "none").exists()


@pytest.mark.slow
def test_folder_with_a_broken_image_is_one_line(tmp_path):
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    out = run(["-m", "avb", "--dataset", "folder", "--data-root", str(tmp_path), "--arch", "conv", "--steps", "1",
               "--out", str(tmp_path / "run")], tmp_path)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "broken.png" in out.stderr


@pytest.mark.slow
def test_help_of_every_entry_point_states_defaults(tmp_path):
    for args in (["-m", "avb"], [str(ROOT / "study" / "run.py")], [str(ROOT / "benchmarks" / "speed.py")],
                 [str(ROOT / "benchmarks" / "reproduce_table1.py")], [str(ROOT / "benchmarks" / "posterior.py")],
                 [str(ROOT / "benchmarks" / "images.py")], [str(ROOT / "benchmarks" / "estimators.py")],
                 [str(ROOT / "benchmarks" / "ac_schedules.py")], [str(ROOT / "benchmarks" / "search_replay.py")],
                 [str(ROOT / "benchmarks" / "ac_balance.py")]):
        out = run([*args, "--help"], tmp_path)
        assert out.returncode == 0 and "default" in out.stdout, args


@pytest.mark.slow
def test_reproduction_smoke_run_writes_table_and_pictures(tmp_path):
    out = run([str(ROOT / "benchmarks" / "reproduce_table1.py"), "--smoke", "--out", str(tmp_path),
               "--runs", str(tmp_path / "runs")], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    table = (tmp_path / "table1.md").read_text()
    assert "| log-likelihood | -1.593 |" in table and "Targets:" in table and "not a bound" in table
    assert "| the same, per pixel (/4) |" in table and "| seed 1 |" in table
    assert {p.name for p in tmp_path.glob("latent_*.png")} == {"latent_vae.png", "latent_avb.png", "latent_avb_ac.png"}
    assert (tmp_path / "runs" / "avb_ac" / "trainer.pt").exists()

    # the exact-posterior check reuses those checkpoints only when their config matches (here: 30 steps)
    post = run([str(ROOT / "benchmarks" / "posterior.py"), "--smoke", "--out", str(tmp_path),
                "--runs", str(tmp_path / "runs")], tmp_path)
    assert post.returncode == 0, post.stderr[-2000:]
    doc = (tmp_path / "posterior.md").read_text()
    assert doc.count("loaded ") == 3 and "sampling floor" in doc and "| AVB+AC |" in doc
    assert (tmp_path / "posterior.png").stat().st_size > 5000


@pytest.mark.slow
def test_ac_schedules_smoke_prints_each_stage(tmp_path):
    for schedule, factors in (("decay", ["1", "0.1", "0.1"]), ("authors", ["1"] * 4),
                              ("longest-primal", ["1", "1", "1", "0.1, adversary's x 1"]),
                              ("anneal-primal", ["1", *(f"{f}, adversary's x 1" for f in (0.5, 0.25, 0.12, 0.06,
                                                                                          0.03))])):
        out = run([str(ROOT / "benchmarks" / "ac_schedules.py"), "--smoke", "--schedule", schedule], tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = [line for line in out.stdout.splitlines() if line.startswith("step ")]
        assert [line.split("(lr x ")[1].split(")")[0] for line in lines] == factors, out.stdout
        assert all("log p(x) exact -" in line and "(IS)" in line for line in lines), out.stdout
        for line in lines:  # the exact value = -log 4 - the mass off the data - the unequal shares, each >= 0
            exact, off, unequal = (float(line.split(key)[1].split()[0]) for key in ("exact ", "log 4 - ", "data - "))
            assert off >= 0 and unequal >= 0 and abs(-math.log(4) - off - unequal - exact) < 2e-4, line
    polyak = run([str(ROOT / "benchmarks" / "ac_schedules.py"), "--smoke", "--schedule", "long", "--average-after",
                  "15", "18"], tmp_path)
    averaged = [line for line in polyak.stdout.splitlines() if "averaged decoder" in line]
    assert polyak.returncode == 0 and len(averaged) == 3, polyak.stdout + polyak.stderr[-2000:]
    assert ["(after 15, 3 iterates)", "(after 15, 6 iterates)", "(after 18, 3 iterates)"] == [
        line[line.index("("):line.index(")") + 1] for line in averaged], polyak.stdout
    bad = run([str(ROOT / "benchmarks" / "ac_schedules.py"), "--smoke", "--set", "basis_sise=8"], tmp_path)
    assert bad.returncode == 2 and "unknown config field(s) basis_sise" in bad.stderr, bad.stderr[-2000:]


@pytest.mark.slow
def test_ac_schedules_restarts_choose_on_the_adversarys_elbo_estimate(tmp_path):
    script = str(ROOT / "benchmarks" / "ac_schedules.py")
    out = run([script, "--smoke", "--schedule", "recipe", "--restarts", "3", "--choose-at", "4000"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    starts = [line for line in out.stdout.splitlines() if line.startswith("start ")]
    assert [line.split(" at ")[0] for line in starts] == ["start 0 (seed 1)", "start 1 (seed 1001)",
                                                         "start 2 (seed 2001)"], out.stdout
    elbos = [float(line.split("ELBO estimate ")[1].split(",")[0]) for line in starts]
    chosen = next(line for line in out.stdout.splitlines() if line.startswith("chosen: "))
    best = int(chosen.split("start ")[1].split()[0])
    assert chosen.startswith(f"chosen: start {best} (seed {1 + 1000 * best})") and elbos[best] == max(elbos), chosen
    # the chosen start goes on from step 4 as a single run of its seed would (a run repeats itself on one machine)
    single = run([script, "--smoke", "--schedule", "recipe", "--seed", str(1 + 1000 * best)], tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    first = single.stdout.splitlines()[0]
    assert first.startswith("step      5 (") and first.split("  [")[0] in out.stdout, single.stdout + out.stdout
    bad = run([script, "--smoke", "--schedule", "recipe", "--restarts", "2", "--choose-at", "9000"], tmp_path)
    assert bad.returncode == 2 and "--choose-at within the first stage (1..5)" in bad.stderr, bad.stderr[-2000:]
    bad = run([script, "--smoke", "--schedule", "decay", "--restarts", "2", "--choose-at", "4000", "--average-after",
               "2"], tmp_path)
    assert bad.returncode == 2 and "--average-after steps from --choose-at on" in bad.stderr, bad.stderr[-2000:]


@pytest.mark.slow
def test_ac_balance_branches_from_one_kept_trunk(tmp_path):
    script, cache = str(ROOT / "benchmarks" / "ac_balance.py"), tmp_path / "trunks"
    tiny = ["--trunk", "20", "--steps", "12", "--trace-every", "5", "--cache", str(cache)]

    def readings(out):  # each line without its minutes
        assert out.returncode == 0, out.stderr[-2000:]
        return [line.split("  [")[0] for line in out.stdout.splitlines() if not line.startswith("regions: ")]

    first = readings(run([script, *tiny, "--picture", str(tmp_path / "regions.png"), "--picture-at", "25"], tmp_path))
    assert [line.split(":")[0] for line in first] == ["trunk, step 20", "step     25", "step     30", "step     32"]
    for line in first:  # the exact value = -log 4 - the mass off the data - the unequal shares; 4 shares sum to 1
        exact, off, unequal = (float(line.split(key)[1].split()[0]) for key in ("exact ", "log 4 - ", "data - "))
        assert off >= 0 and unequal >= 0 and abs(-math.log(4) - off - unequal - exact) < 2e-4, line
        shares = [float(v) for v in line.split("shares ")[1].split(",")[0].split()]
        assert len(shares) == 4 and abs(sum(shares) - 1) < 3e-3, line
        assert len(line.split("estimate - exact ")[1].split()) == 4, line
    kept = cache / "seed19-20.pt"
    assert kept.exists() and (tmp_path / "regions.png").stat().st_size > 5000
    written = kept.stat().st_mtime_ns

    # the unchanged branch from the kept trunk repeats the first run, which went on from the trunk in memory
    assert readings(run([script, *tiny], tmp_path)) == first and kept.stat().st_mtime_ns == written
    for change in (["--primal-factor", "0.5"], ["--adversary-factor", "0.5"], ["--kl-weight", "2"],
                   ["--set", "adv_steps=2"], ["--new-adversary", "3", "--set", "adv_inner=8"]):
        branch = readings(run([script, *tiny[:2], "--steps", "5", *tiny[4:], *change], tmp_path))  # one reading
        assert branch[0] == first[0] and branch[1] != first[1], change  # the same trunk, another branch

    for bad, says in ((["--set", "adv_steps=0"], "adv_steps=0 must be a positive integer"),
                      (["--set", "lr=1"], "--set lr: a branch can change only adv_steps, batch_size"),
                      (["--picture", "r.png", "--picture-at", "27"], "--picture-at takes trace steps"),
                      (["--seed", "1", "2"], "several seeds (1 2) only with --steps 0")):
        out = run([script, *tiny, *bad], tmp_path)
        assert out.returncode == 2 and says in out.stderr, (bad, out.stderr[-2000:])
    kept.write_bytes(b"half a checkpoint")
    out = run([script, *tiny], tmp_path)
    assert out.returncode == 2 and "is not a readable checkpoint" in out.stderr, out.stderr[-2000:]


@pytest.mark.slow
def test_image_benchmark_smoke_run(tmp_path):
    seed1 = run([str(ROOT / "benchmarks" / "images.py"), "--smoke", "--only-seed", "1", "--out", str(tmp_path),
                 "--runs", str(tmp_path / "runs")], tmp_path)  # a second process's seed, trained beforehand
    assert seed1.returncode == 0 and not (tmp_path / "images.md").exists(), seed1.stderr[-2000:]
    assert len(list((tmp_path / "runs").glob("*_seed1/record.json"))) == 3
    grid = run([str(ROOT / "benchmarks" / "images.py"), "--only-seed", "1", "--lrs", "3e-4", "1e-3", "--runs",
                str(tmp_path / "grid")], tmp_path)  # seed 1 of which rate? the grid's choice is seed 0's
    assert grid.returncode == 2 and "--only-seed needs one learning rate" in grid.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "grid").exists()
    out = run([str(ROOT / "benchmarks" / "images.py"), "--smoke", "--out", str(tmp_path), "--runs",
               str(tmp_path / "runs")], tmp_path)
    assert out.returncode == 0 and out.stdout.count("reusing the finished run") == 3, out.stderr[-2000:]
    doc = (tmp_path / "images.md").read_text()
    assert re.search(r"^AVB\+AC - VAE: -?\d+\.\d+ ± \d+\.\d+ nats$", doc, re.M), doc
    assert (tmp_path / "images.png").stat().st_size > 5000 and len(list(tmp_path.glob("images_samples_*.png"))) == 3
    again = run([str(ROOT / "benchmarks" / "images.py"), "--smoke", "--methods", "VAE", "AVB", "--out",
                 str(tmp_path / "again"), "--runs", str(tmp_path / "runs")], tmp_path)  # finished runs are reused
    assert again.returncode == 0 and again.stdout.count("reusing the finished run") == 4, again.stdout[-2000:]
    assert again.stdout.count("test-5x2-is20.pt (delete it to recompute)") == 4  # and their test AIS, kept
    assert doc.split("| VAE |")[1][:40] in (tmp_path / "again" / "images.md").read_text()


@pytest.mark.slow
def test_speed_benchmark_smoke_run(tmp_path):
    out = run([str(ROOT / "benchmarks" / "speed.py"), "--quick", "--out", ""], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| synthetic, paper size")]
    assert rows and float(rows[0][5]) > 0, out.stdout  # the it/s column
    paired = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| mnist_mlp, ")]
    assert len(paired) == 2 and all(float(r[3]) > 0 and float(r[4]) > 0 for r in paired), out.stdout


@pytest.mark.slow
def test_estimator_benchmark_smoke_run(tmp_path):
    from avb import checkpoint
    from avb.config import Config
    from avb.train import Trainer

    paths = []
    for name, changes in (("VAE", dict(objective="vae", encoder="gaussian")), ("AVB+AC", dict(encoder="basis"))):
        cfg = Config(dataset="digits", latent_dim=4, noise_dim=4, basis_size=2, basis_hidden=8, hidden=16,
                     adv_hidden=16, adv_inner=8, **changes)
        paths.append(f"{name}={checkpoint.save(Trainer(cfg, (1, 8, 8)), tmp_path / name / 'trainer.pt')}")
    out = run([str(ROOT / "benchmarks" / "estimators.py"), "--smoke", *paths, "--out", str(tmp_path / "e.md")],
              tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = (tmp_path / "e.md").read_text()
    assert "| AIS 500 x 1 | " in doc and "| VAE | AVB+AC |" in doc
    bad = run([str(ROOT / "benchmarks" / "estimators.py"), f"VAE={tmp_path / 'none.pt'}"], tmp_path)
    assert bad.returncode == 2 and "expected METHOD=CHECKPOINT" in bad.stderr
