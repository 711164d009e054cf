"""What a study leaves in MLflow, and the one classification of a trial's fate.

Every MLflow tag name, the run lookup and the run names live here, so that the
trainable (logging from inside a trial), the driver (closing runs), the
summary, the export and the report read and write the same records.

A trial ends in exactly one fate, recorded the same way everywhere:

| fate          | what happened                          | MLflow status | Optuna state          |
|---------------|----------------------------------------|---------------|-----------------------|
| finished      | ran the full budget                    | FINISHED      | COMPLETE (its value)  |
| stopped_early | ASHA stopped it (a low-fidelity value) | FINISHED      | PRUNED (last value)   |
| diverged      | its loss: NaN, inf or > 100 nats/dim   | FAILED        | FAIL                  |
| crashed       | raised, after all of Tune's retries    | FAILED        | FAIL                  |
| lost          | left RUNNING by a vanished process     | FAILED        | FAIL                  |
| interrupted   | the driver was stopped (Ctrl-C, TERM)  | KILLED        | RUNNING (resumable)   |

The fate, and for failures the reason and error text, are tags of the trial's
run (`fate`, `error`), so the MLflow UI can filter on `tags.fate = 'diverged'`.
"""

from __future__ import annotations

import getpass
import math
import os
import subprocess
from enum import Enum
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Param, Run

from avb.config import Config, parse_value

# ----------------------------------------------------------------------------- tag names
KIND = "kind"  # "study" on the parent run
STUDY = "study"
PRESET = "preset"
TRIAL_NUMBER = "trial_number"  # the Optuna trial number: how a resumed or retried trial finds its run again
TRIAL_ID = "trial_id"  # Tune's id of the trial (a new one when a killed driver's trial is asked for again)
METHOD = "method"  # VAE, AVB or AVB+AC
FATE = "fate"
ERROR = "error"  # reason and error text of a failed trial (one line)
SEARCHED = "searched"  # comma-separated names of the parameters the search chose for this trial
FIXED = "fixed"  # comma-separated names of the fields fixed with --set
BEST_STEP = "best_step"  # training step of the best (validation) checkpoint
CODE_VERSION = "code_version"
PARENT = "mlflow.parentRunId"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"  # the description shown on experiment and run pages
SOURCE_NAME, SOURCE_TYPE, USER, GIT_COMMIT = ("mlflow.source.name", "mlflow.source.type", "mlflow.user",
                                              "mlflow.source.git.commit")
CHECKPOINT_PATH = "checkpoint"  # artifact folder of the trial's best checkpoint (trainer.pt)
MAX_TAG = 4000  # MLflow tag values are capped (5000 characters in its SQL schema)


class Fate(str, Enum):
    FINISHED = "finished"
    STOPPED_EARLY = "stopped_early"
    DIVERGED = "diverged"
    CRASHED = "crashed"
    LOST = "lost"
    INTERRUPTED = "interrupted"

    @property
    def mlflow_status(self) -> str:
        if self in (Fate.FINISHED, Fate.STOPPED_EARLY):
            return "FINISHED"
        return "KILLED" if self is Fate.INTERRUPTED else "FAILED"

    @property
    def failed(self) -> bool:
        return self.mlflow_status == "FAILED"


def fate_of(status: str, last_result: dict | None, full_iterations: int) -> Fate:
    """The fate of a Tune trial from its status (TERMINATED, ERROR, RUNNING, ...) and last result."""
    result = last_result or {}
    if status == "ERROR":
        return Fate.CRASHED
    if status != "TERMINATED":
        return Fate.INTERRUPTED
    if result.get("diverged"):
        return Fate.DIVERGED
    if result.get("training_iteration", 0) >= full_iterations:
        return Fate.FINISHED
    return Fate.STOPPED_EARLY


def method_of(params: dict) -> str:
    """The paper's method names: VAE (objective vae), AVB+AC (Adaptive Contrast), else AVB."""
    if params.get("objective") == "vae":
        return "VAE"
    return "AVB+AC" if params.get("adaptive_contrast") in (True, "True", "true") else "AVB"


def applicable_params(cfg: Config) -> dict:
    """The Config fields that matter for this run's method: a VAE has no adversary, only a basis
    encoder has noise networks, warm-up and adversary options only exist with an adversary."""
    values = cfg.to_dict()
    skip = set()
    if cfg.objective == "vae":
        skip |= {k for k in values if k.startswith("adv_") or k.startswith("adversary_")}
        skip |= {"adaptive_contrast", "noise_dim"}
    if cfg.encoder != "basis":
        skip |= {k for k in values if k.startswith("basis_")}
    return {k: v for k, v in values.items() if k not in skip}


def one_line(text: str, limit: int = MAX_TAG) -> str:
    """An error's last meaningful line (a traceback's last line says what went wrong), cut to fit a tag."""
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "")[:limit]


def refused_login(err: Exception, tracking_uri: str) -> str:
    """The one line for a tracking server that refused a trial's login (401 / 403); '' for any other error.
    Trials log in with their node's environment, not the driver's."""
    status = err.get_http_status_code() if hasattr(err, "get_http_status_code") else None
    if status not in (401, 403):
        return ""
    return (f"the MLflow server {tracking_uri} refused this trial's login ({status}): every node needs "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD in the environment of its `ray start` "
            "(cluster.yaml: ~/.avb-env.sh; docs/security.md)")


# ----------------------------------------------------------------------------- who ran what
def code_version() -> str:
    """The git commit of the checkout the driver runs from ("+dirty" with uncommitted changes);
    $AVB_CODE_VERSION, or "unknown" where there is no checkout (a plain pip install)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    if sha:
        return sha + ("+dirty" if dirty else "")
    return os.environ.get("AVB_CODE_VERSION", "unknown")


def source_tags(version: str) -> dict[str, str]:
    """MLflow's own Source, User and git commit columns."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    tags = {SOURCE_NAME: "study/run.py", SOURCE_TYPE: "JOB", USER: user, CODE_VERSION: version}
    if version != "unknown":
        tags[GIT_COMMIT] = version.removesuffix("+dirty")
    return tags


# ----------------------------------------------------------------------------- the study's records
def ui_link(tracking_uri: str, experiment_id: str, local_port: int = 5000) -> str:
    """The MLflow UI page of the study's runs, opened in the model-training view (MLflow 3 otherwise
    opens experiments in its GenAI view, which shows no runs), best validation log_likelihood first. The
    URL carries the sort only: MLflow keeps the chosen columns in the browser, not in the URL."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else f"http://127.0.0.1:{local_port}"
    return (f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            "&orderByKey=metrics.%60log_likelihood%60&orderByAsc=false")


def find_study_run(client: MlflowClient, experiment_id: str) -> Run | None:
    runs = client.search_runs([experiment_id], f"tags.{KIND} = 'study'", max_results=1)
    return runs[0] if runs else None


def find_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, number: int) -> Run | None:
    """The run of the study's trial `number` (one per trial, found again after a resume or a retry)."""
    runs = client.search_runs([experiment_id], f"tags.{TRIAL_NUMBER} = '{number}' and tags.`{PARENT}` = "
                                               f"'{parent_run_id}'", max_results=2)
    return runs[0] if runs else None


def trial_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    """Every trial run of the study (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], f"tags.`{PARENT}` = '{parent_run_id}'", max_results=1000,
                                  page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def run_name(number: int, method: str, searched: dict, value: float | None = None) -> str:
    """What the trial is, most telling first (the runs table truncates names): number, method,
    its log-likelihood once known, then the values the search chose."""
    head = f"#{number} {method}"
    if value is not None and math.isfinite(value):
        head += f" {value:.3f}"
    params = " ".join(f"{k}={format_value(v)}" for k, v in sorted(searched.items()) if k != "objective")
    return f"{head} | {params}" if params else head


def create_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, number: int, trial_id: str,
                     cfg: Config, searched: dict, fixed: list[str], tags: dict[str, str]) -> str:
    """The trial's nested run: tags, a name saying what the trial is, the params that apply to its method."""
    method = method_of(cfg.to_dict())
    run_tags = {**tags, PARENT: parent_run_id, TRIAL_ID: trial_id, TRIAL_NUMBER: str(number), METHOD: method,
                SEARCHED: ",".join(sorted(searched)), FIXED: ",".join(sorted(fixed))}
    run = client.create_run(experiment_id, run_name=run_name(number, method, searched), tags=run_tags)
    params = [Param(k, str(v)) for k, v in applicable_params(cfg).items()]
    client.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def close_trial_run(client: MlflowClient, run: Run, fate: Fate, error: str = "", value: float | None = None) -> None:
    """Record the trial's fate (tag, status, error text) and put its value into its name."""
    run_id = run.info.run_id
    client.set_tag(run_id, FATE, fate.value)
    if error:
        client.set_tag(run_id, ERROR, one_line(error))
    tags = run.data.tags
    searched = {k: parse_value(run.data.params.get(k, "")) for k in tags.get(SEARCHED, "").split(",") if k}
    client.set_terminated(run_id, status=fate.mlflow_status)  # records the end time, unlike update_run
    client.update_run(run_id, name=run_name(int(tags.get(TRIAL_NUMBER, 0)), tags.get(METHOD, "?"), searched, value))


def close_lost_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> int:
    """Runs still RUNNING once the study is over (a worker killed from outside) are FAILED (lost)."""
    lost = 0
    for run in trial_runs(client, experiment_id, parent_run_id):
        if run.info.status == "RUNNING":
            close_trial_run(client, run, Fate.LOST, "lost: its worker stopped without closing the run "
                                                    "(killed from outside, out of memory, or a lost node)")
            lost += 1
    return lost


__all__ = ["Fate", "applicable_params", "close_lost_runs", "close_trial_run", "code_version", "create_trial_run",
           "fate_of", "find_study_run", "find_trial_run", "method_of", "one_line", "refused_login", "run_name",
           "source_tags", "trial_runs", "ui_link"]
