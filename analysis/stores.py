"""Where a study's records are, found as study/run.py leaves them, from any directory, and opened read-only.

Each store comes from, first match wins (as in study/run.py):
  MLflow:  --tracking-uri;   $MLFLOW_TRACKING_URI;  sqlite:///RESULTS/mlflow.db
  Optuna:  --optuna-storage; $AVB_OPTUNA_STORAGE;   sqlite:///RESULTS/optuna.db
with RESULTS the --results-dir (default ./results, made absolute). A relative sqlite:/// URL is made absolute.

Opening never changes a store: a missing SQLite file is never created, a file that is not an MLflow (or
Optuna) database is refused before MLflow or Optuna could add their tables to it, a server that does not
answer is refused within seconds. Every problem is an AnalysisError whose message is one line saying what
is wrong and what to do; the command-line tools print it and exit with code 2 (`run_cli`).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from study.cli import OneLineParser as OneLineParser  # noqa: PLC0414  (analysis.export, .report)
from study.credentials import mlflow_refusal
from study.settings import first_line, masked

DEFAULT_RESULTS_DIR = "results"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
OPTUNA_ENV = "AVB_OPTUNA_STORAGE"
EXIT_BAD_INPUT = 2


class AnalysisError(RuntimeError):
    """The study cannot be read or written as asked; the message (one line) says what to do."""


@dataclass(frozen=True)
class Stores:
    results_dir: Path
    tracking_uri: str
    optuna_storage: str

    def out_dir(self, study: str, *parts: str) -> Path:
        """RESULTS/analysis/STUDY[/parts]: where the analysis of a study goes by default."""
        return self.results_dir.joinpath("analysis", study, *parts)


def absolute_url(url: str, flag: str) -> str:
    """sqlite:///relative.db made absolute; server and database URLs as given; a bare path is an error."""
    if url.startswith("sqlite:///"):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).expanduser().resolve()}"
    if "://" not in url:
        raise AnalysisError(f"{flag} {url!r} is not a URL; use sqlite:////abs/path.db, http://HOST:PORT (MLflow) "
                            "or postgresql+psycopg://USER:PASS@HOST/DB")
    return url


def find_stores(results_dir: str | Path | None = None, tracking_uri: str | None = None,
                optuna_storage: str | None = None) -> Stores:
    """The stores to read, by the rules above (nothing is opened yet)."""
    results = Path(results_dir or DEFAULT_RESULTS_DIR).expanduser().resolve()
    if results.exists() and not results.is_dir():
        raise AnalysisError(f"--results-dir {results} is a file, not a folder; pass the folder study/run.py "
                            "wrote (it holds mlflow.db and optuna.db)")
    tracking = tracking_uri or os.environ.get(TRACKING_ENV) or f"sqlite:///{results / 'mlflow.db'}"
    optuna_url = optuna_storage or os.environ.get(OPTUNA_ENV) or f"sqlite:///{results / 'optuna.db'}"
    return Stores(results, absolute_url(tracking, "--tracking-uri"), absolute_url(optuna_url, "--optuna-storage"))


# ----------------------------------------------------------------------------- read-only checks
def _sqlite_tables(path: Path, what: str, flag: str) -> set[str]:
    """Table names of an existing SQLite file, opened read-only (a missing file is never created)."""
    if not path.exists():
        env = {"--tracking-uri": TRACKING_ENV, "--optuna-storage": OPTUNA_ENV}.get(flag)
        raise AnalysisError(f"no {what} at {path}; run a study first (python study/run.py --results-dir "
                            f"{path.parent}), or pass --results-dir or {flag}" + (f" (or set ${env})" if env else ""))
    if not path.is_file():
        raise AnalysisError(f"{what} {path} is a folder, not a SQLite file; pass {flag} sqlite:////abs/path.db")
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True) as db:
            return {row[0] for row in db.execute("select name from sqlite_master where type = 'table'")}
    except sqlite3.Error as err:
        raise AnalysisError(f"{what} {path} cannot be read ({err}): not a SQLite database or damaged; "
                            f"restore it from a copy or pass another {flag}") from None


def _server_answers(uri: str, flag: str) -> None:
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
            response.read()
    except OSError as err:
        raise AnalysisError(f"MLflow tracking server {masked(uri)} is unreachable ({first_line(err)}); start it "
                            f"or fix {flag} / ${TRACKING_ENV}") from None


def _database_tables(url: str, what: str, flag: str) -> set[str]:
    """Table names of a database server's database (PostgreSQL, MySQL), by a read-only inspection."""
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        try:
            return set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except Exception as err:  # noqa: BLE001  (drivers raise many kinds)
        raise AnalysisError(f"{what} {masked(url)} cannot be opened ({type(err).__name__}: {first_line(err)}); "
                            f"check the server, the URL and the password, or pass another {flag}") from None


def open_mlflow(uri: str, flag: str = "--tracking-uri"):
    """An MlflowClient for an existing MLflow store that answered a query."""
    import mlflow
    from mlflow.store.tracking.dbmodels.models import Base

    what = "MLflow store"
    if uri.startswith(("http://", "https://")):
        _server_answers(uri, flag)
    elif "://" in uri and not uri.startswith("file:"):
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        tables = _sqlite_tables(path, what, flag) if path else _database_tables(uri, what, flag)
        core = {"experiments", "runs", "metrics", "params", "tags", "alembic_version"} - tables
        if core:
            raise AnalysisError(f"{masked(uri)} is not an MLflow store (no table {sorted(core)[0]!r}); pass "
                                f"the mlflow.db that study/run.py wrote with {flag}")
        if set(Base.metadata.tables) - tables:  # MLflow would migrate it on opening: not without being asked
            raise AnalysisError(f"the MLflow store {masked(uri)} was made by an older MLflow; upgrade it first "
                                f"(back it up, then: mlflow db upgrade {masked(uri)})")
    try:
        client = mlflow.MlflowClient(uri)
        client.search_experiments(max_results=1)
    except mlflow.MlflowException as err:
        if uri.startswith("http") and err.get_http_status_code() in (401, 403):  # the server's login
            raise AnalysisError(mlflow_refusal(masked(uri), err.get_http_status_code())) from None
        raise AnalysisError(f"the MLflow store {masked(uri)} cannot be read ({type(err).__name__}: "
                            f"{first_line(err)}); fix or restore it, or pass another {flag}") from None
    except Exception as err:  # noqa: BLE001  (MLflow raises many kinds; the user needs one line)
        raise AnalysisError(f"the MLflow store {masked(uri)} cannot be read ({type(err).__name__}: "
                            f"{first_line(err)}); fix or restore it, or pass another {flag}") from None
    return client


def open_optuna(url: str, flag: str = "--optuna-storage"):
    """An Optuna RDBStorage for an existing Optuna database (never creates or migrates its tables)."""
    import optuna
    from optuna.storages._rdb.models import BaseModel

    what = "Optuna storage"
    if url.startswith("sqlite:///"):
        tables = _sqlite_tables(Path(url.removeprefix("sqlite:///")), what, flag)
    elif url.startswith(("http://", "https://")):
        raise AnalysisError(f"{flag} {url}: Optuna storages are databases (sqlite:///..., postgresql+psycopg://...)"
                            ", not HTTP servers")
    else:
        tables = _database_tables(url, what, flag)
    missing = (set(BaseModel.metadata.tables) | {"alembic_version"}) - tables
    if missing:
        raise AnalysisError(f"{masked(url)} is not an Optuna storage (no table {sorted(missing)[0]!r}); pass the "
                            f"optuna.db that study/run.py wrote with {flag}")
    try:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
        storage.get_all_studies()
    except Exception as err:  # noqa: BLE001
        raise AnalysisError(f"the Optuna storage {masked(url)} cannot be read ({type(err).__name__}: "
                            f"{first_line(err)}); fix or restore it, or pass another {flag}") from None
    return storage


def optuna_study(storage, name: str):
    """The Optuna study `name` in an opened storage; AnalysisError listing the studies there otherwise."""
    import optuna

    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        there = f"studies there: {', '.join(names)}" if names else "it holds no study"
        raise AnalysisError(f"the Optuna storage {masked(storage.url)} has no study {name!r} ({there}); pass the "
                            "storage the study used with --optuna-storage")
    return optuna.load_study(study_name=name, storage=storage)


def check_out_dir(out: Path) -> Path:
    """An output folder that is not a file and whose nearest existing parent is a folder (checked before any work)."""
    out = out.expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise AnalysisError(f"--out {out} is a file, not a folder; pass a folder (it is created)")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise AnalysisError(f"--out {out}: {parent} is a file, not a folder")
    nearest = out if out.exists() else parent
    if nearest is not None and not os.access(nearest, os.W_OK | os.X_OK):
        raise AnalysisError(f"cannot write into {nearest} (read-only); pass a writable folder with --out")
    return out


# ----------------------------------------------------------------------------- command lines
def add_store_flags(parser: argparse.ArgumentParser, optuna: bool) -> None:
    parser.add_argument("--study", required=True, help="the study's name (its MLflow experiment and Optuna study)")
    parser.add_argument("--results-dir", help=f"the folder study/run.py wrote (default: ./{DEFAULT_RESULTS_DIR})")
    parser.add_argument("--tracking-uri", help=f"MLflow store: SQLite file or server (default: ${TRACKING_ENV}, "
                                               "else sqlite:///RESULTS/mlflow.db)")
    if optuna:
        parser.add_argument("--optuna-storage", help=f"Optuna storage URL (default: ${OPTUNA_ENV}, else "
                                                     "sqlite:///RESULTS/optuna.db)")


def store_errors() -> tuple[type[BaseException], ...]:
    """What a damaged or vanished store raises midway through reading (past the checks on opening)."""
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    return MlflowException, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error


def run_cli(work: Callable[[], None]) -> int:
    """Run a command's work: 0, or one line on stderr and exit code 2 for an AnalysisError or a store that fails
    midway (damaged past its first pages, or a server that went away)."""
    try:
        work()
    except AnalysisError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except store_errors() as err:
        print(f"error: reading the study's stores failed ({type(err).__name__}: {first_line(err)}); check that the "
              "store is intact and reachable, or restore it from a copy", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
