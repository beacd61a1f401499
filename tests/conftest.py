"""Shared fixtures: real throwaway PostgreSQL clusters started by the test suite itself.

The machine's own PostgreSQL server is never used: every test talks to clusters made
here with initdb in a temp dir, on a free loopback port and a private socket directory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgvault import clients
from pgvault import cluster as clusters
from pgvault.connection import Conn, connect

# The S3-compatible server (moto) for the remote and attachments tests.
pytest_plugins = ["tests.s3server"]

HERE = Path(__file__).parent
# tests/fleet needs a Ray cluster and pgvault[ray]: `nox -s fleet` runs it, with
# PGVAULT_FLEET=1; it is never collected (nor counted as skipped) by `make test`.
collect_ignore_glob = [] if os.environ.get("PGVAULT_FLEET") == "1" else ["fleet/*"]
PASSWORD_USER = "pgvault_pw"
PASSWORD = "s3cret-Pa55"


@pytest.fixture(scope="session")
def server_programs():
    """Server programs for the test clusters (PGVAULT_TEST_BINDIR to choose)."""
    return clusters.server_programs(0, os.environ.get("PGVAULT_TEST_BINDIR"))


def _cluster(programs) -> Iterator[clusters.Cluster]:
    hba = [f"host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256"]
    with clusters.throwaway(programs, hba_first=hba, tcp=True) as c:
        with connect(c.conn(), autocommit=True) as pg:
            pg.execute(
                f"DO $$BEGIN CREATE ROLE {PASSWORD_USER} LOGIN SUPERUSER PASSWORD '{PASSWORD}';"
                " EXCEPTION WHEN duplicate_object THEN NULL; END$$"
            )
        yield c


@pytest.fixture(scope="session")
def pg_cluster(server_programs) -> Iterator[clusters.Cluster]:
    """The source cluster most tests back up from."""
    yield from _cluster(server_programs)


@pytest.fixture(scope="session")
def other_cluster(server_programs) -> Iterator[clusters.Cluster]:
    """A second, fresh cluster to restore into."""
    yield from _cluster(server_programs)


def create_database(c: clusters.Cluster, prefix: str = "db") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with connect(c.conn(), autocommit=True) as pg:
        pg.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_database(c: clusters.Cluster, name: str) -> None:
    with connect(c.conn(), autocommit=True) as pg:
        pg.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db(pg_cluster) -> Iterator[Conn]:
    """A new, empty database in pg_cluster, dropped afterwards."""
    name = create_database(pg_cluster)
    yield pg_cluster.conn(name)
    drop_database(pg_cluster, name)


def run_sql(conn: Conn, sql: str) -> None:
    with connect(conn, autocommit=True) as pg:
        pg.execute(sql)


def load_sql_file(conn: Conn, path: Path) -> None:
    """Load a SQL file with the real psql, as a user would."""
    psql = clusters.server_programs(0, os.environ.get("PGVAULT_TEST_BINDIR")).path("psql")
    subprocess.run(
        [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conn.conninfo, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def process_running(pid: int) -> bool:
    """Still running (Linux): not gone, and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def needs_tool(name: str) -> None:
    """Skip, naming what to install, on a machine without a compressor or crontab (only
    Python and make there: `bash .ci/run` installs them, and CI runs every test)."""
    if name != "none" and shutil.which(name) is None:
        pytest.skip(f"needs {name}: apt-get install {'cron' if name == 'crontab' else name}")


def needs_contrib(programs: clients.Programs) -> None:
    """Skip unless these server programs have the contrib extensions the feature-rich and
    Supabase fixtures use (a real Supabase has them; the embedded wheel does not)."""
    from pgvault.doctor import available_extensions

    have = available_extensions(programs) or set()
    lacking = sorted({"pgcrypto", "uuid-ossp"} - have)
    if lacking:
        pytest.skip(
            f"the fixture needs {', '.join(lacking)}, which {programs.describe()} lack: "
            "install the system's PostgreSQL (apt-get install postgresql)"
        )


@pytest.fixture(scope="session")
def feature_db(pg_cluster) -> Conn:
    """A database with many PostgreSQL features (tests/sql/feature_rich.sql). Read-only
    for tests: make a copy (CREATE DATABASE ... TEMPLATE) before changing it."""
    needs_contrib(pg_cluster.programs)
    name = create_database(pg_cluster, "feature")
    conn = pg_cluster.conn(name)
    load_sql_file(conn, HERE / "sql" / "feature_rich.sql")
    return conn


@pytest.fixture(scope="session")
def big_db(pg_cluster) -> Iterator[Conn]:
    """~70 MB of COPY data in one table, so a backup, restore or verify of it runs long
    enough to be interrupted. Read-only for tests."""
    name = create_database(pg_cluster, "big")
    conn = pg_cluster.conn(name)
    run_sql(
        conn,
        "CREATE TABLE ledger (id bigserial PRIMARY KEY, note text);"
        "INSERT INTO ledger (note)"
        " SELECT repeat(md5(i::text), 2) FROM generate_series(1, 900000) i;",
    )
    yield conn
    drop_database(pg_cluster, name)


def pgvault_env(conn: Conn | None = None, **extra: str) -> dict[str, str]:
    """An environment for running the real CLI against conn, with nothing from the
    machine's own PostgreSQL leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "BACKUP_DIR"))}
    env.pop("DATABASE_URL", None)
    if conn is not None:
        p = conn.params
        env.update(PGHOST=p["host"], PGPORT=p["port"], PGDATABASE=p["dbname"], PGUSER=p["user"])
    env.update(extra)
    return env


def run_pgvault(
    *args: str,
    env: dict[str, str],
    cwd: Path | None = None,
    timeout: float = 300,
    **kwargs: object,
) -> subprocess.CompletedProcess[str]:
    """Run the real command line: `python -m pgvault ARGS`."""
    return subprocess.run(
        [sys.executable, "-m", "pgvault", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[arg-type]
    )


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0, res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("pgvault: error: "), lines[0]
    assert "(" in lines[0] and lines[0].endswith(")"), "the line must carry a hint"
    return lines[0]


def plain_psql_restore(psql: str, conninfo: str, files: dict[str, Path]) -> None:
    """The seed's documented restore: one psql, one transaction, triggers off for data."""
    res = subprocess.run(
        [
            psql,
            "-X",
            "--single-transaction",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-f",
            str(files["roles"]),
            "-f",
            str(files["schema"]),
            "-c",
            "SET session_replication_role = replica",
            "-f",
            str(files["data"]),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


@pytest.fixture
def backup_dir(tmp_path) -> Path:
    return tmp_path / "backups"


@pytest.fixture
def tmp() -> Iterator[Path]:
    """A TMPDIR for verify's throwaway cluster that the postgres user can enter (pytest's
    own temp dirs are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="pgvault-test-tmp-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
