"""study/run.py's command line: the flags, each a field of `StudySettings`, parsed and checked."""

from __future__ import annotations

import argparse

from search_spaces import PRESETS
from study.settings import SAMPLERS, SCHEDULERS, StudyError, StudySettings


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (no usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """Flags default to None so that --resume can tell a flag given from a default."""
    d = StudySettings()
    p = OneLineParser(prog="study/run.py", description=description, argument_default=None,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", help=f"experiment preset: {', '.join(PRESETS)} (default: {d.preset})")
    p.add_argument("--num-trials", type=int, help=f"trials in the study (default: {d.num_trials})")
    p.add_argument("--concurrency", type=int, help=f"trials running at once (default: {d.concurrency})")
    p.add_argument("--cpus-per-trial", type=float, help=f"CPUs reserved per trial (default: {d.cpus_per_trial:g})")
    p.add_argument("--gpus-per-trial", type=float,
                   help=f"GPUs per trial, fractions share a GPU, e.g. 0.5 (default: {d.gpus_per_trial:g})")
    p.add_argument("--iterations", type=int, help="Tune iterations per trial, the full budget (default: the preset's)")
    p.add_argument("--steps-per-iteration", type=int, help="training steps per iteration (default: the preset's)")
    p.add_argument("--scheduler", choices=SCHEDULERS, help=f"early stopping: ASHA or none (default: {d.scheduler})")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="Optuna sampler: TPE (diverged trials count as bad) or random; measured (docs/search.md): "
                   "TPE beats random one trial at a time from a few hundred trial-iterations, and is no better "
                   f"with 8+ at once or at 64 (default: {d.sampler})")
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=None,
                   help="start with the preset's published settings as the first trials (default: yes)")
    p.add_argument("--seed", type=int, help=f"seed of the sampler and of every trial (default: {d.seed})")
    p.add_argument("--results-dir", help=f"folder of the local stores and Ray results (default: ./{d.results_dir})")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: on --resume the study's, else "
                                          "$MLFLOW_TRACKING_URI, else sqlite:///RESULTS/mlflow.db)")
    p.add_argument("--optuna-storage", help="Optuna storage URL (default: on --resume the study's, else "
                                            "$AVB_OPTUNA_STORAGE, else sqlite:///RESULTS/optuna.db)")
    p.add_argument("--storage-path", help="Ray storage: a local folder or s3://... (default: RESULTS/ray)")
    p.add_argument("--study-name", help="unique study name (default: PRESET-DATE-TIME)")
    p.add_argument("--resume", action="store_true", default=None,
                   help="continue the study --study-name from its last state (after Ctrl-C, a kill, a new head)")
    p.add_argument("--retry-crashed", action="store_true", default=None,
                   help="with --resume: run each crashed trial again from the start, as a new trial with the same "
                   "parameters (Optuna user attribute retry_of); crashed trials are otherwise left as they ended")
    p.add_argument("--address", help="Ray cluster address HOST:PORT (default: $RAY_ADDRESS or a cluster started "
                                     "on this machine, else a new local Ray)")
    p.add_argument("--final-ais", type=int, help="image presets: test-set IS and AIS log-likelihood of this many "
                                                 f"best trials (by validation) at the end; 0 = off "
                                                 f"(default: {d.final_ais})")
    p.add_argument("--ais-temps", type=int, help="AIS temperatures for --final-ais (default: the preset's)")
    p.add_argument("--ais-points", type=int, help="test images for --final-ais (default: the preset's)")
    p.add_argument("--keep-checkpoints", type=int, help="Tune checkpoints kept per trial: the best N by validation "
                                                        f"log-likelihood, plus the latest (default: "
                                                        f"{d.keep_checkpoints})")
    p.add_argument("--max-failures", type=int,
                   help=f"retries of a crashed trial, e.g. after a lost node (default: {d.max_failures})")
    p.add_argument("--verbose", action="store_true", default=None,
                   help="also print Ray Tune's status tables and trial configs (default: the study's own lines: "
                   "one per trial event and a progress line)")
    p.add_argument("--progress-every", type=float, metavar="SECONDS",
                   help=f"seconds between progress lines (default: {d.progress_every:g})")
    p.add_argument("--set", dest="overrides", action="append", metavar="FIELD=VALUE",
                   help="fix a Config field for every trial, also a searched one, e.g. --set hidden=64 (repeatable)")
    return p


def parse_overrides(items: list[str]) -> dict:
    from avb.config import parse_value

    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise StudyError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set hidden=64")
        values[key] = parse_value(raw)
    return values


def parse(argv: list[str] | None = None, description: str | None = None) -> tuple[StudySettings, set[str]]:
    """Settings from the command line (checked, not yet resolved) and the names of the flags given."""
    args = build_parser(description).parse_args(argv)
    given = {k for k, v in vars(args).items() if v is not None}
    values = {k: v for k, v in vars(args).items() if v is not None}
    if "overrides" in values:
        values["overrides"] = parse_overrides(values["overrides"])
    settings = StudySettings(**values)
    settings.check()
    return settings, given
