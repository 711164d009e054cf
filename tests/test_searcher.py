"""The searcher records each trial's fate truthfully in Optuna (no Ray needed: it is driven as Tune drives it)."""

import functools
import math

import optuna
import pytest
from optuna.trial import TrialState

from search_spaces import load_preset
from study.searcher import NUMBER_KEY, DivergenceAwareTPE, StudySearch

optuna.logging.set_verbosity(optuna.logging.ERROR)


def preset_space(name="synthetic", **fixed):
    """The preset's space as the study hands it to the searcher: with the study's base Config."""
    preset = load_preset(name)
    return functools.partial(preset.space, base=preset.BASE.replace(**fixed))


def searcher(storage=None, full_iterations=4, fixed=None, space=None, sampler=None, name="s"):
    return StudySearch(space or preset_space(), metric="log_likelihood", mode="max",
                       sampler=sampler or optuna.samplers.TPESampler(seed=0), study_name=name,
                       storage=storage or optuna.storages.InMemoryStorage(), full_iterations=full_iterations,
                       fixed=fixed)


def result(value, iteration, **extra):
    return {"log_likelihood": value, "training_iteration": iteration, **extra}


def test_each_fate_gets_its_state_and_every_iteration_is_an_intermediate_value():
    s = searcher()
    for trial_id in ("full", "early", "first-rung", "diverged", "crashed"):
        assert "lr" in s.suggest(trial_id)
    for trial_id in ("full", "early"):
        s.on_trial_result(trial_id, result(-2.0, 1))
    s.on_trial_result("full", result(-1.6, 2))
    s.on_trial_result("full", result(-1.5, 3))
    # Tune hands a trial's last result to on_trial_complete only
    s.on_trial_complete("full", result(-1.45, 4))
    s.on_trial_complete("early", result(-1.40, 2))  # ASHA stopped it: better, but low fidelity
    s.on_trial_complete("first-rung", result(-1.9, 1))  # stopped at the first rung: no on_trial_result at all
    s.on_trial_result("diverged", result(-2.5, 1))
    s.on_trial_complete("diverged", result(-math.inf, 2, diverged=True))
    s.on_trial_complete("crashed", None, error=True)

    study = s._ot_study
    trials = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    assert {k: t.state for k, t in trials.items()} == {
        "full": TrialState.COMPLETE, "early": TrialState.PRUNED, "first-rung": TrialState.PRUNED,
        "diverged": TrialState.FAIL, "crashed": TrialState.FAIL}
    assert trials["full"].intermediate_values == {1: -2.0, 2: -1.6, 3: -1.5, 4: -1.45}
    assert trials["full"].value == -1.45
    assert trials["early"].value == -1.40 and trials["early"].intermediate_values == {1: -2.0, 2: -1.40}
    assert trials["first-rung"].value == -1.9  # PRUNED with its last value
    assert trials["diverged"].intermediate_values == {1: -2.5}  # the non-finite value is never reported
    assert {k: t.user_attrs["fate"] for k, t in trials.items()} == {
        "full": "finished", "early": "stopped_early", "first-rung": "stopped_early", "diverged": "diverged",
        "crashed": "crashed"}
    assert study.best_trial.user_attrs["tune_trial_id"] == "full"
    assert study.metric_names == ["log_likelihood"]


def test_a_trial_that_crashes_after_an_iteration_records_it():
    """Tune hands a crashed trial's end no result (e.g. its worker was killed, --max-failures 0): the
    iterations it reported still count."""
    s = searcher()
    s.suggest("killed")
    s.on_trial_result("killed", result(-2.0, 1))
    s.on_trial_result("killed", result(-1.9, 2))
    s.on_trial_complete("killed", None, error=True)
    (trial,) = s._ot_study.trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["fate"] == "crashed"
    assert trial.user_attrs["iterations"] == 2 and trial.intermediate_values == {1: -2.0, 2: -1.9}


def test_config_carries_the_optuna_trial_number():
    s = searcher()
    numbers = [s.suggest(f"t{i}")[NUMBER_KEY] for i in range(3)]
    assert numbers == [0, 1, 2]


def test_fixed_fields_are_recorded_as_fixed_never_as_sampled():
    s = searcher(fixed={"adv_hidden": 8, "beta1": 0.9})
    configs = [s.suggest(f"t{i}") for i in range(6)]
    assert all(c["adv_hidden"] == 8 and c["beta1"] == 0.9 for c in configs)  # what the trial runs
    for t in s._ot_study.trials:
        assert "adv_hidden" not in t.params and "beta1" not in t.params  # never a sampled value
        assert "adv_hidden" not in t.distributions
        assert t.user_attrs["fixed"] == {"adv_hidden": 8, "beta1": 0.9}
    assert len({c["lr"] for c in configs}) > 1  # the rest is still searched


def test_replayed_trial_after_a_killed_driver_leaves_optuna_alone(tmp_path):
    """Tune may restore a searcher state older than the storage and replay a trial Optuna already closed."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    s = searcher(storage, full_iterations=2)
    s.suggest("a")
    s.on_trial_result("a", result(-2.0, 1))
    s.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot before the kill
    s.on_trial_complete("a", result(-1.5, 2))

    restored = searcher(storage, full_iterations=2)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("a", result(-1.6, 2))  # replayed: no error, nothing changed
    restored.on_trial_complete("a", result(-1.4, 2))
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert trial.state == TrialState.COMPLETE and trial.value == -1.5


def test_trial_asked_after_the_snapshot_is_handed_out_again(tmp_path):
    """An Optuna trial asked for after Tune's last snapshot is RUNNING and unknown to the restored searcher:
    it is reused for the next suggestion, so the study keeps one Optuna trial per Tune trial."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    s = searcher(storage, full_iterations=1, sampler=optuna.samplers.RandomSampler(seed=1))
    s.suggest("a")
    s.save(str(tmp_path / "searcher.pkl"))
    orphan = s.suggest("b")  # asked for, then the driver is killed

    restored = searcher(storage, full_iterations=1)
    restored.restore(str(tmp_path / "searcher.pkl"))
    again = restored.suggest("c")
    assert again == orphan and again[NUMBER_KEY] == 1
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2
    assert restored.suggest("d")[NUMBER_KEY] == 2  # then new trials as usual


def test_restored_searcher_talks_to_the_storage_it_is_given(tmp_path):
    """--resume from a copy of a study must write to the copy, not to the storage pickled with the searcher."""
    import shutil

    original = tmp_path / "original.db"
    s = searcher(optuna.storages.RDBStorage(f"sqlite:///{original}"), full_iterations=1)
    s.suggest("a")
    s.save(str(tmp_path / "searcher.pkl"))
    shutil.copy(original, tmp_path / "copy.db")
    before = original.read_bytes()

    restored = searcher(optuna.storages.RDBStorage(f"sqlite:///{original}"), full_iterations=1)
    restored.rebind(optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'copy.db'}"))
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("a", result(-1.5, 1))
    assert original.read_bytes() == before
    (trial,) = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'copy.db'}").trials
    assert trial.state == TrialState.COMPLETE


def toy_space(trial):
    trial.suggest_float("x", 0, 1)
    trial.suggest_float("y", 0, 1)


def proposals_in_diverging_region(sampler_class, seed: int, n: int = 60) -> int:
    """A toy study where x > 0.6 always diverges and the optimum is at (0.3, 0.5): how many of the
    sampler's model-based proposals (after 10 random ones) land where it diverges."""
    s = searcher(space=toy_space, full_iterations=1, sampler=sampler_class(seed=seed, n_startup_trials=10))
    bad = 0
    for i in range(n):
        config = s.suggest(f"t{i}")
        x, y = config["x"], config["y"]
        if x > 0.6:
            bad += i >= 10
            s.on_trial_complete(f"t{i}", result(-math.inf, 1, diverged=True))
        else:
            s.on_trial_complete(f"t{i}", result(-(x - 0.3) ** 2 - (y - 0.5) ** 2, 1))
    return bad


@pytest.mark.parametrize("seed", [0, 1])
def test_diverged_trials_steer_tpe_away_from_their_region(seed):
    """Optuna's TPE ignores FAIL trials; DivergenceAwareTPE counts diverged ones as bad observations."""
    plain = proposals_in_diverging_region(optuna.samplers.TPESampler, seed)
    aware = proposals_in_diverging_region(DivergenceAwareTPE, seed)
    assert aware * 3 < plain, (aware, plain)
    assert aware <= 10  # of 50 proposals; random search would put 20 there


def test_saved_state_holds_no_storage_url_and_resumes_on_the_storage_given(tmp_path):
    """Tune pickles the searcher (tuner.pkl, searcher-state-*.pkl); a database URL there would leak its password."""
    url = f"sqlite:///{tmp_path}/secret-name-optuna.db"
    s = searcher(storage=optuna.storages.RDBStorage(url))
    s.suggest("a")
    s.suggest("b")
    s.on_trial_complete("a", result(-1.5, 4))
    s.save(str(tmp_path / "state.pkl"))
    assert b"secret-name" not in (tmp_path / "state.pkl").read_bytes()

    restored = searcher(storage=optuna.storages.InMemoryStorage())
    restored._storage = optuna.storages.RDBStorage(url)  # what the driver sets on --resume
    restored.restore(str(tmp_path / "state.pkl"))
    restored.on_trial_complete("b", result(-1.4, 4))  # a trial asked for before the save finishes after it
    states = {t.user_attrs["tune_trial_id"]: t.state for t in optuna.load_study(study_name="s", storage=url).trials}
    assert states == {"a": TrialState.COMPLETE, "b": TrialState.COMPLETE}


def test_a_vae_study_of_the_mnist_mlp_preset_searches_no_adversary():
    fixed = {"objective": "vae", "encoder": "gaussian", "adaptive_contrast": False}
    vae = searcher(space=preset_space("mnist_mlp", **fixed), fixed=fixed, name="vae")
    avb = searcher(space=preset_space("mnist_mlp"), name="avb")
    assert set(vae.suggest("t0")) == {"lr", "beta1", NUMBER_KEY}
    assert {"adv_hidden", "adv_depth", "adv_inner", "adv_lr", "adv_steps", "lr", "beta1"} <= set(avb.suggest("t0"))


def test_baselines_are_labelled_and_the_study_points_to_its_mlflow_records():
    baseline = {"objective": "vae", "encoder": "gaussian", "lr": 5e-4}
    s = StudySearch(preset_space(), metric="log_likelihood", mode="max", points_to_evaluate=[baseline],
                    sampler=optuna.samplers.RandomSampler(seed=0), study_name="linked",
                    storage=optuna.storages.InMemoryStorage(), full_iterations=2,
                    links={"mlflow_experiment_id": "7", "mlflow_parent_run_id": "abc"})
    assert s.suggest("first")["lr"] == 5e-4 and s.suggest("second") is not None
    study = s._ot_study
    assert study.user_attrs == {"mlflow_experiment_id": "7", "mlflow_parent_run_id": "abc"}
    labels = {t.user_attrs["tune_trial_id"]: t.user_attrs.get("baseline", False) for t in study.trials}
    assert labels == {"first": True, "second": False}


ADVERSARY = {"adv_hidden", "adv_depth", "adv_inner", "adv_lr", "adv_steps"}


def test_the_synthetic_space_searches_one_method_and_its_vae_baseline_stays_a_vae():
    """The method is not searched (docs/search.md): drawn trials are AVB's; the preset's VAE baseline is a VAE
    with no adversary, and a retry of it is a VAE again."""
    from study.tuner import study_baselines

    baselines = load_preset("synthetic").BASELINES
    s = StudySearch(preset_space(), metric="log_likelihood", mode="max", points_to_evaluate=baselines,
                    sampler=optuna.samplers.RandomSampler(seed=0), study_name="methods",
                    storage=optuna.storages.InMemoryStorage(), full_iterations=2)
    configs = [s.suggest(f"t{i}") for i in range(8)]
    vae = configs[1]
    assert vae["objective"] == "vae" and vae["encoder"] == "gaussian" and not ADVERSARY & set(vae)
    assert vae["lr"] == 5e-4
    recorded = {t.user_attrs["tune_trial_id"]: t.user_attrs.get("method") for t in s._ot_study.trials}
    assert recorded["t1"] == {"objective": "vae", "encoder": "gaussian"} and recorded["t5"] is None
    assert all(c.get("objective", "avb") == "avb" and ADVERSARY <= set(c) for i, c in enumerate(configs) if i != 1)
    assert all(1e-4 <= c["lr"] <= 3e-3 for c in configs[3:])  # drawn from the prior, not a baseline
    s.on_trial_complete("t1", None, error=True)
    s.enqueue_retries()
    assert s.suggest("retry")["objective"] == "vae"
    # an AVB+AC study (--set encoder=basis) cannot run the VAE baseline: it is left out, the others stay
    kept = study_baselines(baselines, {"encoder": "basis", "adaptive_contrast": True})
    assert kept == [baselines[0], baselines[2]]
    assert study_baselines(baselines, {"objective": "vae", "encoder": "gaussian"}) == [baselines[1]]


def test_a_resume_in_a_copied_folder_says_whose_stores_it_writes(tmp_path):
    """A copy of a results folder resumed without store flags writes to the original's SQLite files (the saved
    settings name them): one note says so before anything is written, and how to use the copy's own files."""
    import dataclasses

    from study.settings import StudySettings

    original, copy = tmp_path / "original", tmp_path / "copy"
    first = StudySettings(study_name="s", results_dir=str(original))
    first.resolve_paths()
    first.resolve()
    saved = {k: v for k, v in dataclasses.asdict(first).items()}
    copy.mkdir()
    for name in ("mlflow.db", "optuna.db"):
        (copy / name).write_bytes(b"")
    resumed = StudySettings(study_name="s", results_dir=str(copy), resume=True)
    resumed.resolve_paths()
    notes = resumed.merge_saved(saved, {"study_name", "results_dir", "resume"})
    assert resumed.tracking_uri == f"sqlite:///{original / 'mlflow.db'}"  # still the study's, as documented
    assert notes == [f"this study's {what} is sqlite:///{original / name} (its saved settings), not {copy / name}; "
                     f"to resume a copy on its own stores pass --{flag} sqlite:///{copy / name}"
                     for what, name, flag in (("tracking uri", "mlflow.db", "tracking-uri"),
                                              ("optuna storage", "optuna.db", "optuna-storage"))]
    in_place = StudySettings(study_name="s", results_dir=str(original), resume=True)
    in_place.resolve_paths()
    assert in_place.merge_saved(saved, {"study_name", "results_dir", "resume"}) == []
