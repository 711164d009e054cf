"""A real, private PostgreSQL server for the test session.

The session-scoped fixture ``postgres`` starts one server from the system's
binaries (Debian: /usr/lib/postgresql/VERSION/bin) in a temporary data
directory, listening on a free TCP port of 127.0.0.1 only, with password
authentication (scram-sha-256) like a managed database. Each test asks it for
its own fresh database::

    def test_something(postgres):
        mlflow_url = postgres.create_database("mlflow")   # postgresql+psycopg://avb:...@127.0.0.1:PORT/mlflow_1
        optuna_url = postgres.create_database("optuna")   # a SEPARATE database: both keep an alembic_version table

How it starts, in order:

- binaries: ``$AVB_PG_BINDIR`` if set, else the newest /usr/lib/postgresql/*/bin,
  else ``initdb`` on PATH. None found, running as root with apt-get: Debian's
  ``postgresql`` package is installed once (the commands are printed). None
  found and no way to install them (not root, or no apt-get): the tests that
  use the fixture are skipped, with the reason. Any other failure is an error.
- initdb and pg_ctl refuse to run as root, so as root they (and the server)
  run as the ``postgres`` OS user, which Debian's package creates.
- The server is stopped (``pg_ctl stop -m fast``) and its directory removed at
  the end of the session, also when tests fail; an atexit hook stops it if the
  session ends without running fixture teardown. A SIGKILLed pytest leaves it
  running: stop it with ``pg_ctl -D /tmp/avb-pg-*/data stop`` (as postgres).
"""

from __future__ import annotations

import atexit
import fcntl
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

USER = "avb"  # the server's superuser, as in docs/cluster.md
SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "200",  # an MLflow server (4 workers, each with a connection pool) + Optuna + tests
    # A throw-away server: durability off, for speed on a small shared machine.
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "logging_collector": "off",
}
START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """The server failed to start (the reason says why)."""


class PostgresNotInstalled(PostgresUnavailable):
    """No server binaries, and no way to install them here."""


class PostgresServer:
    """A running private server. ``create_database(prefix)`` returns the
    SQLAlchemy URL of a new, empty database on it."""

    def __init__(self, bindir: Path, base: Path, run_as: pwd.struct_passwd | None):
        self.bindir = bindir
        self.base = base  # the temporary directory: data/, socket, log, password file
        self.datadir = base / "data"
        self.logfile = base / "server.log"
        self.run_as = run_as
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.user = USER
        self.password = secrets.token_hex(16)  # URL-safe, no quoting needed
        self._count = 0
        self._running = False

    # -- URLs ----------------------------------------------------------------

    def url(self, dbname: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{dbname}"

    @property
    def admin_url(self) -> str:
        """The maintenance database ``postgres`` (do not store anything there)."""
        return self.url("postgres")

    def create_database(self, prefix: str = "db") -> str:
        """Create an empty database named PREFIX_N (unique in this session) and
        return its URL ``postgresql+psycopg://USER:PASS@127.0.0.1:PORT/PREFIX_N``."""
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,40}", prefix):
            raise ValueError(f"database prefix must match [a-z_][a-z0-9_]*, got {prefix!r}")
        import psycopg
        from psycopg import sql

        self._count += 1
        name = f"{prefix}_{self._count}"
        with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def _conninfo(self, dbname: str) -> str:
        return f"host={self.host} port={self.port} user={self.user} password={self.password} dbname={dbname}"

    # -- life cycle ----------------------------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a PostgreSQL program, as the postgres OS user when we are root."""
        kwargs = {}
        if self.run_as is not None:
            kwargs = dict(user=self.run_as.pw_uid, group=self.run_as.pw_gid, extra_groups=[])
        env = dict(os.environ, LC_ALL="C", LANG="C", HOME=str(self.base))
        env.pop("PGDATA", None)
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], cwd=self.base, env=env, capture_output=True,
                              text=True, timeout=timeout, **kwargs)

    def init(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        result = self._run("initdb", "-D", str(self.datadir), "-U", self.user, f"--pwfile={pwfile}",
                           "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync")
        pwfile.unlink()
        if result.returncode != 0:
            raise PostgresUnavailable(f"initdb failed (rc {result.returncode}): {result.stderr.strip()[-2000:]}")
        settings = dict(SERVER_SETTINGS, unix_socket_directories=f"'{self.base}'")
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# tests/postgres.py\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))

    def start(self) -> None:
        last = ""
        for _ in range(3):  # a free port can be taken between choosing and binding it
            self.port = free_port()
            result = self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w",
                               "-t", str(START_TIMEOUT_S), "-o", f"-p {self.port}", "start",
                               timeout=START_TIMEOUT_S + 30)
            if result.returncode == 0:
                self._running = True
                atexit.register(self.stop)
                return
            last = f"{result.stdout.strip()} {result.stderr.strip()}\n{self.log_tail()}"
            if "could not bind" not in last and "already in use" not in last:
                break
        raise PostgresUnavailable(f"pg_ctl start failed: {last.strip()[-3000:]}")

    def stop(self) -> None:
        if not (self._running or (self.datadir / "postmaster.pid").exists()):
            return
        result = self._run("pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "60", "stop", timeout=90)
        if result.returncode != 0:  # clients that hang on: stop hard rather than leave a server behind
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop", timeout=60)
        self._running = False

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def _own(self, path: Path) -> None:
        if self.run_as is not None:
            os.chown(path, self.run_as.pw_uid, self.run_as.pw_gid)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bindir() -> Path | None:
    override = os.environ.get("AVB_PG_BINDIR")
    if override:
        return Path(override)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: _version(Path(p).parents[1].name))
    if debian:
        return Path(debian[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _version(text: str) -> tuple:
    return tuple(int(x) if x.isdigit() else 0 for x in text.split("."))


def apt_install_postgresql(say) -> None:
    """Install Debian's postgresql package (root only). Raises PostgresUnavailable on failure."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    say("postgres fixture: no PostgreSQL server binaries found; installing Debian's postgresql package")
    for cmd in (["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"],
                ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends",
                 "postgresql"]):
        say("postgres fixture: running: " + " ".join(cmd))
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise PostgresUnavailable(f"`{' '.join(cmd)}` failed (rc {result.returncode}): "
                                      f"{(result.stdout + result.stderr).strip()[-2000:]}")
    say("postgres fixture: installed Debian's postgresql package "
        "(it may also have created and started its own cluster 'main' on port 5432; the tests do not use it)")


def _world_traversable(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in [path, *path.parents])


def start_server(say=print) -> PostgresServer:
    """Start a private server, installing the binaries first if needed and
    possible. Raises PostgresUnavailable when it truly cannot start."""
    is_root = os.geteuid() == 0
    bindir = find_bindir()
    if bindir is None:
        if not is_root or shutil.which("apt-get") is None:
            raise PostgresNotInstalled(
                "no PostgreSQL server binaries (initdb, pg_ctl) found and cannot install them "
                f"({'not root' if not is_root else 'no apt-get'}); install PostgreSQL "
                "(Debian: apt-get install postgresql) or set AVB_PG_BINDIR")
        with open(Path(tempfile.gettempdir()) / "avb-tests-apt.lock", "w") as lock:  # pytest-xdist: one at a time
            fcntl.flock(lock, fcntl.LOCK_EX)
            if find_bindir() is None:  # another test worker may have installed it meanwhile
                apt_install_postgresql(say)
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable("postgresql installed, but no initdb under /usr/lib/postgresql/*/bin")

    run_as = None
    if is_root:  # initdb and postgres refuse to run as root
        try:
            run_as = pwd.getpwnam("postgres")
        except KeyError:
            run_as = pwd.getpwnam("nobody")

    # The server user must reach its directory: as root, pick a parent every user can traverse.
    parent = Path(tempfile.gettempdir())
    if run_as is not None and not _world_traversable(parent):
        parent = Path("/tmp")
    base = Path(tempfile.mkdtemp(prefix="avb-pg-", dir=parent))
    server = PostgresServer(bindir, base, run_as)
    try:
        server._own(base)
        server.init()
        server.start()
    except BaseException:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    # Captured by pytest: shown with the report of a failing test that used the server.
    print(f"postgres fixture: PostgreSQL ({bindir}) on {server.host}:{server.port}, data in {server.datadir}")
    return server


@contextmanager
def _uncaptured(config):
    """Let the fixture's messages reach the terminal despite pytest's capture."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


@pytest.fixture(scope="session")
def postgres(request):
    """A real PostgreSQL server for the whole test session; see the module docstring."""

    def say(message: str) -> None:
        with _uncaptured(request.config):
            print(message, file=sys.stderr, flush=True)

    try:
        server = start_server(say)
    except PostgresNotInstalled as err:
        pytest.skip(f"PostgreSQL cannot start here: {err}")
    # Any other failure (binaries present or installable, but the server did not
    # start) is an error, never a skip.
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.base, ignore_errors=True)
