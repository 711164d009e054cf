"""A trial's Config, to retrain it elsewhere: from the study's MLflow runs (`best_config`) or from its committed
trials.parquet alone (`exported_config`, benchmarks/images.py --from-study).

    from analysis.configs import best_config
    cfg, number = best_config("sqlite:////abs/results/mlflow.db", "NAME")   # the trial chosen on validation
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from analysis.export import CONFIG_TYPES, open_study, param_value, trial_number
from analysis.stores import AnalysisError, first_line
from avb.config import Config
from trainables.tracking import Fate


def best_config(uri: str, study: str, number: int | None = None) -> tuple[Config, int]:
    """(the Config of the study's best trial as its run logged it, its trial number): the trial chosen on
    validation at the end of the study (the parent run's `best_trial_number`), or trial `number`, for
    retraining it elsewhere."""
    from search_spaces import load_preset

    runs = open_study(uri, study)
    info = runs.info
    number = info["best_trial_number"] if number is None else number
    run = next((r for r in runs.trials if trial_number(r) == number), None)
    if run is None:
        raise AnalysisError(f"study {study!r} has no trial {number} on record" if info["best_trial_number"] is not None
                            or number is not None else f"study {study!r} has no best trial on record (it has not "
                            f"finished); finish it first: python study/run.py --resume --study-name {study}")
    fixed = {k.removeprefix("set."): param_value(k.removeprefix("set."), str(v)) for k, v in info.items()
             if k.startswith("set.")}
    logged = {k: param_value(k, v) for k, v in run.data.params.items() if k in CONFIG_TYPES}
    return load_preset(info["preset"]).BASE.replace(**fixed).replace(**logged), number


def exported_config(path: str | Path, number: int | None = None) -> tuple[Config, int]:
    """best_config from a study's trials.parquet (`analysis.export`), for retraining without its stores: trial
    `number`, or the finished full-fidelity trial with the best last validation log-likelihood (the study's
    own choice). Fields the trial did not log, as its method does not use them (a VAE's adversary), keep
    Config's defaults."""
    if not Path(path).is_file():
        raise AnalysisError(f"no file {path}; pass the trials.parquet written by python -m analysis.export")
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise AnalysisError(f"cannot read {path} ({first_line(err)}); pass a trials.parquet written by "
                            "python -m analysis.export") from None
    if number is None:
        done = df[(df["fate"] == Fate.FINISHED.value) & df["full_fidelity"]]
        if done.empty:
            raise AnalysisError(f"{path} has no finished full-fidelity trial; name one: {path}#N")
        number = int(done.loc[done["final_log_likelihood"].idxmax(), "trial_number"])
    rows = df[df["trial_number"] == number]
    if rows.empty:
        raise AnalysisError(f"{path} has no trial {number}")
    row = rows.iloc[0]
    values = {k: kind(row[k]) for k, kind in CONFIG_TYPES.items() if k in row.index and not pd.isna(row[k])}
    return Config().replace(**values), number
