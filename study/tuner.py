"""Ray for the study: start or attach, check that trials can ever be placed, build or restore the Tuner."""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import optuna
import yaml

from search_spaces import asha_settings, load_preset
from study.credentials import check_ray_login
from study.recorder import Recorder
from study.searcher import METHOD_FIELDS, SAMPLERS, StudySearch
from study.settings import StudyError, StudySettings, masked

METRIC, MODE = "log_likelihood", "max"  # validation log p(x): what ASHA, Optuna and the checkpoints rank by


# ----------------------------------------------------------------------------- Ray
NOISE = ("Resume experiment with: Tuner.restore",  # Ray's resume hint: the study prints the right command
         "snapshotting has been triggered",  # short iterations checkpoint often: nothing for a user to change
         "Token authentication is enabled for this Ray cluster")  # Ray 2.60's default for a new local Ray


class _DropKnownNoise(logging.Filter):
    """Ray messages that mislead or say nothing to act on (NOISE), and the benign failure to delete a checkpoint
    twice when a resumed trial replays an iteration."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if any(noise in text for noise in NOISE):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not ("Error handling checkpoint" in text and isinstance(exc, FileNotFoundError))


def quiet_ray_logs(verbose: bool) -> None:
    for name in ("ray.tune.tune", "ray.tune.execution.tune_controller", "ray.tune.execution.experiment_state",
                 "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).addFilter(_DropKnownNoise())
    if not verbose:  # Tune's new console prints its configuration box, a results folder and a TensorBoard hint at
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # any verbosity; its classic one at verbose=0 prints nothing


def on_existing_cluster(address: str) -> bool:
    """True when Ray would attach to a running cluster (ray start / ray up), not start a private one."""
    from ray._private.services import canonicalize_bootstrap_address

    if address.startswith("ray://"):  # Ray Client: always a running cluster
        return True
    return address != "local" and canonicalize_bootstrap_address(address or None) is not None


def connect(settings: StudySettings) -> bool:
    """Start a local Ray or attach to the cluster (its token checked first); True when attached to a cluster."""
    import ray
    from ray._private.services import canonicalize_bootstrap_address

    quiet_ray_logs(settings.verbose)
    try:
        existing = on_existing_cluster(settings.address)
        if existing and not settings.address.startswith("ray://"):  # Ray Client checks its own login
            check_ray_login(canonicalize_bootstrap_address(settings.address or None), settings.address)
        joining = (f"joining the cluster at {settings.address}" if settings.address else
                   "joining the Ray already running on this machine (--address local starts a new one)")
        print(f"Ray: {joining}" if existing else "Ray: starting a local Ray on this machine (--address joins a "
              "cluster)", flush=True)
        ray.init(address=settings.address or None, log_to_driver=True, logging_level="WARNING")
    except StudyError:
        raise
    except (ConnectionError, RuntimeError, ValueError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise StudyError(f"cannot connect to Ray at {settings.address or 'the local machine'} "
                         f"({lines[0] if lines else type(err).__name__}); check --address") from None
    if existing:
        warn_about_node_local_stores(settings)
    return existing


def warn_about_node_local_stores(settings: StudySettings) -> None:
    """On a cluster, a SQLite MLflow store or a local storage path is one per node: say so in one line."""
    import ray

    if len([n for n in ray.nodes() if n.get("Alive")]) < 2:
        return
    local = [what for what, bad in (("--tracking-uri is a SQLite file", settings.tracking_uri.startswith("sqlite")),
                                    ("--storage-path is a local folder", "://" not in settings.storage_path))
             if bad]
    if local:
        print(f"note: {' and '.join(local)} on a cluster of several nodes: each node sees its own copy unless the "
              "folder is shared storage (docs/cluster.md: an MLflow server, a database, s3:// or NFS)", flush=True)


def trial_tracking_uri(uri: str, on_cluster: bool) -> str:
    """Trials on other nodes reach a tracking server on this node by its address, not by loopback."""
    if not on_cluster:
        return uri
    import ray

    ip = ray.util.get_node_ip_address()
    for loopback in ("//127.0.0.1:", "//localhost:"):
        uri = uri.replace(loopback, f"//{ip}:")
    return uri


def check_trial_reach(uri: str) -> None:
    """On a cluster, before any trial: from every node, the tracking server answers the trials' URI and passes
    its host check (MLflow 3 answers 403 "Invalid Host header" to Host headers outside localhost and the private
    ranges, e.g. CGNAT or public node addresses, unless started with --allowed-hosts)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not uri.startswith("http"):
        return
    probe = ray.remote(num_cpus=0)(probe_tracking)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    problems = [p for p in ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False))
                                    .remote(uri) for n in nodes], timeout=180) if p]
    if problems:
        raise StudyError(problems[0])


def probe_tracking(uri: str) -> str:
    """What keeps this node's trials from the tracking server at `uri` ('' when nothing: a 401 is a login
    question, which each trial checks itself)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    from ray.util import get_node_ip_address

    host, node = urllib.parse.urlsplit(uri).netloc.rsplit("@", 1)[-1], get_node_ip_address()
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=30):
            return ""
    except urllib.error.HTTPError as err:
        if err.code == 403 and "Invalid Host header" in err.read(500).decode(errors="replace"):
            return (f"the MLflow server refuses the trials' address {host} (403 Invalid Host header, from node "
                    f"{node}): start it with --allowed-hosts {host} (MLflow 3 accepts only localhost and private "
                    "addresses by default), or give --tracking-uri an address it accepts")
        return ""
    except OSError as err:
        return (f"trials on node {node} cannot reach the MLflow server at {masked(uri)} ({err}); open the port "
                "to the cluster's nodes, or give --tracking-uri an address they can reach")


BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # what `ray up` leaves on the head: the cluster's node types


def autoscaling_groups() -> list[dict] | None:
    """The node types an autoscaler may add, as resource dicts ({} when the launcher leaves them to the cloud);
    None on a fixed cluster."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        if config is not None and config.node_group_configs:
            return [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]
    except Exception:  # noqa: BLE001  (no autoscaler state in this Ray)
        pass
    path = Path(BOOTSTRAP_CONFIG).expanduser()
    if not path.is_file():
        return None
    try:
        types = (yaml.safe_load(path.read_text()) or {}).get("available_node_types") or {}
    except (OSError, yaml.YAMLError):
        return None
    return [dict(t.get("resources") or {}) for t in types.values() if t.get("max_workers", 1) != 0] or None


def check_resources(settings: StudySettings, on_cluster: bool) -> None:
    """A trial that no node can ever hold is an error now, not a study that waits forever."""
    import ray

    need = {"CPU": settings.cpus_per_trial, "GPU": settings.gpus_per_trial}

    def fits(resources: dict) -> bool:
        return all(resources.get(k, 0) >= v for k, v in need.items() if v > 0)

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(fits(r) for r in nodes):
        return
    wanted = f"{settings.cpus_per_trial:g} CPU(s) and {settings.gpus_per_trial:g} GPU(s) per trial"
    groups = autoscaling_groups() if on_cluster else None
    if groups is not None and any(fits(g) or not g for g in groups):  # {}: resources known only at launch
        print(f"note: no node has {wanted} yet; the study waits until the autoscaler adds one", flush=True)
        return
    largest = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    where = "this machine" if not on_cluster else "any node of the cluster" + (
        "" if groups is None else " or any node type the autoscaler may add")
    hint = "use --gpus-per-trial 0" if settings.gpus_per_trial and not largest.get("GPU") else \
        "lower --cpus-per-trial / --gpus-per-trial"
    raise StudyError(f"{wanted} is more than {where} has (the largest node: {largest.get('CPU', 0):g} CPUs, "
                     f"{largest.get('GPU', 0):g} GPUs); {hint}")


# ----------------------------------------------------------------------------- Tune
def make_searcher(settings: StudySettings, links: dict | None = None, *, sampler=None, storage=None) -> StudySearch:
    """The study's searcher; `sampler` and `storage` replace --sampler's and --optuna-storage's (the search
    replay benchmark: a sampler variant, in memory)."""
    preset = load_preset(settings.preset)
    baselines = study_baselines(preset.BASELINES, settings.overrides)[: settings.num_trials] if settings.baselines \
        else None  # none left queued
    return StudySearch(
        functools.partial(preset.space, base=settings.base_config()), metric=METRIC, mode=MODE,
        points_to_evaluate=baselines or None,
        sampler=sampler or SAMPLERS[settings.sampler](seed=settings.seed), study_name=settings.study_name,
        storage=storage or optuna.storages.RDBStorage(settings.optuna_storage), full_iterations=settings.iterations,
        fixed=settings.overrides, links=links)


def study_baselines(baselines: list[dict], fixed: dict) -> list[dict]:
    """The preset's baselines this study can run: not one of another method than --set fixes (a preset's VAE
    baseline in an AVB+AC study, `--set encoder=basis`)."""
    return [b for b in baselines if all(b[k] == fixed[k] for k in METHOD_FIELDS if k in b and k in fixed)]


def make_scheduler(settings: StudySettings):
    from ray.tune.schedulers import ASHAScheduler

    if settings.scheduler == "none":
        return None
    return ASHAScheduler(time_attr="training_iteration", metric=METRIC, mode=MODE, max_t=settings.iterations,
                         **asha_settings(settings.preset, settings.iterations))


def run_config(settings: StudySettings, recorder: Recorder):
    from ray import tune

    return tune.RunConfig(
        name=settings.study_name, storage_path=settings.storage_path, callbacks=[recorder],
        verbose=1 if settings.verbose else 0,
        stop={"training_iteration": settings.iterations},
        # the trainable asks for a checkpoint after every finite iteration (`should_checkpoint`);
        # Ray keeps the best N by validation log-likelihood and always the latest
        # (checkpoint_at_end off: for class trainables Tune would otherwise save a diverged trial's weights)
        checkpoint_config=tune.CheckpointConfig(num_to_keep=settings.keep_checkpoints, checkpoint_at_end=False,
                                                checkpoint_score_attribute=METRIC, checkpoint_score_order=MODE),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures))


def build_tuner(settings: StudySettings, trainable, recorder: Recorder):
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    s = recorder.settings
    links = {"mlflow_tracking_uri": masked(s.tracking_uri), "mlflow_experiment_id": s.experiment_id,
             "mlflow_parent_run_id": s.parent_run_id}  # the trials' runs: tag trial_number
    searcher = ConcurrencyLimiter(make_searcher(settings, links), max_concurrent=settings.concurrency)
    return tune.Tuner(trainable, run_config=run_config(settings, recorder),
                      tune_config=tune.TuneConfig(search_alg=searcher, scheduler=make_scheduler(settings),
                                                  num_samples=settings.num_trials, reuse_actors=True))


def experiment_path(settings: StudySettings) -> str:
    return f"{settings.storage_path.rstrip('/')}/{settings.study_name}"


def check_restorable(settings: StudySettings) -> None:
    from ray import tune

    if not tune.Tuner.can_restore(experiment_path(settings)):
        raise StudyError(f"no Ray experiment state at {experiment_path(settings)}; the study never started, "
                         "or --storage-path differs")


def restore_tuner(settings: StudySettings, trainable, recorder: Recorder):
    """Tune's own restore, then pointed at this run's stores: the searcher and the callbacks were pickled
    with the first driver's stores, which a resume from a copy or on a new head must not touch."""
    from ray import tune

    from study.tune_state import keep_crashed_trials_crashed

    kept = keep_crashed_trials_crashed(settings, experiment_path(settings))
    if kept:
        print(f"Ray Tune had saved crashed trial(s) {', '.join(map(str, kept))} as unfinished (Ray 2.60 can lose a "
              "crash; study/tune_state.py): kept crashed, as the study recorded them", flush=True)
    tuner = tune.Tuner.restore(experiment_path(settings), trainable=trainable, resume_unfinished=True,
                               resume_errored=False)
    from study.resumed_search import ResumedSearch

    internal = tuner._local_tuner  # private, pinned Ray 2.60: Tuner.restore takes no new searcher or callbacks
    limiter = internal._tune_config.search_alg
    limiter.searcher.rebind(optuna.storages.RDBStorage(settings.optuna_storage))
    retried = limiter.searcher.enqueue_retries() if settings.retry_crashed else []
    if settings.retry_crashed:
        print(f"retrying {len(retried)} crashed trial(s) from the start as new trials"
              + (f": {', '.join(map(str, retried))}" if retried else ""), flush=True)
    recorder.num_trials += len(retried)
    internal._tune_config.search_alg = ResumedSearch(limiter, settings.storage_path, settings.study_name,
                                                     len(retried), crashed=frozenset(kept.values()))
    internal._run_config.callbacks = [recorder]
    internal._run_config.verbose = 1 if settings.verbose else 0
    return tuner
