"""A throwaway PostgreSQL server for the tests that are about PostgreSQL (a pytest plugin: tests/conftest.py names it).

The session fixture finds Debian's server binaries (/usr/lib/postgresql/*/bin, installed by
scripts/install_system_deps.sh), runs initdb and pg_ctl in a temp dir as a non-root user (PostgreSQL refuses to run
as root: the `postgres` system user of the package, through runuser), listens on 127.0.0.1 at a free port, and
stops the server at the end of the session, also when tests fail. Each test gets its own empty database. Where
PostgreSQL cannot be installed or started the tests that need it are skipped, saying why.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SUPERUSER = "postgres"
PASSWORD_ROLE = "kobench_pw"  # a role that must give its password (scram), for the redaction tests
PASSWORD = "s3cret-Passw0rd"
# trust for the superuser on loopback (no secrets in the test URLs), a password for PASSWORD_ROLE
PG_HBA = f"""local all all trust
host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
"""


@dataclass
class PgServer:
    host: str
    port: int
    bindir: Path

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str | None = None) -> str:
        auth = f"{user}:{password}" if password else user
        return f"postgresql+psycopg://{auth}@{self.host}:{self.port}/{database}"

    def execute(self, statement: str, database: str = "postgres") -> None:
        """One statement in autocommit (CREATE/DROP DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER, dbname=database,
                             autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self) -> str:
        name = f"kobench_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def find_bindir() -> Path | None:
    """The newest Debian PostgreSQL server bin directory, else wherever initdb is on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_server_user(args: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *args] if user else args


def _start(bindir: Path) -> tuple[PgServer, Callable[[], None]]:
    """initdb + pg_ctl start; returns the server and its stop function. Raises RuntimeError with the reason."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise RuntimeError("psycopg is not installed (pip install -e '.[postgres]')") from None
    user = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise RuntimeError("running as root and there is no 'postgres' system user to run the server as "
                               "(install the postgresql package: scripts/install_system_deps.sh)") from None
        if not shutil.which("runuser"):
            raise RuntimeError("running as root and `runuser` is missing, so the server cannot run as postgres")
        user = SUPERUSER
    base = Path(tempfile.mkdtemp(prefix="kobench-pg-"))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(base, entry.pw_uid, entry.pw_gid)
    data = base / "data"
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}

    def run(args: list[str]) -> None:
        proc = subprocess.run(_as_server_user(args, user), capture_output=True, text=True, env=env, timeout=120)
        if proc.returncode != 0:
            log = (base / "server.log").read_text(errors="replace") if (base / "server.log").exists() else ""
            raise RuntimeError(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-500:]} "
                               f"{log[-500:]}")

    def stop() -> None:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                                            "stop"], user), capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)

    try:
        run([str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "-E", "UTF8", "--locale=C.UTF-8",
             "--auth=trust", "--no-sync"])
        (data / "pg_hba.conf").write_text(PG_HBA)
        # speed over durability: the cluster is thrown away after the session
        options = (f"-k {base} -p {port} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off "
                   "-c full_page_writes=off -c max_connections=200")
        run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-o", options, "-w",
             "-t", "60", "start"])
    except Exception:
        stop()
        raise
    server = PgServer(host="127.0.0.1", port=port, bindir=bindir)
    server.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")
    return server, stop


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """A PostgreSQL server on 127.0.0.1 for the whole session (skips the test where there is none)."""
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb); run "
                    "scripts/install_system_deps.sh as root to install it")
    try:
        server, stop = _start(bindir)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot start a PostgreSQL server from {bindir}: {exc}")
    atexit.register(stop)  # also when the session ends without running fixture teardown
    try:
        yield server
    finally:
        stop()


@pytest.fixture()
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """An empty database of its own for one test, as a kobench --db URL; dropped afterwards."""
    name = pg_server.create_database()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.drop_database(name)
