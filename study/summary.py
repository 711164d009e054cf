"""The end of a study: fates, the best trial (chosen on validation) next to the paper, the test-set evaluation
of image presets, errors, and where to look at everything."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

from search_spaces import load_preset
from study.records import result_fate, resume_command
from study.settings import StudySettings, masked
from trainables import tracking
from trainables.tracking import Fate

SHOWN = ("log_likelihood", "log_likelihood_se", "reconstruction_error", "elbo", "adversary_elbo", "kl_qz_pz")


def ui_hint(settings: StudySettings, exp_id: str) -> str:
    link = tracking.ui_link(settings.tracking_uri, exp_id)
    if settings.tracking_uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {settings.tracking_uri} --port 5000   then open {link}"
    return f"open {masked(link)} (on a cluster, forward the port first: ray attach cluster.yaml -p 5000)"


def method(settings: StudySettings, config: dict) -> str:
    """The method of a trial: its searched values on top of the study's base Config (the preset with --set)."""
    searched = {k: v for k, v in config.items() if k != tracking.TRIAL_NUMBER}
    return tracking.method_of(settings.base_config().replace(**searched).to_dict())


def print_best(best, paper: dict, settings: StudySettings) -> None:
    params = ", ".join(f"{k}={tracking.format_value(v)}" for k, v in sorted(best.config.items())
                       if k != tracking.TRIAL_NUMBER)
    print(f"best trial {best.config.get(tracking.TRIAL_NUMBER)} "
          f"({method(settings, best.config)}, chosen on validation): {params}")
    print(f"{'metric (validation)':<24}{'best trial':>12}" + "".join(f"{name:>12}" for name in paper))
    for key in SHOWN:
        if key in best.metrics:
            row = "".join(f"{paper[n][key]:>12.3f}" if key in paper[n] else f"{'—':>12}" for n in paper)
            print(f"{key:<24}{best.metrics[key]:>12.4f}{row}")


def lead(finished: list) -> str:
    """Whether the best finished trial is distinguishable from the runner-up on validation ('' for one trial)."""
    if len(finished) < 2:
        return ""
    best, runner = sorted(finished, key=lambda r: r.metrics["log_likelihood"], reverse=True)[:2]
    gap = best.metrics["log_likelihood"] - runner.metrics["log_likelihood"]
    se = math.hypot(best.metrics.get("log_likelihood_se", math.nan), runner.metrics.get("log_likelihood_se", math.nan))
    verdict = ("" if not math.isfinite(se) else ": distinguishable (more than 2 SE)" if gap > 2 * se else
               ": not distinguishable (under 2 SE), treat them as tied")
    shown = f", standard error {se:.4f} (over validation images, unpaired)" \
        if math.isfinite(se) else ""
    return (f"lead over the runner-up, trial {runner.config.get(tracking.TRIAL_NUMBER)} "
            f"({runner.metrics['log_likelihood']:.4f}): {gap:.4f} nats{shown}{verdict}")


def print_final_evaluation(settings: StudySettings, finished: list, recorder) -> None:
    from study.final_eval import final_evaluation

    preset = load_preset(settings.preset).FINAL_AIS
    final = {"num_temps": settings.ais_temps or preset["num_temps"], "points": settings.ais_points or preset["points"],
             "num_chains": preset["num_chains"]}
    top = sorted(finished, key=lambda r: r.metrics["log_likelihood"], reverse=True)[: settings.final_ais]
    print(f"test set ({final['points']} images; IS bound and AIS with {final['num_temps']} temperatures, "
          f"{final['num_chains']} chains) for the best {len(top)} trial(s) by validation:", flush=True)
    runs = {int(r.data.tags[tracking.TRIAL_NUMBER]): r.info.run_id for r in tracking.trial_runs(
        recorder.client, recorder.settings.experiment_id, recorder.settings.parent_run_id)}
    scores = final_evaluation(top, final, {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial},
                              recorder.client, runs)
    for number, s in scores.items():
        m = s["metrics"]
        print(f"  trial {number}: test_log_likelihood {m['test_log_likelihood']:.3f} "
              f"± {m['test_log_likelihood_se']:.3f},  test_ais_log_likelihood {m['test_ais_log_likelihood']:.3f} "
              f"± {m['test_ais_log_likelihood_se']:.3f} (± over images; Monte Carlo ± "
              f"{m['test_ais_log_likelihood_mc_se']:.3f})")
    if scores:
        best_ais = max(s["metrics"]["test_ais_log_likelihood"] for s in scores.values())
        recorder.client.log_metric(recorder.settings.parent_run_id, "best_test_ais_log_likelihood", best_ais)


def summarize(settings: StudySettings, results, recorder) -> int:
    """Print the summary, record it on the parent run; exit code 1 when a trial crashed."""
    client, parent = recorder.client, recorder.settings.parent_run_id
    fates = {id(r): result_fate(r, settings.iterations) for r in results}
    counts = Counter(fates.values())
    print(f"\n=== study {settings.study_name}: " + ", ".join(f"{counts[f]} {f.value}" for f in Fate if counts[f])
          + " ===")
    finished = [r for r in results if fates[id(r)] is Fate.FINISHED]
    for fate in Fate:  # the parent run's row answers "how did the trials end" without expanding it
        client.log_metric(parent, f"trials_{fate.value}", counts[fate])
    if finished:
        best = max(finished, key=lambda r: r.metrics["log_likelihood"])
        print_best(best, load_preset(settings.preset).PAPER, settings)
        if lead(finished):
            print(lead(finished))
        client.log_metric(parent, "best_log_likelihood", best.metrics["log_likelihood"])
        number = best.config.get(tracking.TRIAL_NUMBER)
        client.set_tag(parent, "best_trial_number", str(number))
        run = tracking.find_trial_run(client, recorder.settings.experiment_id, parent, number)
        if run is not None:  # the collapsed parent row names the best trial's run
            client.set_tag(parent, "best_trial", run.info.run_name)
        if getattr(load_preset(settings.preset), "FINAL_AIS", None) and settings.final_ais > 0:
            print_final_evaluation(settings, finished, recorder)
    else:
        print("no trial ran the full budget: nothing to call best")
    unresolved = print_crashed([r for r in results if fates[id(r)] is Fate.CRASHED], settings, recorder)
    print(f"Ray results: {settings.storage_path}/{settings.study_name}")
    print(f"Optuna:      optuna-dashboard {masked(settings.optuna_storage)}   (study {settings.study_name})")
    print(f"MLflow:      {ui_hint(settings, recorder.settings.experiment_id)}")
    client.set_terminated(parent, status="FAILED" if unresolved else "FINISHED")
    return 1 if unresolved else 0


def retries(settings: StudySettings) -> dict[int, tuple[int, str]]:
    """A retried crashed trial's number -> (its retry's number, the retry's fate), from Optuna."""
    import optuna

    study = optuna.load_study(study_name=settings.study_name, storage=settings.optuna_storage)
    return {t.user_attrs["retry_of"]: (t.number, t.user_attrs.get("fate", "not run")) for t in
            study.get_trials(deepcopy=False) if "retry_of" in t.user_attrs}


def print_crashed(crashed: list, settings: StudySettings, recorder) -> int:
    """One line per crashed trial, with its retry if it had one; returns how many have no retry that ended
    without a crash (then the hint names --retry-crashed)."""
    if not crashed:
        return 0
    client, s = recorder.client, recorder.settings
    numbers = {r.data.tags.get(tracking.TRIAL_ID): r.data.tags[tracking.TRIAL_NUMBER]
               for r in tracking.trial_runs(client, s.experiment_id, s.parent_run_id)}  # a resumed driver's too
    retried, unresolved = retries(settings), 0
    for r in crashed:
        trial_id = Path(r.path).name.split("_")[1] if r.path else ""
        number = int((r.config or {}).get(tracking.TRIAL_NUMBER, numbers.get(trial_id, -1)))
        retry, fate = retried.get(number, (None, None))
        while fate == Fate.CRASHED.value and retry in retried:
            retry, fate = retried[retry]
        unresolved += fate in (None, Fate.CRASHED.value)
        shown = f" (retried as trial {retry}: {fate})" if retry is not None else ""
        print(f"CRASHED trial {number if number >= 0 else '?'}: {tracking.one_line(str(r.error), 300)}{shown}")
    if unresolved:
        print(f"fix the cause, then run the crashed trials again: {resume_command(settings)} --retry-crashed")
    return unresolved
