"""The cluster's credentials, made and installed without ever passing through a command line (docs/security.md).

    python -m study.cluster_auth secrets              # your machine, once per cluster: ~/.avb-study (mode 700)
    python -m study.cluster_auth auth-config FILE     # the head (cluster.yaml): MLflow's auth app settings
    python -m study.cluster_auth user                 # the head (cluster.yaml): the study's MLflow login
    python -m study.cluster_auth admin-password       # the head (ray attach): change the MLflow admin's password

`secrets` writes ray_token (the Ray cluster's token) and secrets.env (AVB_DB_URL, the PostgreSQL server's URL
with its password, for you to fill in; AVB_MLFLOW_ADMIN_PASSWORD and AVB_MLFLOW_PASSWORD, random), each mode
600, and never overwrites one. `cluster.yaml` syncs the folder to every node as ~/.avb-secrets. `auth-config`
writes the auth app's ini file (mode 600) with its user database from $AVB_MLFLOW_AUTH_DB. `user` makes the
MLflow user $MLFLOW_TRACKING_USERNAME with the password $MLFLOW_TRACKING_PASSWORD (created, or its password set),
logged in as the server's admin with $MLFLOW_AUTH_ADMIN_PASSWORD. Errors are one line and exit code 2.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REST_TIMEOUT_S = 120  # one call took 19-30+ s on 2 cores at load 10 (two studies beside the server)
SECRETS_DIR = "~/.avb-study"
SECRETS_TEMPLATE = """# avb-study cluster secrets (docs/security.md): mode 600, outside any checkout; never commit it.
# cluster.yaml syncs this folder to ~/.avb-secrets on every node; `ray up` stops while a value is empty.
# The PostgreSQL server, without a database name: postgresql+psycopg://USER:PASSWORD@HOST:5432
AVB_DB_URL=''
# The MLflow server's admin (used once, when its user database is new) and the study's own login (user "study").
AVB_MLFLOW_ADMIN_PASSWORD='{admin}'
AVB_MLFLOW_PASSWORD='{study}'
"""
AUTH_INI = """[mlflow]
# Written by `python -m study.cluster_auth auth-config` (cluster.yaml); see docs/security.md.
default_permission = READ
database_uri = {database_uri}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


class SetupError(RuntimeError):
    """One line: what is wrong and what to do."""


# ----------------------------------------------------------------------------- your machine
def write_private(path: Path, text: str) -> None:
    """A new file readable by its owner only, from its first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def make_secrets(folder: Path) -> list[str]:
    """The secrets folder with a new Ray token and a secrets.env to fill in; what exists is kept (mode fixed)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    done = []
    for name, text in (("ray_token", secrets.token_hex(32)),
                       ("secrets.env", SECRETS_TEMPLATE.format(admin=secrets.token_urlsafe(24),
                                                               study=secrets.token_urlsafe(24)))):
        path = folder / name
        if path.exists():
            path.chmod(0o600)
            done.append(f"kept {path} (mode 600)")
        else:
            write_private(path, text)
            done.append(f"wrote {path} (mode 600)")
    return done


# ----------------------------------------------------------------------------- the head
def write_auth_config(path: Path) -> None:
    database_uri = os.environ.get("AVB_MLFLOW_AUTH_DB", "")
    if not database_uri:
        raise SetupError("AVB_MLFLOW_AUTH_DB is empty: the auth app's user database (e.g. "
                         "postgresql+psycopg://USER:PASSWORD@HOST:5432/mlflow_auth, or sqlite:////ABS/auth.db)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    write_private(path, AUTH_INI.format(database_uri=database_uri.replace("%", "%%")))


def call(uri: str, login: tuple[str, str], method: str, path: str, body: dict | None = None) -> int:
    """One REST call to the MLflow server as `login`; its HTTP status."""
    token = base64.b64encode(":".join(login).encode()).decode()
    request = urllib.request.Request(uri.rstrip("/") + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except OSError as err:
        raise SetupError(f"the MLflow server {uri} is unreachable ({err}); is it running?") from None


def ensure_user(uri: str) -> str:
    """The study's MLflow user exists with the password of the environment; says what it did."""
    need = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD")
    missing = [name for name in need if not os.environ.get(name)]
    if missing:
        raise SetupError(f"{' and '.join(missing)} not set (cluster.yaml takes them from ~/.avb-secrets/secrets.env)")
    user, password = os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    admin = (os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"), os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"])
    status = call(uri, admin, "GET", "/api/2.0/mlflow/users/get?" + urllib.parse.urlencode({"username": user}))
    if status == 401:
        raise SetupError(f"the MLflow server {uri} refused the admin login: AVB_MLFLOW_ADMIN_PASSWORD is not the "
                         "admin's password (it only sets a new server's); see docs/security.md, rotation")
    if status not in (200, 404):
        raise SetupError(f"the MLflow server {uri} answered {status} to a user look-up")
    method, path, did = ("PATCH", "update-password", "password set") if status == 200 else \
        ("POST", "create", "created")
    status = call(uri, admin, method, f"/api/2.0/mlflow/users/{path}", {"username": user, "password": password})
    if status != 200:
        raise SetupError(f"the MLflow server {uri} answered {status} to {method} users/{path} for {user!r} "
                         "(passwords need at least 12 characters)")
    if call(uri, (user, password), "GET", "/api/2.0/mlflow/experiments/search?max_results=1") != 200:
        raise SetupError(f"the MLflow server {uri} does not accept the login of {user!r} just set")
    return f"MLflow user {user!r}: {did}"


def change_admin_password(uri: str) -> str:
    """The admin's password, changed on the server (the server reads AVB_MLFLOW_ADMIN_PASSWORD only once, when its
    user database is new): both passwords are asked for, never taken from the command line."""
    current = getpass.getpass("current MLflow admin password: ")
    new = getpass.getpass("new MLflow admin password (12 characters or more): ")
    if new != getpass.getpass("new password again: "):
        raise SetupError("the two new passwords differ; nothing changed")
    admin = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    status = call(uri, (admin, current), "PATCH", "/api/2.0/mlflow/users/update-password",
                  {"username": admin, "current_password": current, "password": new})
    if status == 401:
        raise SetupError(f"the MLflow server {uri} refused the current admin password; nothing changed")
    if status != 200:
        raise SetupError(f"the MLflow server {uri} answered {status} (a new password needs at least 12 characters "
                         "and must differ from the current one); nothing changed")
    return "admin password changed: now put it in ~/.avb-study/secrets.env (AVB_MLFLOW_ADMIN_PASSWORD)"


# ----------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.cluster_auth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("secrets", help=f"make the secrets folder (default: {SECRETS_DIR})")
    made.add_argument("--dir", default=SECRETS_DIR, help=f"the folder (default: {SECRETS_DIR})")
    config = commands.add_parser("auth-config", help="write MLflow's auth app settings ($AVB_MLFLOW_AUTH_DB)")
    config.add_argument("file", help="the ini file to write (mode 600); $MLFLOW_AUTH_CONFIG_PATH names it")
    user = commands.add_parser("user", help="create the study's MLflow user or set its password")
    admin = commands.add_parser("admin-password", help="change the MLflow admin's password (asks for both)")
    for command in (user, admin):
        command.add_argument("--uri", default="http://127.0.0.1:5000", help="the MLflow server (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        if args.command == "secrets":
            print("\n".join(make_secrets(Path(args.dir).expanduser())))
            print("next: set AVB_DB_URL in secrets.env, then ray up cluster.yaml (docs/cluster.md)")
        elif args.command == "auth-config":
            write_auth_config(Path(args.file).expanduser())
        elif args.command == "admin-password":
            print(change_admin_password(args.uri))
        else:
            print(ensure_user(args.uri))
    except (SetupError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
