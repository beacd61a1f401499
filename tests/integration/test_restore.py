"""`pgvault restore` against real throwaway clusters: a backup of the feature-rich database
replaces empty and busy databases exactly; every failure, refusal and interruption leaves
the target (roles included) exactly as it was; policies and confirmation are obeyed."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from psycopg import sql

from pgvault import naming
from pgvault import restore as restore_module
from pgvault.cluster import Cluster, free_port
from pgvault.connection import Conn, connect
from tests.conftest import (
    PASSWORD,
    PASSWORD_USER,
    create_database,
    drop_database,
    needs_tool,
    pgvault_env,
    run_pgvault,
    run_sql,
)
from tests.fidelity import diff, fingerprint
from tests.integration.test_backup import digest, one_line_error, sets_in

PROBE_ROLE = "restore_probe"  # only in the backups: a failed restore must not create it
BYSTANDER = "restore_bystander"  # only in the target's cluster: a restore leaves it alone

# What an application's database may hold that the backup does not: objects in and out of
# schemas, an extension the backup also has, a table where the backup has one of the same
# name, large objects, and database-wide objects (an event trigger that forbids DDL).
BUSY_SQL = f"""
CREATE EXTENSION pg_trgm;
CREATE EXTENSION hstore;
CREATE SCHEMA crm;
CREATE TABLE crm.companies (id int PRIMARY KEY, legacy text);
INSERT INTO crm.companies SELECT i, 'old ' || i FROM generate_series(1, 50) i;
CREATE SCHEMA leftover;
CREATE TABLE leftover.notes (id serial PRIMARY KEY, body text, doc oid);
INSERT INTO leftover.notes (body, doc) VALUES ('stale', lo_from_bytea(0, 'stale object'));
CREATE TABLE leftover.owned (x int);
ALTER TABLE leftover.owned OWNER TO {BYSTANDER};
CREATE TABLE public.stale AS SELECT generate_series(1, 10) AS id;
CREATE FUNCTION public.stale_fn() RETURNS int LANGUAGE sql AS 'SELECT 1';
COMMENT ON SCHEMA public IS 'changed by the application';
REVOKE ALL ON SCHEMA public FROM PUBLIC;
CREATE CAST (int8 AS bool) WITH INOUT;
CREATE FOREIGN DATA WRAPPER stale_fdw;
CREATE SERVER stale_server FOREIGN DATA WRAPPER stale_fdw;
CREATE PUBLICATION stale_pub FOR TABLE leftover.notes;
ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC;
CREATE FUNCTION public.no_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
    $$BEGIN RAISE EXCEPTION 'no DDL in this database'; END$$;
CREATE EVENT TRIGGER no_ddl ON ddl_command_start EXECUTE FUNCTION public.no_ddl();
"""

# Database-wide objects tests/fidelity.py does not look at.
EXTRA_QUERIES = {
    "casts": """SELECT castsource::regtype::text, casttarget::regtype::text FROM pg_cast c
        WHERE oid >= 16384 AND NOT EXISTS (SELECT FROM pg_depend d
            WHERE d.classid = 'pg_cast'::regclass AND d.objid = c.oid AND d.deptype = 'e')""",
    "fdws": "SELECT fdwname FROM pg_foreign_data_wrapper",
    "servers": "SELECT srvname FROM pg_foreign_server",
    "publications": "SELECT pubname FROM pg_publication",
    "event_triggers": "SELECT evtname, evtevent, evtenabled FROM pg_event_trigger",
    "default_acls": """SELECT defaclrole::regrole::text, defaclnamespace::regnamespace::text,
        defaclobjtype, defaclacl::text FROM pg_default_acl""",
}


def full_fingerprint(conn: Conn) -> dict[str, Any]:
    """tests/fidelity's fingerprint (cluster roles included) and the objects above."""
    fp = fingerprint(conn)
    with connect(conn, autocommit=True) as pg:
        for key, sql in EXTRA_QUERIES.items():
            fp[key] = sorted(tuple(str(v) for v in r) for r in pg.execute(sql).fetchall())
    return fp


def backed_up_roles_only(fp: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """The clusters differ in roles the tests made: keep the roles a set names."""
    out = dict(fp)
    out["roles"] = [r for r in fp["roles"] if r[0] in names]
    out["memberships"] = [m for m in fp["memberships"] if m[0] in names and m[1] in names]
    out["shared_comments"] = [c for c in fp["shared_comments"] if c[0][5:] in names]
    return out


def database_only(fp: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fp.items() if k not in ("roles", "memberships", "shared_comments")}


def roles_of(conn: Conn, name: str) -> list[tuple[str, ...]]:
    """A role's attributes and memberships, either way."""
    fp = fingerprint(conn)
    return [r for r in fp["roles"] if r[0] == name] + [
        m for m in fp["memberships"] if name in m[:2]
    ]


@dataclass(frozen=True)
class SourceSet:
    directory: Path
    prefix: str
    manifest: dict[str, Any]
    fingerprint: dict[str, Any]

    def copy_to(self, directory: Path) -> Path:
        """A private copy of the set, to edit or to let a safety backup write beside."""
        directory.mkdir(parents=True, exist_ok=True)
        for p in self.directory.glob(f"{self.prefix}-*"):
            shutil.copy(p, directory / p.name)
        return directory

    def expected(self) -> dict[str, Any]:
        return backed_up_roles_only(self.fingerprint, self.manifest["roles"])


def manifest_path(directory: Path, prefix: str) -> Path:
    return directory / naming.file_name(prefix, "manifest")


def reseal(directory: Path, prefix: str, **changes: Any) -> None:
    """After editing a set's files: record their new sizes and checksums (and changes)."""
    path = manifest_path(directory, prefix)
    m = json.loads(path.read_text())
    for entry in m["files"].values():
        data = (directory / entry["name"]).read_bytes()
        entry.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    m.update(changes)
    path.write_text(json.dumps(m))


def backup(conn: Conn, directory: Path, *args: str, compare: bool = True) -> SourceSet:
    """A set of conn's database in directory, with conn's fingerprint to compare with."""
    res = run_pgvault("backup", f"dir={directory}", "quiet=true", *args, env=pgvault_env(conn))
    assert res.returncode == 0, res.stderr
    (path,) = directory.glob("*-manifest.json")
    m = json.loads(path.read_text())
    return SourceSet(directory, m["prefix"], m, full_fingerprint(conn) if compare else {})


def restore(
    conn: Conn, directory: Path, prefix: str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """`pgvault restore` with conn as the configured target."""
    return run_pgvault(
        "restore", f"dir={directory}", f"prefix={prefix}", *args, env=pgvault_env(conn, **env)
    )


def run_on_terminal(*args: str, env: dict[str, str], answer: str) -> subprocess.CompletedProcess:
    """The real CLI with a terminal (a pty) as stdin, typing answer and Enter."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgvault", *args],
            env=env,
            stdin=follower,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        os.close(follower)
    try:
        os.write(leader, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(leader)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def copy_database(c: Cluster, template: str, prefix: str) -> Conn:
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with connect(c.conn(), autocommit=True) as pg:
        pg.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return c.conn(name)


def database_exists(c: Cluster, name: str) -> bool:
    with connect(c.conn(), autocommit=True) as pg:
        row = pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feature_set(feature_db, pg_cluster, other_cluster, tmp_path_factory):
    """One backup of the feature-rich database (and a role only it has), shared read-only."""
    run_sql(pg_cluster.conn(), f"CREATE ROLE {PROBE_ROLE} NOLOGIN CONNECTION LIMIT 3")
    try:
        yield backup(feature_db, tmp_path_factory.mktemp("feature-set"))
    finally:
        for c in (pg_cluster, other_cluster):
            run_sql(c.conn(), f"DROP ROLE IF EXISTS {PROBE_ROLE}")


@pytest.fixture(scope="module")
def busy_template(other_cluster):
    """A template database in the cluster restores go into, holding BUSY_SQL, and a
    neighbour database a restore must not touch."""
    run_sql(
        other_cluster.conn(),
        f"CREATE ROLE {BYSTANDER} NOLOGIN CONNECTION LIMIT 9;"
        "DO $$BEGIN CREATE ROLE crm_group NOLOGIN;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END$$;"
        f"GRANT crm_group TO {BYSTANDER};",
    )
    name = create_database(other_cluster, "busy_template")
    run_sql(other_cluster.conn(name), BUSY_SQL)
    neighbour = create_database(other_cluster, "neighbour")
    run_sql(other_cluster.conn(neighbour), "CREATE TABLE t AS SELECT 1 AS x")
    try:
        yield name, other_cluster.conn(neighbour)
    finally:
        drop_database(other_cluster, name)
        drop_database(other_cluster, neighbour)
        run_sql(other_cluster.conn(), f"DROP OWNED BY {BYSTANDER}; DROP ROLE {BYSTANDER}")


@pytest.fixture
def busy_db(other_cluster, busy_template, feature_set):
    """A fresh copy of the busy database. Roles differ from the backup's both ways: the
    probe role is missing and crm_reader has other attributes, so a restore that kept any
    of its role changes shows in the cluster's roles."""
    run_sql(
        other_cluster.conn(),
        f"DROP ROLE IF EXISTS {PROBE_ROLE};"
        "DO $$BEGIN CREATE ROLE crm_reader; EXCEPTION WHEN duplicate_object THEN NULL; END$$;"
        "ALTER ROLE crm_reader NOLOGIN CONNECTION LIMIT 42;",
    )
    conn = copy_database(other_cluster, busy_template[0], "busy")
    yield conn
    drop_database(other_cluster, conn.dbname)


@pytest.fixture
def empty_target(other_cluster):
    name = create_database(other_cluster, "empty")
    yield other_cluster.conn(name)
    drop_database(other_cluster, name)


@pytest.fixture(scope="module")
def big_set(big_db, feature_set, tmp_path_factory):
    """A set with ~70 MB of COPY data, so a restore runs long enough to be interrupted."""
    return backup(big_db, tmp_path_factory.mktemp("big-set"), compare=False)


# --- round trips ---------------------------------------------------------------------


def test_restores_into_an_empty_database_after_a_yes(feature_set, empty_target):
    before = digest(feature_set.directory)
    res = run_on_terminal(
        "restore",
        f"dir={feature_set.directory}",
        f"prefix={feature_set.prefix}",
        "restore.safety_backup=false",
        env=pgvault_env(empty_target),
        answer="y",
    )
    assert res.returncode == 0, res.stderr
    assert re.search(r"Replace database \S+ at \S+ with backup-[-\d]+\? \(y/N\)", res.stdout)
    assert "✓ Restore completed successfully!" in res.stdout and "Safety backup" not in res.stdout
    assert digest(feature_set.directory) == before  # safety_backup=false: no new set
    restored = backed_up_roles_only(full_fingerprint(empty_target), feature_set.manifest["roles"])
    assert diff(feature_set.expected(), restored) == []
    source = feature_set.fingerprint
    # The audit trigger did not fire while the data loaded: exactly the source's rows.
    assert restored["tables"]["audit.log"] == source["tables"]["audit.log"]
    assert restored["tables"]["crm.deal_totals"][0] > 0  # the materialized view is populated
    assert ("crm.contacts_id_seq", "1000", "1", "1") in restored["sequences"]
    assert len(restored["large_objects"]) == 2
    # Constraints and triggers are in force afterwards.
    with connect(empty_target, autocommit=True) as pg:
        insert = "INSERT INTO crm.deals (company_id, amount, closed_on) VALUES (%s, %s, %s)"
        with pytest.raises(Exception, match="violates foreign key constraint"):
            pg.execute(insert, (9999, 1, "2024-05-01"))
        with pytest.raises(Exception, match="violates check constraint"):
            pg.execute(insert, (1, -1, "2024-05-01"))
        pg.execute("UPDATE crm.contacts SET first_name = 'x' WHERE id = 1")
        (logged,) = pg.execute("SELECT count(*) FROM audit.log").fetchone()
    assert logged == source["tables"]["audit.log"][0] + 1


def test_replaces_a_busy_database_after_a_safety_backup(
    feature_set, busy_db, busy_template, other_cluster, tmp_path
):
    directory = feature_set.copy_to(tmp_path / "backups")
    neighbour = busy_template[1]
    busy_before = full_fingerprint(busy_db)
    neighbour_before = database_only(full_fingerprint(neighbour))
    bystander_before = roles_of(busy_db, BYSTANDER)
    assert bystander_before and busy_before["tables"]["leftover.notes"][0] == 1

    res = restore(busy_db, directory, feature_set.prefix, "yes=true")
    assert res.returncode == 0, res.stderr
    restored = full_fingerprint(busy_db)
    roles = feature_set.manifest["roles"]
    assert diff(feature_set.expected(), backed_up_roles_only(restored, roles)) == []
    for key in EXTRA_QUERIES:
        assert restored[key] == [], key
    assert diff(neighbour_before, database_only(full_fingerprint(neighbour))) == []
    assert roles_of(busy_db, BYSTANDER) == bystander_before

    # The safety backup: a new complete set, named in the output, of the old database.
    (safety,) = set(sets_in(directory)) - {feature_set.prefix}
    assert f"✓ Safety backup of {busy_db.dbname}: {safety} (in {directory})" in res.stdout
    assert len(sets_in(directory)[safety]) == 4
    safety_manifest = json.loads(manifest_path(directory, safety).read_text())
    assert safety_manifest["database"] == busy_db.dbname
    assert safety_manifest["tables"]["leftover.notes"]["rows"] == 1
    # ... and restoring it brings the old database back, event trigger and all.
    res = restore(busy_db, directory, safety, "yes=true", "restore.safety_backup=false")
    assert res.returncode == 0, res.stderr
    assert diff(database_only(busy_before), database_only(full_fingerprint(busy_db))) == []
    assert set(sets_in(directory)) == {feature_set.prefix, safety}


def test_a_set_from_a_newer_pg_dump_restores(feature_set, empty_target, tmp_path):
    """pg_dump 17 writes `SET transaction_timeout = 0;` into each output, which servers
    before 17 reject: the restore drops it for them."""
    directory = feature_set.copy_to(tmp_path / "backups")
    prefix = feature_set.prefix
    setting = b"SET statement_timeout = 0;\n"
    newer = setting + b"SET transaction_timeout = 0;\n"
    schema = directory / naming.file_name(prefix, "schema")
    data = directory / naming.file_name(prefix, "data")
    offset = feature_set.manifest["schema_post_data_offset"]
    text = schema.read_bytes()
    pre, post = text[:offset].replace(setting, newer), text[offset:].replace(setting, newer)
    schema.write_bytes(pre + post)
    data.write_bytes(data.read_bytes().replace(setting, newer, 1))
    reseal(directory, prefix, schema_post_data_offset=len(pre))
    assert (pre + post + data.read_bytes()).count(b"SET transaction_timeout = 0;") == 3

    # Also: the absolute form of prefix= (no dir=), and restore.confirm=never (no yes=true).
    res = run_pgvault(
        "restore", f"prefix={directory / prefix}", "restore.confirm=never",
        "restore.safety_backup=false", env=pgvault_env(empty_target),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"Backup directory: {directory}\n" in res.stdout
    restored = backed_up_roles_only(full_fingerprint(empty_target), feature_set.manifest["roles"])
    assert diff(feature_set.expected(), restored) == []


def test_a_compressed_set_restores_and_a_truncated_one_changes_nothing(
    feature_db, feature_set, empty_target, tmp_path
):
    needs_tool("zstd")
    source = backup(feature_db, tmp_path / "zstd", "compression=zstd")
    assert source.manifest["compression"] == "zstd"
    res = restore(empty_target, source.directory, source.prefix, "yes=true")
    assert res.returncode == 0, res.stderr
    restored = full_fingerprint(empty_target)
    roles = feature_set.manifest["roles"]
    assert diff(feature_set.expected(), backed_up_roles_only(restored, roles)) == []

    data = source.directory / naming.file_name(source.prefix, "data", "zstd")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    res = restore(empty_target, source.directory, source.prefix, "yes=true", "force=true")
    line = res.stderr.strip().splitlines()[-1]
    assert res.returncode != 0 and "pgvault: warning: " in res.stderr
    assert f"restore failed, {empty_target.dbname} is unchanged: zstd failed" in line
    assert diff(restored, full_fingerprint(empty_target)) == []


def test_restores_into_a_new_database_given_by_url(feature_set, other_cluster):
    name = f"created_{uuid.uuid4().hex[:10]}"
    url = f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{other_cluster.port}/{name}"
    before = digest(feature_set.directory)
    res = restore(
        other_cluster.conn(),
        feature_set.directory,
        feature_set.prefix,
        "yes=true",
        f"restore.target={url}",
        "restore.create_database=true",
    )
    try:
        assert res.returncode == 0, res.stderr
        assert f"Target: database {name} at 127.0.0.1:{other_cluster.port} (new)" in res.stdout
        assert PASSWORD not in res.stdout + res.stderr
        assert digest(feature_set.directory) == before  # nothing to keep a safety copy of
        restored = full_fingerprint(other_cluster.conn(name))
        roles = feature_set.manifest["roles"]
        assert diff(feature_set.expected(), backed_up_roles_only(restored, roles)) == []
    finally:
        drop_database(other_cluster, name)


def test_force_restores_a_set_whose_checksum_differs(feature_set, empty_target, tmp_path):
    directory = feature_set.copy_to(tmp_path / "backups")
    data = directory / naming.file_name(feature_set.prefix, "data")
    text = data.read_bytes()
    data.write_bytes(text.replace(b"database dump\n", b"database dumq\n"))  # same size
    before = full_fingerprint(empty_target)
    line = one_line_error(restore(empty_target, directory, feature_set.prefix, "yes=true"))
    assert "does not match its sha256" in line and "force=true" in line
    assert full_fingerprint(empty_target) == before

    res = restore(
        empty_target, directory, feature_set.prefix, "yes=true", "force=true",
        "restore.safety_backup=false",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stderr.startswith("pgvault: warning: ") and "sha256" in res.stderr
    restored = backed_up_roles_only(full_fingerprint(empty_target), feature_set.manifest["roles"])
    assert diff(feature_set.expected(), restored) == []


# --- failures leave the target as it was -----------------------------------------------

BAD = b"SELECT pgvault_no_such_function();\n"


def _append(kind: str, text: bytes = BAD):
    def edit(directory: Path, prefix: str) -> None:
        with open(directory / naming.file_name(prefix, kind), "ab") as f:
            f.write(text)

    return edit


def _end_of_pre_data(directory: Path, prefix: str) -> None:
    m = json.loads(manifest_path(directory, prefix).read_text())
    schema = directory / naming.file_name(prefix, "schema")
    text, offset = schema.read_bytes(), m["schema_post_data_offset"]
    schema.write_bytes(text[:offset] + BAD + text[offset:])
    reseal(directory, prefix, schema_post_data_offset=offset + len(BAD))


def _bad_row(directory: Path, prefix: str) -> None:
    data = directory / naming.file_name(prefix, "data")
    header = b"COPY crm.deals_2025 "
    text = data.read_bytes()
    start = text.index(b"\n", text.index(header)) + 1
    end = text.index(b"\n", start)
    # Replace a row (not add one), so the row count still agrees and psql must catch it.
    data.write_bytes(text[:start] + b"not a number" + text[end:])


def _cut(marker: bytes, inside: int):
    """Cut the data file `inside` bytes after marker (and say so only via force=true)."""

    def edit(directory: Path, prefix: str) -> None:
        data = directory / naming.file_name(prefix, "data")
        text = data.read_bytes()
        data.write_bytes(text[: text.rindex(marker) + inside])

    return edit


FAILURES = {
    # name: (edit the set, reseal the manifest, what the error says)
    "roles": (_append("roles"), True, "pgvault_no_such_function"),
    "pre-data": (_end_of_pre_data, True, "pgvault_no_such_function"),
    "post-data": (_append("schema"), True, "pgvault_no_such_function"),
    "copy row": (_bad_row, True, "invalid input syntax"),
    "after the large objects": (_append("data"), True, "pgvault_no_such_function"),
    "truncated in COPY data": (_cut(b"COPY crm.deals_2025 ", 4000), False, "crm.deals_2025"),
    # Cut between two tables with the manifest resealed: only the row counts can tell.
    "cut between tables": (_cut(b"COPY crm.deals_2025 ", 0), True, "crm.deals_2025 has no rows"),
    "truncated in a statement": (
        _cut(b"SELECT pg_catalog.lowrite(0, '\\x", 100),
        False,
        "syntax error",  # the string ends at the next quote, in post-data
    ),
}


@pytest.mark.parametrize("case", FAILURES)
def test_a_failure_anywhere_leaves_the_target_as_it_was(case, feature_set, busy_db, tmp_path):
    edit, seal, expected = FAILURES[case]
    directory = feature_set.copy_to(tmp_path / "backups")
    edit(directory, feature_set.prefix)
    if seal:
        reseal(directory, feature_set.prefix)
    before = full_fingerprint(busy_db)
    res = restore(
        busy_db, directory, feature_set.prefix, "yes=true", "restore.safety_backup=false",
        *([] if seal else ["force=true"]),
    )  # fmt: skip
    *warnings, line = res.stderr.strip().splitlines()
    assert res.returncode != 0 and "Restore completed" not in res.stdout
    assert all(w.startswith("pgvault: warning: ") for w in warnings), res.stderr
    assert bool(warnings) != seal  # only force=true warns
    assert line.startswith(f"pgvault: error: restore failed, {busy_db.dbname} is unchanged: ")
    assert expected in line and line.endswith(")") and ") (" not in line  # one hint
    assert diff(before, full_fingerprint(busy_db)) == []


def test_a_failed_restore_drops_the_database_it_created(feature_set, other_cluster, tmp_path):
    directory = feature_set.copy_to(tmp_path / "backups")
    _append("data")(directory, feature_set.prefix)
    reseal(directory, feature_set.prefix)
    name = f"created_{uuid.uuid4().hex[:10]}"
    res = restore(
        other_cluster.conn(), directory, feature_set.prefix, "yes=true",
        f"restore.target={name}", "restore.create_database=true",
    )  # fmt: skip
    line = one_line_error(res)
    assert f"the new database {name} was dropped again" in line
    assert not database_exists(other_cluster, name)


def _start_restore(conn: Conn, source: SourceSet) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "pgvault", "restore", f"dir={source.directory}",
            f"prefix={source.prefix}", "yes=true", "restore.safety_backup=false",
        ],
        env=pgvault_env(conn),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a shell job has
    )  # fmt: skip


def _wait_for_copy(c: Cluster, dbname: str, proc: subprocess.Popen[str], size: int) -> None:
    """Wait until the restore's COPY into dbname has taken in more than size bytes."""
    deadline = time.monotonic() + 120
    with connect(c.conn(), autocommit=True) as pg:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            row = pg.execute(
                "SELECT coalesce(max(bytes_processed), 0) FROM pg_stat_progress_copy p"
                " JOIN pg_database d ON d.oid = p.datid WHERE d.datname = %s",
                (dbname,),
            ).fetchone()
            if row is not None and row[0] > size:
                return
            time.sleep(0.02)
    raise AssertionError("the restore never got to the data")


def _wait_until_gone(c: Cluster, dbname: str) -> None:
    """Wait until no pgvault session is connected to dbname (psql may outlive pgvault)."""
    deadline = time.monotonic() + 120
    with connect(c.conn(), autocommit=True) as pg:
        while time.monotonic() < deadline:
            row = pg.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND application_name = 'pgvault'",
                (dbname,),
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)
    raise AssertionError(f"a restore session into {dbname} does not end")


@pytest.mark.parametrize("how", ["kill -9", "kill", "Ctrl-C", "lost connection"])
def test_an_interrupted_restore_leaves_the_target_as_it_was(how, big_set, busy_db, other_cluster):
    before = full_fingerprint(busy_db)
    proc = _start_restore(busy_db, big_set)
    try:
        _wait_for_copy(other_cluster, busy_db.dbname, proc, 8 << 20)
        if how == "kill -9":
            proc.send_signal(signal.SIGKILL)  # pgvault alone: psql reads the end of its input
        elif how == "kill":
            proc.send_signal(signal.SIGTERM)
        elif how == "Ctrl-C":
            os.killpg(proc.pid, signal.SIGINT)  # the whole job, as a terminal does
        else:
            run_sql(
                other_cluster.conn(),
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                f" WHERE datname = '{busy_db.dbname}' AND application_name = 'pgvault'",
            )
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    if how in ("Ctrl-C", "kill"):
        assert res.returncode == 130
        assert "interrupted" in one_line_error(res)
    elif how == "lost connection":
        line = one_line_error(res)
        assert f"{busy_db.dbname} is unchanged" in line and "terminating connection" in line
    else:
        assert res.returncode == -signal.SIGKILL
    assert "Restore completed" not in out
    _wait_until_gone(other_cluster, busy_db.dbname)
    assert diff(before, full_fingerprint(busy_db)) == []


def test_a_restore_killed_while_creating_leaves_no_database(big_set, other_cluster):
    """kill -9 mid-load with create_database=true: the name asked for never appears, and
    the next restore clears what the killed one left and completes."""
    name = f"created_{uuid.uuid4().hex[:10]}"
    target = other_cluster.conn(name)
    args = [f"restore.target={name}", "restore.create_database=true"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "restore", f"dir={big_set.directory}",
         f"prefix={big_set.prefix}", "yes=true", *args],
        env=pgvault_env(other_cluster.conn()), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    partial = restore_module.partial_name(name)
    try:
        _wait_for_copy(other_cluster, partial, proc, 8 << 20)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    _wait_until_gone(other_cluster, partial)
    assert not database_exists(other_cluster, name)

    res = restore(other_cluster.conn(), big_set.directory, big_set.prefix, "yes=true", *args)
    assert res.returncode == 0, res.stderr
    try:
        assert database_exists(other_cluster, name)
        assert not database_exists(other_cluster, partial)
        with connect(target) as pg:
            assert pg.execute("SELECT count(*) FROM ledger").fetchone() == (900000,)
            comment = pg.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database"
                " WHERE datname = current_database()"
            ).fetchone()
        assert comment == (None,)
    finally:
        drop_database(other_cluster, name)


def test_an_unmarked_empty_partial_database_is_a_leftover(feature_set, other_cluster):
    """A restore killed between CREATE DATABASE and its mark leaves an empty database
    under the partial name; the next restore clears it and completes."""
    name = f"created_{uuid.uuid4().hex[:10]}"
    partial = restore_module.partial_name(name)
    run_sql(other_cluster.conn(), f'CREATE DATABASE "{partial}"')
    res = restore(
        other_cluster.conn(), feature_set.directory, feature_set.prefix, "yes=true",
        f"restore.target={name}", "restore.create_database=true",
    )  # fmt: skip
    try:
        assert res.returncode == 0, res.stderr
        assert database_exists(other_cluster, name)
        assert not database_exists(other_cluster, partial)
    finally:
        drop_database(other_cluster, name)
        drop_database(other_cluster, partial)


def test_a_database_named_like_the_partial_one_is_left_alone(feature_set, other_cluster):
    """Unmarked and holding something: not a leftover of pgvault's, so never dropped."""
    name = f"created_{uuid.uuid4().hex[:10]}"
    partial = restore_module.partial_name(name)
    run_sql(other_cluster.conn(), f'CREATE DATABASE "{partial}"')
    run_sql(other_cluster.conn().with_dbname(partial), "CREATE TABLE mine (x int)")
    try:
        res = restore(
            other_cluster.conn(), feature_set.directory, feature_set.prefix, "yes=true",
            f"restore.target={name}", "restore.create_database=true",
        )  # fmt: skip
        assert "is not pgvault's" in one_line_error(res)
        assert database_exists(other_cluster, partial)
        assert not database_exists(other_cluster, name)
    finally:
        drop_database(other_cluster, partial)


@pytest.mark.parametrize("name", ['say "hi"', "semi;colon ' quote", "ü" * 25 + '"x'])
def test_create_database_takes_any_name(feature_set, other_cluster, name):
    res = restore(
        other_cluster.conn(), feature_set.directory, feature_set.prefix, "yes=true",
        f"restore.target='{name}'" if "'" not in name else f'restore.target="{name}"',
        "restore.create_database=true",
    )  # fmt: skip
    try:
        assert res.returncode == 0, res.stderr
        assert database_exists(other_cluster, name)
        restored = full_fingerprint(other_cluster.conn().with_dbname(name))
        roles = feature_set.manifest["roles"]
        assert diff(feature_set.expected(), backed_up_roles_only(restored, roles)) == []
    finally:
        with connect(other_cluster.conn(), autocommit=True) as pg:
            pg.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


# --- refusals change nothing -----------------------------------------------------------


@pytest.fixture
def watched(feature_set, busy_db):
    """After the test: the target and the set's directory are exactly as before."""
    before = full_fingerprint(busy_db), digest(feature_set.directory)
    yield busy_db
    assert diff(before[0], full_fingerprint(busy_db)) == []
    assert digest(feature_set.directory) == before[1]


def test_without_a_terminal_it_shows_the_plan_and_refuses(feature_set, feature_db, watched):
    """cron: no terminal to ask on, no yes=true. The summary is shown in local time."""
    zone = "America/St_Johns"
    res = restore(watched, feature_set.directory, feature_set.prefix, TZ=zone)
    line = one_line_error(res)
    assert "no terminal" in line and "yes=true" in line
    out, m = res.stdout, feature_set.manifest
    assert f"Restoring from backup: {feature_set.prefix}\n" in out
    assert f"Backup directory: {feature_set.directory}\n" in out
    total = 0
    for kind in ("roles", "schema", "data"):
        size = m["files"][kind]["size"]
        total += size
        assert f"  - {m['files'][kind]['name']} ({size / 2**20:.2f} MB)\n" in out
    assert f"Total size: {total / 2**20:.2f} MB\n" in out
    local = naming.parse_prefix(feature_set.prefix).astimezone(ZoneInfo(zone))
    assert f"Backup date: {local:%Y-%m-%d %H:%M:%S} N" in out  # NST or NDT
    where = f"{feature_db.params['host']}:{feature_db.params['port']}"
    assert (
        f"Source: database {feature_db.dbname} at {where} (target local, "
        f"PostgreSQL {m['server_version']})" in out
    )
    assert f"Target: database {watched.dbname} at " in out
    assert f"it goes into {watched.dbname} at " in out  # another database than the source
    assert f"WARNING: This will REPLACE database {watched.dbname} with the backup." in out
    assert "A safety backup of it is taken first." in out


def test_a_no_on_the_terminal_cancels(feature_set, watched):
    res = run_on_terminal(
        "restore",
        f"dir={feature_set.directory}",
        f"prefix={feature_set.prefix}",
        env=pgvault_env(watched),
        answer="n",
    )
    assert re.search(r"Replace database \S+ at \S+ with backup-[-\d]+\? \(y/N\)", res.stdout)
    line = one_line_error(res)
    assert "Restore cancelled." in line and "nothing was changed" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["env=prod"], "restores are not allowed in env 'prod'"),
        # Picking another policy does not lift the env's lock; only restore.allowed does.
        (["env=prod", "restore=default"], "restores are not allowed in env 'prod'"),
        (["env=prod", "restore.allowed=true"], "restore.confirm=always"),
        (["restore.confirm=always"], "restore.confirm=always"),
    ],
)
def test_policies_refuse(feature_set, watched, args, expected):
    res = restore(watched, feature_set.directory, feature_set.prefix, "yes=true", *args)
    line = one_line_error(res)
    assert expected in line


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    as_root = os.geteuid() == 0  # root ignores modes
    subprocess.run([*(["chattr", "+i"] if as_root else ["chmod", "0500"]), directory], check=True)
    try:
        yield
    finally:
        subprocess.run([*(["chattr", "-i"] if as_root else ["chmod", "0700"]), directory])


def test_a_read_only_directory_is_refused_in_one_line(feature_set, watched, tmp_path):
    directory = feature_set.copy_to(tmp_path / "backups")
    before = digest(directory)
    with read_only(directory):
        res = restore(watched, directory, feature_set.prefix, "yes=true")
    line = one_line_error(res)
    assert f"cannot lock {directory}" in line and "write access" in line
    assert digest(directory) == before

    (directory / ".pgvault.lock").touch()  # the lock can be taken; a new set cannot be written
    with read_only(directory):
        res = restore(watched, directory, feature_set.prefix, "yes=true")
    line = one_line_error(res)
    assert f"the safety backup of {watched.dbname} failed, nothing was restored" in line
    assert "not writable" in line and "restore.safety_backup=false" in line
    assert digest(directory) == before


def test_a_database_that_cannot_be_created_is_one_line(feature_set, other_cluster, watched):
    run_sql(other_cluster.conn(), "CREATE ROLE restore_nocreatedb LOGIN NOCREATEDB")
    try:
        url = other_cluster.url(f"new_{uuid.uuid4().hex[:10]}", user="restore_nocreatedb")
        res = restore(watched, feature_set.directory, feature_set.prefix, "yes=true",
                      f"restore.target={url}", "restore.create_database=true")  # fmt: skip
    finally:
        run_sql(other_cluster.conn(), "DROP ROLE restore_nocreatedb")
    line = one_line_error(res)
    assert "cannot create database new_" in line and "permission denied" in line
    assert "CREATEDB (not restore_nocreatedb)" in line


def test_a_database_that_does_not_exist_is_not_created_unasked(feature_set, watched):
    res = restore(watched, feature_set.directory, feature_set.prefix, "yes=true",
                  "restore.target=no_such_db")  # fmt: skip
    line = one_line_error(res)
    assert "database 'no_such_db' does not exist" in line and "create_database=true" in line


def test_client_programs_older_than_the_set_are_refused(feature_set, watched, tmp_path):
    directory = feature_set.copy_to(tmp_path / "backups")
    reseal(directory, feature_set.prefix, clients={"bindir": "/x", "version": "99.1"})
    before = digest(directory)
    line = one_line_error(restore(watched, directory, feature_set.prefix, "yes=true"))
    assert "pg_dump 99" in line and "postgresql-client-99" in line
    assert digest(directory) == before


def test_a_missing_file_is_named(feature_set, watched, tmp_path):
    directory = feature_set.copy_to(tmp_path / "backups")
    schema = naming.file_name(feature_set.prefix, "schema")
    (directory / schema).unlink()
    line = one_line_error(restore(watched, directory, feature_set.prefix, "yes=true"))
    assert f"lacks {schema}" in line
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        naming.file_name(feature_set.prefix, k) for k in ("roles", "data", "manifest")
    )


def test_bad_and_unknown_prefixes(feature_set, watched):
    real = feature_set.directory
    cases = {
        "../x": "is not a backup set name",
        f"../{feature_set.prefix}": "is not a backup set name",
        f"a/{feature_set.prefix}": "is not a backup set name",
        f"{real}/../{real.name}/{feature_set.prefix}": "contains '..'",
        "backup-2001-01-01-000000": f"no backup set backup-2001-01-01-000000 in {real}",
    }
    for prefix, expected in cases.items():
        line = one_line_error(restore(watched, real, prefix, "yes=true"))
        assert expected in line, prefix


def test_server_down(feature_set, watched):
    port = free_port()
    res = restore(
        watched, feature_set.directory, feature_set.prefix, "yes=true",
        PGHOST="127.0.0.1", PGPORT=str(port),
    )  # fmt: skip
    line = one_line_error(res)
    assert f"does not appear to be running at 127.0.0.1:{port}" in line
