"""The study's two stores (MLflow and Optuna): reachable, readable (the MLflow server's login accepted), and
holding the study or not.

Checks only read. A new study must not exist yet in either store nor under Tune's storage path
(whatever that path is); a resumed one must exist in the stores it is given, so that a resume
never starts a second, split copy of a study in an empty store.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

from study.credentials import check_tracking_uri, mlflow_refusal
from study.settings import StudyError, StudySettings, first_line, masked


def check_mlflow(uri: str):
    """An MlflowClient for `uri` that answered a query; StudyError (one line) otherwise."""
    import mlflow

    check_tracking_uri(uri, "--tracking-uri")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
                response.read()
        except OSError as err:
            raise StudyError(f"MLflow tracking server {masked(uri)} is unreachable ({err}); start it "
                             f"(mlflow server --host 127.0.0.1 --port 5000) or fix --tracking-uri") from None
    sqlite_folder(uri, "MLflow store", "--tracking-uri")
    database_answers(uri, "MLflow store", "--tracking-uri")
    try:
        client = mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)
    except mlflow.MlflowException as err:
        status = err.get_http_status_code()
        if status in (401, 403) and uri.startswith("http"):  # the server's auth app: a login, before any write
            raise StudyError(mlflow_refusal(masked(uri), status)) from None
        raise StudyError(f"the MLflow store {masked(uri)} cannot be read ({type(err).__name__}: "
                         f"{first_line(err)}); fix or move it, or pass another --tracking-uri") from None
    except Exception as err:  # noqa: BLE001  (MLflow raises many kinds; the user needs one line)
        raise StudyError(f"the MLflow store {masked(uri)} cannot be read ({type(err).__name__}: "
                         f"{first_line(err)}); fix or move it, or pass another --tracking-uri") from None
    return client


def database_answers(url: str, what: str, option: str) -> None:
    """A database server's store (PostgreSQL, MySQL) accepts a connection within 10 s: a wrong password, closed
    port, unknown host or missing database is one line, not MLflow's 100 s of retries and warnings."""
    if not url.startswith(("postgresql", "mysql")):
        return
    import sqlalchemy

    engine = None
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 10})
        with engine.connect():
            pass
    except Exception as err:  # noqa: BLE001  (drivers raise their own kinds; the user needs one line)
        raise StudyError(f"the {what} {masked(url)} cannot be opened ({type(err).__name__}: "
                         f"{masked(first_line(err))}); fix or move it, or pass another {option}") from None
    finally:
        if engine is not None:
            engine.dispose()


def check_optuna(url: str):
    """An Optuna RDBStorage for `url`; StudyError (one line) when it cannot be opened."""
    import optuna

    sqlite_folder(url, "Optuna storage", "--optuna-storage")
    # a database behind a closed firewall fails in seconds, not after the OS's two-minute TCP timeout
    engine = {"connect_args": {"connect_timeout": 10}} if url.startswith("postgresql") else None
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as err:  # noqa: BLE001
        raise StudyError(f"the Optuna storage {masked(url)} cannot be opened ({type(err).__name__}: "
                         f"{first_line(err)}); fix or move it, or pass another --optuna-storage") from None


def sqlite_folder(uri: str, what: str, option: str) -> None:
    """The folder of a SQLite store, created when missing (a new study's results folder)."""
    if not uri.startswith("sqlite:///"):
        return
    folder = Path(uri.removeprefix("sqlite:///")).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StudyError(f"cannot create the folder of the {what} {folder} ({err.strerror}); "
                         f"pass a writable --results-dir or {option}") from None


def optuna_has(storage, name: str) -> bool:
    import optuna

    return any(s.study_name == name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))


def check_existence(settings: StudySettings, client, storage, saved: dict | None) -> None:
    """New: the name is free everywhere. --resume: the study is in both stores it was given."""
    name = settings.study_name
    in_mlflow = client.get_experiment_by_name(name) is not None
    in_optuna = optuna_has(storage, name)
    if not settings.resume:
        where = [w for w, hit in (("Ray storage " + masked(settings.storage_path), saved is not None),
                                  ("MLflow store " + masked(settings.tracking_uri), in_mlflow),
                                  ("Optuna storage " + masked(settings.optuna_storage), in_optuna)) if hit]
        if where:
            raise StudyError(f"a study named {name!r} exists already (in the {', '.join(where)}); "
                             "pick another --study-name, or continue it with --resume")
        return
    missing = [w for w, hit in ((f"MLflow store {masked(settings.tracking_uri)}", in_mlflow),
                                (f"Optuna storage {masked(settings.optuna_storage)}", in_optuna)) if not hit]
    if missing:
        raise StudyError(f"study {name!r} is not in the {' nor the '.join(missing)}; resuming there would split "
                         "the study: pass the stores that hold it (--tracking-uri, --optuna-storage)")
