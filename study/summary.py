"""The end of a study: best full-fidelity trial next to the paper, errors, where everything is."""

from __future__ import annotations

import argparse
import math

import mlflow

from search_spaces import load_preset

SHOWN = ("log_likelihood", "log_likelihood_se", "reconstruction_error", "elbo", "kl_qz_pz")


def classify(results, iterations: int) -> tuple[list, list, list, list]:
    """(full-fidelity, stopped early, diverged, errored) results."""
    full, early, diverged, errored = [], [], [], []
    for r in results:
        m = r.metrics or {}
        if r.error:
            errored.append(r)
        elif m.get("diverged"):
            diverged.append(r)
        elif m.get("training_iteration", 0) >= iterations:
            full.append(r)
        else:
            early.append(r)
    return full, early, diverged, errored


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {tracking_uri} --port 5000   # then open http://127.0.0.1:5000"
    return f"open {tracking_uri} in a browser (port-forward it first on a cluster: ray attach cluster.yaml -p 5000)"


def print_final_ais(args: argparse.Namespace, full: list, final: dict, exp_id: str, parent_run_id: str) -> None:
    from study.final_eval import final_ais

    final = {**final, "num_temps": args.ais_temps or final["num_temps"], "points": args.ais_points or final["points"]}
    top = sorted(full, key=lambda r: r.metrics["log_likelihood"], reverse=True)[: args.final_ais]
    print(f"AIS ({final['num_temps']} temperatures, {final['num_chains']} chains, {final['points']} test images) "
          f"for the best {len(top)} trial(s):", flush=True)
    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    scores = final_ais(top, final, resources, args.tracking_uri, exp_id)
    for trial_id, (mean, se) in scores.items():
        print(f"  {trial_id}: ais_log_likelihood {mean:.3f} +- {se:.3f}")
    if scores:
        mlflow.MlflowClient(args.tracking_uri).log_metric(parent_run_id, "best_ais_log_likelihood",
                                                          max(m for m, _ in scores.values()))


def summarize(args: argparse.Namespace, results, exp_id: str, parent_run_id: str) -> int:
    """Print the summary, record it on the parent run; exit code 1 when a trial raised."""
    full, early, diverged, errored = classify(results, args.iterations)
    print(f"\n=== study {args.study_name}: {len(full)} full-fidelity, {len(early)} stopped early, "
          f"{len(diverged)} diverged, {len(errored)} errored ===")
    client = mlflow.MlflowClient(args.tracking_uri)
    if full:
        best = max(full, key=lambda r: r.metrics["log_likelihood"])
        paper = load_preset(args.preset).PAPER
        params = ", ".join(f"{k}={v}" for k, v in sorted(best.config.items()))
        print(f"best trial {best.metrics['trial_id']}: {params}")
        print(f"{'metric':<22}{'best trial':>12}" + "".join(f"{name:>12}" for name in paper))
        for key in SHOWN:
            row = "".join(f"{paper[n].get(key, math.nan):>12.3f}" for n in paper)
            print(f"{key:<22}{best.metrics[key]:>12.4f}{row}")
        client.log_metric(parent_run_id, "best_log_likelihood", best.metrics["log_likelihood"])
        client.set_tag(parent_run_id, "best_trial_id", best.metrics["trial_id"])
        final = getattr(load_preset(args.preset), "FINAL_AIS", None)
        if final and args.final_ais > 0:
            print_final_ais(args, full, final, exp_id, parent_run_id)
    else:
        print("no trial reached full fidelity: nothing to call best")
    for r in errored:
        print(f"ERROR in trial {r.metrics.get('trial_id', r.path)}: {str(r.error).strip().splitlines()[-1]}")
    print(f"Ray results: {args.storage_path}/{args.study_name}")
    print(f"Optuna:      optuna-dashboard {args.optuna_storage}   (study {args.study_name})")
    print(f"MLflow:      experiment {args.study_name};  {ui_command(args.tracking_uri)}")
    client.set_terminated(parent_run_id, status="FAILED" if errored else "FINISHED")
    return 1 if errored else 0
