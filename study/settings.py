"""The settings of a study: one typed object, from the command line, checked, with absolute paths,
saved beside Tune's state and read back by --resume.

Where a value comes from, first match wins:
  stores (--tracking-uri, --optuna-storage): the flag; on --resume the saved value;
      then $MLFLOW_TRACKING_URI / $AVB_OPTUNA_STORAGE; then SQLite files in --results-dir;
  data (the `data_root` of image presets): --set data_root=...; $AVB_DATA_ROOT; ./data;
      made absolute here, on the driver, so every trial reads exactly what was checked;
  what defines the study (preset, budget, search, --set, ...): a new study takes the flags;
      --resume takes the saved values and refuses a flag that differs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path

from search_spaces import PRESETS, load_preset

SCHEDULERS = ("asha", "none")
SAMPLERS = ("tpe", "random")
STUDY_FILE = "avb-study.json"
IMAGE_DATASETS = ("mnist", "celeba", "folder")  # data sets read from data_root
# what a resumed study keeps from its first run (a differing flag is refused, not silently ignored)
KEPT_ON_RESUME = ("preset", "num_trials", "concurrency", "cpus_per_trial", "gpus_per_trial", "iterations",
                  "steps_per_iteration", "scheduler", "sampler", "baselines", "seed", "keep_checkpoints",
                  "max_failures", "overrides")
# how this driver runs, not what the study is
NOT_SAVED = ("resume", "retry_crashed", "address", "verbose", "progress_every")
# what --resume may change: where the stores are, where Ray runs, the evaluation after the study
CHANGEABLE_ON_RESUME = ("tracking_uri", "optuna_storage", "final_ais", "ais_temps", "ais_points")


class StudyError(RuntimeError):
    """Bad input or environment; the message (one line) says what to fix."""


@dataclass
class StudySettings:
    preset: str = "synthetic"
    num_trials: int = 8
    concurrency: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    iterations: int | None = None  # None: the preset's
    steps_per_iteration: int | None = None  # None: the preset's
    scheduler: str = "asha"
    sampler: str = "tpe"
    baselines: bool = True  # the preset's published settings are the first trials
    seed: int = 0
    results_dir: str = "results"
    tracking_uri: str = ""
    optuna_storage: str = ""
    storage_path: str = ""
    study_name: str = ""
    resume: bool = False
    retry_crashed: bool = False  # with --resume: each crashed trial again, as a new trial
    address: str = ""
    final_ais: int = 3
    ais_temps: int | None = None  # None: the preset's
    ais_points: int | None = None  # None: the preset's
    keep_checkpoints: int = 2
    max_failures: int = 2
    verbose: bool = False  # Tune's own status tables (off: the project's lines only)
    progress_every: float = 60.0  # seconds between progress lines
    overrides: dict = field(default_factory=dict)  # Config fields fixed for every trial (--set)

    # ------------------------------------------------------------------ checks
    def check(self) -> None:
        """Values that can be checked without touching anything."""
        if self.preset not in PRESETS:
            raise StudyError(f"unknown preset {self.preset!r}; available presets: {', '.join(PRESETS)}")
        for name in ("num_trials", "concurrency", "iterations", "steps_per_iteration", "ais_temps", "ais_points",
                     "keep_checkpoints"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise StudyError(f"--{flag(name)} must be a positive integer, got {value}")
        if not self.cpus_per_trial > 0:
            raise StudyError(f"--cpus-per-trial must be > 0 (trials always reserve CPUs), got {self.cpus_per_trial}")
        if self.gpus_per_trial < 0:
            raise StudyError(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise StudyError(f"--gpus-per-trial {self.gpus_per_trial}: above 1 it must be a whole number of GPUs")
        if self.max_failures < 0:
            raise StudyError(f"--max-failures must be >= 0 (retries of a crashed trial), got {self.max_failures}; "
                             "Ray would read a negative value as unlimited retries")
        if not self.progress_every > 0:
            raise StudyError(f"--progress-every must be > 0 seconds, got {self.progress_every}")
        if self.final_ais < 0:
            raise StudyError(f"--final-ais must be >= 0 (0 turns it off), got {self.final_ais}")
        if self.resume and not self.study_name:
            raise StudyError("--resume needs --study-name NAME (the name printed when the study started)")
        if self.retry_crashed and not self.resume:
            raise StudyError("--retry-crashed needs --resume --study-name NAME: it retries the trials of a study "
                             "that crashed")
        if self.study_name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.study_name):
            raise StudyError(f"--study-name {self.study_name!r}: use letters, digits, '.', '_' and '-' "
                             "(it names a folder, an MLflow experiment and an Optuna study)")
        check_address(self.address)

    def check_overrides(self) -> None:
        from avb.config import ConfigError

        try:
            self.base_config()
        except ConfigError as err:
            raise StudyError(f"--set: {err}") from err

    def base_config(self):
        """The preset's Config with the study's fixed fields (--set) applied."""
        return load_preset(self.preset).BASE.replace(**self.overrides)

    # ------------------------------------------------------------------ paths and defaults
    def resolve_paths(self) -> None:
        """The results folder and Tune's storage path, absolute (Tune runs trials in folders of their own)."""
        self.study_name = self.study_name or f"{self.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
        results = Path(self.results_dir).expanduser()
        if results.exists() and not results.is_dir():
            raise StudyError(f"--results-dir {results} is a file, not a folder; pass a folder (it is created)")
        self.results_dir = str(results.resolve())
        if not self.storage_path:
            self.storage_path = str(Path(self.results_dir) / "ray")
        elif "://" not in self.storage_path:
            self.storage_path = str(Path(self.storage_path).expanduser().resolve())

    def resolve(self) -> None:
        """The preset's defaults, the stores and the data folder, decided once here on the driver."""
        preset = load_preset(self.preset)
        self.iterations = self.iterations or preset.ITERATIONS
        self.steps_per_iteration = self.steps_per_iteration or preset.STEPS_PER_ITERATION
        self.tracking_uri = absolute_uri(self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                                         or f"sqlite:///{Path(self.results_dir) / 'mlflow.db'}", "--tracking-uri")
        self.optuna_storage = absolute_uri(self.optuna_storage or os.environ.get("AVB_OPTUNA_STORAGE")
                                           or f"sqlite:///{Path(self.results_dir) / 'optuna.db'}", "--optuna-storage")
        self.check_overrides()
        self.resolve_data_root()

    def resolve_data_root(self) -> None:
        """Image presets read data_root inside trials, which Tune runs in their own folders: make it absolute."""
        cfg = self.base_config()
        if cfg.dataset in IMAGE_DATASETS:
            root = self.overrides.get("data_root") or os.environ.get("AVB_DATA_ROOT") or cfg.data_root or "data"
            self.overrides["data_root"] = str(Path(root).expanduser().resolve())

    # ------------------------------------------------------------------ saving and resuming
    def study_file(self) -> tuple:
        """(pyarrow filesystem, path) of the saved settings, beside Tune's state (local or s3://)."""
        from pyarrow import fs

        filesystem, root = fs.FileSystem.from_uri(self.storage_path)
        return filesystem, f"{root.rstrip('/')}/{self.study_name}/{STUDY_FILE}"

    def saved(self) -> dict | None:
        from pyarrow import fs

        try:
            filesystem, path = self.study_file()
            if filesystem.get_file_info(path).type != fs.FileType.File:
                return None
            with filesystem.open_input_stream(path) as f:
                values = json.loads(f.read())
        except (OSError, ValueError) as err:
            raise StudyError(f"cannot read the study's settings under {self.storage_path} ({first_line(err)}); "
                             "check --storage-path and its credentials") from None
        problem = shape_problem(values)
        if problem:
            raise StudyError(f"{path} is not a study's settings file ({problem}); it is written once, when the "
                             "study starts: restore it from a copy, or start a new study with another --study-name")
        return values

    def check_writable(self) -> None:
        """Write and delete a probe where the settings will go: a storage path that cannot be written (read-only,
        S3 access denied) is an error before anything of the study is created."""
        try:
            filesystem, path = self.study_file()
            folder = path.rsplit("/", 1)[0]
            filesystem.create_dir(folder, recursive=True)
            with filesystem.open_output_stream(f"{folder}/.probe") as f:
                f.write(b"ok")
            filesystem.delete_file(f"{folder}/.probe")
        except OSError as err:
            raise StudyError(f"cannot write under --storage-path {self.storage_path} ({first_line(err)}); "
                             "choose a writable folder or bucket, or fix its credentials") from None

    def save(self) -> None:
        """Written last, once everything checked out; store passwords are never written (see `masked`)."""
        filesystem, path = self.study_file()
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_SAVED}
        values |= {"tracking_uri": masked(self.tracking_uri), "optuna_storage": masked(self.optuna_storage)}
        with filesystem.open_output_stream(path) as f:
            f.write(json.dumps(values, indent=2).encode())

    def merge_saved(self, saved: dict, given: set[str]) -> list[str]:
        """--resume: take what defines the study from `saved`, refuse flags that differ; returns notes."""
        if "overrides" in given:  # compared as the first run saved them: data_root absolute
            self.preset = saved["preset"]
            self.check_overrides()
            self.resolve_data_root()
        for name in KEPT_ON_RESUME:
            ours, theirs = getattr(self, name), saved[name]
            if name in given and ours != theirs:
                shown = " ".join(f"--set {k}={v}" for k, v in theirs.items()) if name == "overrides" else theirs
                raise StudyError(f"--{flag(name) if name != 'overrides' else 'set'} differs from the study's "
                                 f"({shown or 'none'}); a resumed study keeps its settings: drop the flag, "
                                 "or start a new study with another --study-name")
            setattr(self, name, theirs)
        try:
            self.check()
        except StudyError as err:
            raise StudyError(f"the study's saved settings ({STUDY_FILE} under --storage-path) are invalid: {err}; "
                             "restore the file from a copy, or start a new study with another --study-name") from None
        notes = []
        for name in CHANGEABLE_ON_RESUME:
            if name not in given:
                setattr(self, name, unmasked(saved[name], name))
                notes += copy_note(name, saved[name], Path(self.results_dir))
            elif masked(getattr(self, name)) != saved[name]:
                notes.append(f"--{flag(name)} {masked(getattr(self, name))} replaces the study's {saved[name]}")
        return notes


# ----------------------------------------------------------------------------- helpers
def copy_note(name: str, saved, results: Path) -> list[str]:
    """A resume in a copied results folder writes to the stores the study saved (the original's), not to the
    copy's own files: say so before anything is written."""
    path = Path(saved.removeprefix("sqlite:///")) if str(saved).startswith("sqlite:///") else None
    if path is None or path.parent == results or not (results / path.name).is_file():
        return []
    return [f"this study's {flag(name).replace('-', ' ')} is {saved} (its saved settings), not {results / path.name}; "
            f"to resume a copy on its own stores pass --{flag(name)} sqlite:///{results / path.name}"]


def shape_problem(values) -> str:
    """What is wrong with the shape of a saved settings file ('' when nothing): a JSON object with every kept
    and changeable setting, each of its field's type."""
    if not isinstance(values, dict):
        return f"a JSON {type(values).__name__}, not an object"
    hints = typing.get_type_hints(StudySettings)
    for name in (*KEPT_ON_RESUME, *CHANGEABLE_ON_RESUME):
        if name not in values:
            return f"no {name!r}"
        value, hint = values[name], hints[name]
        if hint is float and isinstance(value, int):
            value = float(value)
        if (isinstance(value, bool) and hint is not bool) or not isinstance(value, hint):
            return f"{name!r} is {value!r}, not {getattr(hint, '__name__', hint)}"
    return ""


def flag(name: str) -> str:
    return name.replace("_", "-")


ENV_DEFAULTS = {"tracking_uri": "MLFLOW_TRACKING_URI", "optuna_storage": "AVB_OPTUNA_STORAGE"}


def first_line(err: BaseException) -> str:
    """An error's first line, its secrets masked (every one-line error quotes an error through here)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return masked(lines[0])[:300] if lines else ""


def masked(uri):
    """A store URL, or any text, with the password of every URL and every secret the study knows (Ray token,
    MLflow passwords: study.credentials) replaced by *** (what is printed, saved and logged)."""
    from study.credentials import mask_secrets

    if not isinstance(uri, str):
        return uri
    return mask_secrets(uri)


def unmasked(saved, name: str):
    """A saved store URL as the resumed study uses it: a masked password comes from the environment's URL
    for the same store ($MLFLOW_TRACKING_URI, $AVB_OPTUNA_STORAGE), else the flag must give it."""
    if not isinstance(saved, str) or "***@" not in saved:
        return saved
    env = os.environ.get(ENV_DEFAULTS.get(name, ""), "")
    if env and masked(env) == saved:
        return env
    raise StudyError(f"the study's {flag(name)} {saved} needs its password, which is never saved: pass "
                     f"--{flag(name)} with the full URL (or set ${ENV_DEFAULTS.get(name)})")

def absolute_uri(uri: str, option: str) -> str:
    """sqlite:///relative.db made absolute; other schemes as given; a bare path is an error."""
    if uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    if "://" not in uri:
        raise StudyError(f"{option} {uri!r} is not a URI; use sqlite:////abs/path.db, "
                         "postgresql+psycopg://USER:PASS@HOST/DB or (MLflow) http://HOST:PORT")
    return uri


def check_address(address: str) -> None:
    """A Ray address is '', 'local', 'auto', HOST:PORT or ray://HOST:PORT; a HOST:PORT must answer within
    seconds (Ray itself would retry for minutes)."""
    import socket

    if address in ("", "local", "auto"):
        return
    match = re.fullmatch(r"(?:ray://)?(\[[0-9a-fA-F:]+\]|[\w.-]+):(\d{1,5})", address)
    if not match:
        raise StudyError(f"--address {address!r} is not a Ray address; use HOST:PORT (e.g. 10.0.0.5:6379), "
                         "'auto' for the cluster on this machine, or leave it out for a local Ray")
    host, port = match.group(1).strip("[]"), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as err:
        raise StudyError(f"--address {address}: no Ray cluster answers there ({err.strerror or err}); "
                         "start it (ray start --head) or fix the address") from None
