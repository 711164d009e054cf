"""A hyperparameter study of AVB: Ray Tune runs the trials, Optuna proposes them, MLflow records them.

    python study/run.py                                   # small synthetic study on this machine
    python study/run.py --preset synthetic --num-trials 64 --concurrency 8 --gpus-per-trial 0.25
    ray submit cluster.yaml study/run.py -- --num-trials 64 --gpus-per-trial 0.5 \\
        --storage-path s3://BUCKET/avb/ray-results --tracking-uri http://HEAD_IP:5000
    python study/run.py --resume --study-name NAME        # continue an interrupted study

Local defaults keep everything under ./results (absolute paths): the MLflow
SQLite store, the Optuna storage and Ray's experiment folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from search_spaces import PRESETS, load_preset

SCHEDULERS = ("asha", "none")
RESUMED_SETTINGS = ("preset", "iterations", "steps_per_iteration", "scheduler", "seed", "tracking_uri", "final_ais",
                    "ais_temps", "ais_points", "optuna_storage", "overrides", "num_trials", "concurrency",
                    "keep_checkpoints", "cpus_per_trial", "gpus_per_trial")  # --resume takes these from the study
METRIC, MODE = "log_likelihood", "max"


class StudyError(RuntimeError):
    """Bad input or environment; the message says what to fix."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="study/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="synthetic",
                   help=f"experiment preset: {', '.join(PRESETS)} (default: synthetic)")
    p.add_argument("--num-trials", type=int, default=8, help="trials in the study (default: 8)")
    p.add_argument("--concurrency", type=int, default=2, help="trials running at once (default: 2)")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs reserved per trial (default: 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0,
                   help="GPUs per trial, fractions allowed, e.g. 0.5 (default: 0)")
    p.add_argument("--iterations", type=int, help="Tune iterations per trial (default: the preset's)")
    p.add_argument("--steps-per-iteration", type=int, help="training steps per iteration (default: the preset's)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="asha", help="early stopping (default: asha)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler and of every trial (default: 0)")
    p.add_argument("--results-dir", default="results", help="local folder for the embedded stores (default: results)")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///RESULTS/mlflow.db)")
    p.add_argument("--optuna-storage", help="Optuna storage URL (default: sqlite:///RESULTS/optuna.db)")
    p.add_argument("--storage-path", help="Ray storage path, local or s3://... (default: RESULTS/ray)")
    p.add_argument("--study-name", help="unique study name (default: PRESET-DATE-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the study --study-name from its last state")
    p.add_argument("--address", help="Ray cluster address (default: the running cluster, else a local Ray)")
    p.add_argument("--final-ais", type=int, default=3,
                   help="image presets: AIS log-likelihood for this many best trials at the end; 0 = off (default: 3)")
    p.add_argument("--ais-temps", type=int, help="AIS temperatures for --final-ais (default: the preset's)")
    p.add_argument("--ais-points", type=int, help="test images for --final-ais (default: the preset's)")
    p.add_argument("--keep-checkpoints", type=int, default=0,
                   help="Tune checkpoints kept per trial; 0 = all (default: 0). A cap saves disk, but a driver killed "
                        "right after Ray deleted an old checkpoint can leave a trial that cannot resume")
    p.add_argument("--max-failures", type=int, default=1,
                   help="retries of a crashed trial, e.g. lost node (default: 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="fix a Config field for every trial, also a searched one, e.g. --set hidden=64 (repeatable)")
    return p


# ----------------------------------------------------------------------------- checks
def parse_overrides(items: list[str], preset: str) -> dict:
    from avb.config import ConfigError, parse_value

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise StudyError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set hidden=64")
        values[key] = parse_value(raw)
    try:
        load_preset(preset).BASE.replace(**values)
    except ConfigError as err:
        raise StudyError(f"--set: {err}") from err
    return values


def check_args(args: argparse.Namespace) -> None:
    try:
        load_preset(args.preset)
    except ValueError as err:
        raise StudyError(str(err)) from err
    for name in ("num_trials", "concurrency", "iterations", "steps_per_iteration", "ais_temps", "ais_points"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise StudyError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if args.cpus_per_trial <= 0:
        raise StudyError(f"--cpus-per-trial must be > 0 (trials always reserve CPUs), got {args.cpus_per_trial}")
    if args.keep_checkpoints < 0:
        raise StudyError(f"--keep-checkpoints must be >= 0 (0 keeps all), got {args.keep_checkpoints}")
    if args.gpus_per_trial < 0:
        raise StudyError(f"--gpus-per-trial must be >= 0, got {args.gpus_per_trial}")
    if args.resume and not args.study_name:
        raise StudyError("--resume needs --study-name NAME (the name printed when the study started)")


def check_tracking_uri(uri: str) -> None:
    """Fail before any trial starts when MLflow cannot be reached."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
                response.read()
        except OSError as err:
            raise StudyError(f"MLflow tracking server {uri} is unreachable ({err}); start it "
                             f"(mlflow server --host 127.0.0.1 --port 5000) or fix --tracking-uri") from err
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif "://" not in uri:
        raise StudyError(f"--tracking-uri {uri!r} is not a URI; use sqlite:////abs/path.db or http://host:port")


def code_version() -> str:
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


# ----------------------------------------------------------------------------- setup
def resolve_paths(args: argparse.Namespace) -> None:
    """Absolute defaults under --results-dir (Tune runs trials in their own folders)."""
    results = Path(args.results_dir).expanduser().resolve()
    results.mkdir(parents=True, exist_ok=True)
    args.results_dir = str(results)
    args.tracking_uri = (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                         or f"sqlite:///{results / 'mlflow.db'}")
    args.optuna_storage = args.optuna_storage or f"sqlite:///{results / 'optuna.db'}"
    if not args.storage_path:
        args.storage_path = str(results / "ray")
    elif "://" not in args.storage_path:
        args.storage_path = str(Path(args.storage_path).expanduser().resolve())


def study_file(args: argparse.Namespace) -> tuple:
    """(pyarrow filesystem, path) of the study's settings, beside Tune's state (local or s3://)."""
    from pyarrow import fs

    filesystem, root = fs.FileSystem.from_uri(args.storage_path)
    return filesystem, f"{root.rstrip('/')}/{args.study_name}/avb-study.json"


def refuse_existing(args: argparse.Namespace) -> None:
    from pyarrow import fs

    filesystem, path = study_file(args)
    if filesystem.get_file_info(path).type != fs.FileType.NotFound:
        raise StudyError(f"a study named {args.study_name!r} exists already under {args.storage_path}; "
                         "pick another --study-name or continue it with --resume")


def save_or_load_study(args: argparse.Namespace) -> None:
    """A new study writes its settings; --resume reads them back, so every trial sees the same ones."""
    from pyarrow import fs

    filesystem, path = study_file(args)
    exists = filesystem.get_file_info(path).type == fs.FileType.File
    if args.resume:
        if not exists:
            raise StudyError(f"no study named {args.study_name!r} under {args.storage_path}; "
                             f"check --study-name and --storage-path (or --results-dir)")
        with filesystem.open_input_stream(path) as f:
            saved = json.loads(f.read())
        for key in RESUMED_SETTINGS:
            setattr(args, key, saved[key])
        return
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(json.dumps(vars(args), indent=2).encode())


def on_existing_cluster(address: str | None) -> bool:
    """True when Ray would attach to a running cluster (ray start / ray up), not start a local one."""
    from ray._private.services import canonicalize_bootstrap_address

    return canonicalize_bootstrap_address(address) is not None


def check_data(args: argparse.Namespace) -> None:
    """On one machine, load the data once before any trial: a missing data set is a one-line error, and a
    download (MNIST) happens once instead of in every trial. On a cluster the trials' nodes hold the data."""
    from avb.data import DataError, load_dataset

    try:
        load_dataset(load_preset(args.preset).BASE.replace(**args.overrides), "cpu")
    except DataError as err:
        raise StudyError(str(err)) from err


def start_ray(args: argparse.Namespace) -> None:
    import ray

    existing = on_existing_cluster(args.address)
    ray.init(address=args.address, log_to_driver=True, logging_level="WARNING")
    args.trial_tracking_uri = args.tracking_uri
    if existing:  # trials on other nodes reach a server on this node by its address, not by loopback
        ip = ray.util.get_node_ip_address()
        for loopback in ("//127.0.0.1:", "//localhost:"):
            args.trial_tracking_uri = args.trial_tracking_uri.replace(loopback, f"//{ip}:")
    gpus = ray.cluster_resources().get("GPU", 0)
    if args.gpus_per_trial > 0 and gpus == 0:
        if not existing:
            ray.shutdown()
            raise StudyError(f"--gpus-per-trial {args.gpus_per_trial} but this machine has no GPU; "
                             "use --gpus-per-trial 0 or run on a cluster with GPU nodes")
        print("note: the cluster has no GPU node yet; trials wait until the autoscaler adds one", flush=True)


def mlflow_parent_run(args: argparse.Namespace) -> tuple[str, str]:
    """The study's experiment and parent run (found again on resume)."""
    import mlflow

    client = mlflow.MlflowClient(args.tracking_uri)
    exp = client.get_experiment_by_name(args.study_name)
    if exp is None:
        location = None
        if args.tracking_uri.startswith("sqlite:"):
            location = (Path(args.results_dir) / "mlartifacts" / args.study_name).as_uri()
        exp_id = client.create_experiment(args.study_name, artifact_location=location,
                                          tags={"study": args.study_name, "preset": args.preset})
    else:
        exp_id = exp.experiment_id
    found = client.search_runs([exp_id], "tags.kind = 'study'")
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return exp_id, found[0].info.run_id
    run = client.create_run(exp_id, run_name=args.study_name,
                            tags={"kind": "study", "study": args.study_name, "preset": args.preset,
                                  "code_version": code_version()})
    for key in ("preset", "num_trials", "concurrency", "cpus_per_trial", "gpus_per_trial", "iterations",
                "steps_per_iteration", "scheduler", "seed", "storage_path"):
        client.log_param(run.info.run_id, key, getattr(args, key))
    return exp_id, run.info.run_id


# ----------------------------------------------------------------------------- Tune
def make_trainable(args: argparse.Namespace, exp_id: str, parent_run_id: str):
    from ray import tune

    from trainables import AVBTrainable, TrialSettings

    settings = TrialSettings(preset=args.preset, iterations=args.iterations,
                             steps_per_iteration=args.steps_per_iteration, tracking_uri=args.trial_tracking_uri,
                             experiment_id=exp_id, parent_run_id=parent_run_id, study_name=args.study_name,
                             code_version=code_version(), overrides=args.overrides)
    trainable = tune.with_parameters(AVBTrainable, settings=settings)
    return tune.with_resources(trainable, {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial})


def make_tuner(args: argparse.Namespace, trainable):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from study.progress import Progress
    from study.searcher import FidelityAwareOptunaSearch

    preset = load_preset(args.preset)
    searcher = FidelityAwareOptunaSearch(
        preset.space, metric=METRIC, mode=MODE, points_to_evaluate=preset.BASELINES,
        sampler=optuna.samplers.TPESampler(seed=args.seed), study_name=args.study_name,
        storage=optuna.storages.RDBStorage(args.optuna_storage), full_iterations=args.iterations)
    scheduler = None
    if args.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode=MODE, max_t=args.iterations,
                                  grace_period=max(1, args.iterations // 4), reduction_factor=2)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=args.concurrency),
                                    scheduler=scheduler, num_samples=args.num_trials),
        run_config=run_config(args, Progress(args.num_trials)),
    )


def run_config(args: argparse.Namespace, progress):
    from ray import tune

    return tune.RunConfig(
        name=args.study_name, storage_path=args.storage_path, callbacks=[progress], verbose=1,
        stop={"training_iteration": args.iterations},
        checkpoint_config=tune.CheckpointConfig(num_to_keep=args.keep_checkpoints or None, checkpoint_frequency=1,
                                                checkpoint_at_end=True),
        failure_config=tune.FailureConfig(max_failures=args.max_failures))


def restore_tuner(args: argparse.Namespace, trainable):
    from ray import tune

    path = args.storage_path.rstrip("/") + "/" + args.study_name
    if not tune.Tuner.can_restore(path):
        raise StudyError(f"no Ray experiment state at {path}; the study never started or --storage-path differs")
    return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False)


def fail_orphaned_optuna_trials(args: argparse.Namespace) -> None:
    """Once Tune is done no Optuna trial may stay RUNNING. One can: a trial asked for just before the
    driver was killed, after the searcher's last saved state, is unknown to the resumed searcher."""
    import optuna

    study = optuna.load_study(study_name=args.study_name, storage=args.optuna_storage)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_args(args)
        resolve_paths(args)
        args.overrides = parse_overrides(args.overrides, args.preset)
        args.study_name = args.study_name or f"{args.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if not args.resume:
            preset = load_preset(args.preset)
            args.iterations = args.iterations or preset.ITERATIONS
            args.steps_per_iteration = args.steps_per_iteration or preset.STEPS_PER_ITERATION
        if args.resume:
            save_or_load_study(args)
        else:
            refuse_existing(args)
        check_tracking_uri(args.tracking_uri)
        if not on_existing_cluster(args.address):
            check_data(args)
        start_ray(args)
        exp_id, parent_run_id = mlflow_parent_run(args)
        trainable = make_trainable(args, exp_id, parent_run_id)
        tuner = restore_tuner(args, trainable) if args.resume else make_tuner(args, trainable)
        if not args.resume:
            save_or_load_study(args)  # only once everything checked out
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from study.summary import summarize

    print(f"study {args.study_name}: {args.num_trials} trials of {args.preset}, {args.iterations} x "
          f"{args.steps_per_iteration} steps; Ray results in {args.storage_path}", flush=True)
    results = tuner.fit()
    fail_orphaned_optuna_trials(args)
    return summarize(args, results, exp_id, parent_run_id)

