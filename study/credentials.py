"""The study's credentials: where they come from, how each service's login is checked before anything is
written, and how their values are kept out of what the study prints and saves (docs/security.md).

    Ray        RAY_AUTH_MODE=token and the cluster's token: $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH,
               else ~/.ray/auth_token (Ray's own order). A local Ray started by the study needs none.
    MLflow     MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, else ~/.mlflow/credentials (mode 600):
               a user of the server's auth app (`mlflow server --app-name basic-auth`).
    databases  the password inside a store URL; from $AVB_OPTUNA_STORAGE / $MLFLOW_TRACKING_URI rather than a
               flag, which `ps` and the shell history show.

Credentials never travel in a flag the study saves: a login inside an http(s) tracking URI is refused.
"""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

from study.settings import StudyError

# environment variables whose values are secrets, wherever they appear
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_AUTH_ADMIN_PASSWORD",
              "MLFLOW_FLASK_SERVER_SECRET_KEY", "RAY_AUTH_TOKEN", "AVB_MLFLOW_PASSWORD", "AVB_MLFLOW_ADMIN_PASSWORD",
              "PGPASSWORD")
MLFLOW_CREDENTIALS = "~/.mlflow/credentials"
DEFAULT_RAY_TOKEN = "~/.ray/auth_token"
SECURITY_DOC = "docs/security.md"


class CredentialError(StudyError):
    """A login that is missing or refused; the message (one line) says what to set."""


# ----------------------------------------------------------------------------- masking
def secret_values() -> list[str]:
    """Every secret the study can see now: the secret environment variables, the Ray token file, the password
    of MLflow's credentials file. Longest first, so that no secret is masked only in part."""
    values = [os.environ.get(name, "") for name in SECRET_ENV]
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    values += [read_quietly(Path(path))] if path else []
    values.append(mlflow_file_login()[1] or "")
    return sorted({v.strip() for v in values if len(v.strip()) >= 6}, key=len, reverse=True)


def mask_secrets(text: str) -> str:
    """`text` with every password of a URL and every known secret value replaced by ***."""
    text = re.sub(r"(//[^/:@\s]+:)[^/@\s]*@", r"\1***@", text)
    for value in secret_values():
        text = text.replace(value, "***")
    return text


def read_quietly(path: Path) -> str:
    try:
        return path.expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


# ----------------------------------------------------------------------------- MLflow
def mlflow_file_login(path: str = MLFLOW_CREDENTIALS) -> tuple[str | None, str | None]:
    """(username, password) of MLflow's credentials file, as MLflow reads it; (None, None) without one."""
    config = configparser.ConfigParser()
    try:
        config.read(Path(path).expanduser())
    except configparser.Error:
        return None, None
    section = config["mlflow"] if config.has_section("mlflow") else {}
    return section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")


def mlflow_login() -> tuple[str | None, str]:
    """(username, where the login comes from) as MLflow's client will send it."""
    if os.environ.get("MLFLOW_TRACKING_USERNAME") or os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return os.environ.get("MLFLOW_TRACKING_USERNAME"), "$MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD"
    return mlflow_file_login()[0], MLFLOW_CREDENTIALS


def check_tracking_uri(uri: str, option: str) -> None:
    """A login inside an http(s) URI would be printed, saved with the study and handed to every trial."""
    if re.match(r"https?://[^/@]*@", uri):
        raise CredentialError(f"{option} carries a login; give it as MLFLOW_TRACKING_USERNAME and "
                              f"MLFLOW_TRACKING_PASSWORD (environment) or in {MLFLOW_CREDENTIALS} (mode 600), "
                              f"never in a URI ({SECURITY_DOC})")


def mlflow_refusal(uri: str, status: int) -> str:
    """The one line for a tracking server that answered 401 / 403 to the study's first query."""
    user, source = mlflow_login()
    fix = (f"set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or {MLFLOW_CREDENTIALS}, mode 600) to a "
           f"user of its auth app ({SECURITY_DOC})")
    if status == 403:
        return f"the MLflow server {uri} refused user {user!r} ({status}: no permission); {fix}"
    if user is None:
        return f"the MLflow server {uri} requires a login ({status}) and none is set; {fix}"
    return f"the MLflow server {uri} refused the login of user {user!r} from {source} ({status}: wrong " \
           f"password or unknown user); {fix}"


def notes(settings, given: set[str]) -> list[str]:
    """One line for each credential others may read: a password in a flag (`ps`, the shell history), a credential
    file other users can read."""
    found = []
    for name, env in (("tracking_uri", "MLFLOW_TRACKING_URI"), ("optuna_storage", "AVB_OPTUNA_STORAGE")):
        value = getattr(settings, name)
        if name in given and mask_secrets(value) != value:
            found.append(f"--{name.replace('_', '-')} carries a password, which ps and your shell history show; "
                         f"set ${env} instead ({SECURITY_DOC})")
    return found + notes_on_files()


def notes_on_files() -> list[str]:
    """Credential files others can read: one line each."""
    notes = []
    for path in (MLFLOW_CREDENTIALS, os.environ.get("RAY_AUTH_TOKEN_PATH") or ""):
        file = Path(path).expanduser() if path else None
        if file and file.is_file() and file.stat().st_mode & 0o077:
            notes.append(f"{file} holds a secret and other users can read it (mode "
                         f"{file.stat().st_mode & 0o777:o}); chmod 600 {file}")
    return notes


# ----------------------------------------------------------------------------- Ray
def ray_token() -> tuple[str, str] | None:
    """(token, where it comes from) in Ray's order; CredentialError for a token file that cannot be read
    (Ray itself would abort the process with a C++ stack trace)."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "$RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as err:
            raise CredentialError(f"RAY_AUTH_TOKEN_PATH {path}: the Ray token cannot be read "
                                  f"({getattr(err, 'strerror', None) or err}); point it at the cluster's token "
                                  f"file ({SECURITY_DOC})") from None
        if not token:
            raise CredentialError(f"RAY_AUTH_TOKEN_PATH {path} is empty; point it at the cluster's token file "
                                  f"({SECURITY_DOC})")
        return token, path
    default = Path(DEFAULT_RAY_TOKEN).expanduser()
    token = read_quietly(default)
    return (token, str(default)) if token else None


def ray_auth_mode(address: str) -> str:
    """'token' or 'disabled', as ray.init will decide it: RAY_AUTH_MODE, else (only for a cluster found on this
    machine) token when a token file exists."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower()
    return "token" if address in ("", "auto") and ray_token() is not None else "disabled"


def check_ray_login(gcs_address: str, address: str) -> None:
    """Ask the cluster's GCS one question with the token ray.init would send: a missing or foreign token is one
    line here, where ray.init would print a warning a second for 20 s and then blame the address."""
    mode = ray_auth_mode(address)
    source = ray_token() if mode == "token" else None  # Ray reads no token file while its mode is disabled
    if mode == "token" and source is None:
        raise CredentialError(f"RAY_AUTH_MODE=token but no Ray token is set: set RAY_AUTH_TOKEN_PATH to the "
                              f"cluster's token file ({SECURITY_DOC})")
    if mode == "token" and "RAY_AUTH_MODE" not in os.environ:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)  # as ray.init does for 'auto'
    try:
        gcs_answer(gcs_address)
    except Exception as err:  # noqa: BLE001  (anything but a refused token is ray.init's to report)
        if "InvalidAuthToken" not in str(err):
            return  # authenticated (the GCS only disliked the probe's made-up cluster id), or not Ray's auth
        if mode != "token":
            raise CredentialError(f"the Ray cluster at {gcs_address} requires a token and this driver sent none: "
                                  f"set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH to the cluster's token file "
                                  f"({SECURITY_DOC})") from None
        raise CredentialError(f"the Ray cluster at {gcs_address} rejected the token from {source[1]} "
                              "(InvalidAuthToken): it is another cluster's token (a local Ray keeps its own in "
                              f"{DEFAULT_RAY_TOKEN}); set RAY_AUTH_TOKEN_PATH to this cluster's token file "
                              f"({SECURITY_DOC})") from None


def gcs_answer(gcs_address: str) -> None:
    """One GCS call with a made-up cluster id: Ray checks the token first, the cluster id second, so an
    error that does not say InvalidAuthToken means the token was accepted."""
    from ray._raylet import GcsClient

    GcsClient(address=gcs_address, cluster_id="a1" * 28).internal_kv_get(b"avb-study-probe", None, timeout=10)
