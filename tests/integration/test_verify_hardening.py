"""Verify under attack and bad luck (issue 10), each fault injected for real: a scratch
database holding any object is refused and keeps it; a full TMPDIR (a small tmpfs) is
"could not run" and keeps the earlier verdict; a truncated compressed data file is a
failed set with the table named, and its restore changes nothing; the throwaway cluster
admits no other local user (`nobody`); a cluster left by kill -9 is reaped, and nothing
that is not certainly such a cluster is touched."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgvault import cluster as clusters
from pgvault import clusterdirs
from pgvault.connection import Conn, connect
from pgvault.scratch import THROWAWAY_SETTINGS, could_not_run
from tests.conftest import (
    create_database,
    drop_database,
    needs_tool,
    one_line_error,
    pgvault_env,
    run_pgvault,
    run_sql,
)
from tests.integration.test_verify import (
    EXIT_MISMATCH,
    assert_cleaned_up,
    postgres_processes_under,
    rewrite_manifest_checksums,
    verify,
    verify_record,
)

EXIT_CONFIG = 2


def backup_of(conn: Conn, directory: Path, *args: str) -> Path:
    res = run_pgvault("backup", f"dir={directory}", "quiet=true", *args, env=pgvault_env(conn))
    assert res.returncode == 0, res.stderr
    return directory


@pytest.fixture(scope="module")
def parts_db(pg_cluster) -> Iterator[Conn]:
    """A big table between two small ones: a data file cut in its middle is cut inside
    public.b_big whatever the compression."""
    name = create_database(pg_cluster, "parts")
    conn = pg_cluster.conn(name)
    run_sql(
        conn,
        "CREATE TABLE a_small (id int PRIMARY KEY);"
        "INSERT INTO a_small SELECT generate_series(1, 10);"
        "CREATE TABLE b_big (id int PRIMARY KEY, note text);"
        "INSERT INTO b_big SELECT i, md5(i::text) FROM generate_series(1, 60000) i;"
        "CREATE TABLE c_small (id int PRIMARY KEY);"
        "INSERT INTO c_small SELECT generate_series(1, 10);",
    )
    yield conn
    drop_database(pg_cluster, name)


@pytest.fixture(scope="module")
def small_set(parts_db, tmp_path_factory) -> Path:
    return backup_of(parts_db, tmp_path_factory.mktemp("small") / "backups")


@pytest.fixture(scope="module")
def mid_set(pg_cluster, tmp_path_factory) -> Iterator[Path]:
    """~30 MB of data: restoring it takes long enough to act while verify runs, and it
    does not fit beside the cluster in a tmpfs a few MB larger than the cluster."""
    name = create_database(pg_cluster, "mid")
    conn = pg_cluster.conn(name)
    run_sql(
        conn,
        "CREATE TABLE ledger (id bigserial PRIMARY KEY, note text);"
        "INSERT INTO ledger (note) SELECT repeat(md5(i::text), 2)"
        " FROM generate_series(1, 400000) i;",
    )
    yield backup_of(conn, tmp_path_factory.mktemp("mid") / "backups")
    drop_database(pg_cluster, name)


def copy_set(directory: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    for p in copy.glob("*-verify.json"):
        p.unlink()
    return copy


# --- item 3: verify.target must hold nothing ------------------------------------------

# kind: (what makes it, how the refusal names it, a query whose answer shows it is there)
# fmt: off
OBJECTS = {
    "function": ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
                 "function f()", "SELECT oid FROM pg_proc WHERE proname = 'f'"),
    "procedure": ("CREATE PROCEDURE pr() LANGUAGE sql AS 'SELECT 1'",
                  "pr()", "SELECT oid FROM pg_proc WHERE proname = 'pr'"),
    "aggregate": ("CREATE AGGREGATE agg(int) (sfunc = int4pl, stype = int)",
                  "agg(integer)", "SELECT oid FROM pg_proc WHERE proname = 'agg'"),
    "enum": ("CREATE TYPE mood AS ENUM ('calm')",
             "type mood", "SELECT oid FROM pg_type WHERE typname = 'mood'"),
    "composite type": ("CREATE TYPE pair AS (a int, b int)",
                       "type pair", "SELECT oid FROM pg_type WHERE typname = 'pair'"),
    "range type": ("CREATE TYPE floatrange AS RANGE (subtype = float8)",
                   "type floatrange", "SELECT oid FROM pg_type WHERE typname = 'floatrange'"),
    "domain": ("CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
               "type posint", "SELECT oid FROM pg_type WHERE typname = 'posint'"),
    "schema": ("CREATE SCHEMA app",
               "schema app", "SELECT oid FROM pg_namespace WHERE nspname = 'app'"),
    "extension": ("CREATE EXTENSION citext",
                  "extension citext", "SELECT oid FROM pg_extension WHERE extname = 'citext'"),
    "publication": ("CREATE PUBLICATION pub",
                    "publication pub", "SELECT oid FROM pg_publication WHERE pubname = 'pub'"),
    "subscription": ("CREATE SUBSCRIPTION sub CONNECTION 'dbname=nowhere' PUBLICATION pub"
                     " WITH (connect = false, slot_name = NONE, enabled = false)",
                     "subscription sub", "SELECT oid FROM pg_subscription WHERE subname = 'sub'"),
    "event trigger": ("CREATE FUNCTION evt() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN END';"
                      "CREATE EVENT TRIGGER et ON ddl_command_start EXECUTE FUNCTION evt()",
                      "event trigger et", "SELECT oid FROM pg_event_trigger WHERE evtname = 'et'"),
    "operator": ("CREATE OPERATOR === (leftarg = int, rightarg = int, function = int4eq)",
                 "operator ===(integer,integer)",
                 "SELECT oid FROM pg_operator WHERE oprname = '==='"),
    "operator family": ("CREATE OPERATOR FAMILY fam USING btree",
                        "operator family fam", "SELECT oid FROM pg_opfamily WHERE opfname = 'fam'"),
    "collation": ('CREATE COLLATION coll FROM "C"',
                  "collation coll", "SELECT oid FROM pg_collation WHERE collname = 'coll'"),
    "text search configuration": ("CREATE TEXT SEARCH CONFIGURATION tsc (COPY = simple)",
                                  "text search configuration tsc",
                                  "SELECT oid FROM pg_ts_config WHERE cfgname = 'tsc'"),
    "text search dictionary": ("CREATE TEXT SEARCH DICTIONARY tsd (TEMPLATE = simple)",
                               "text search dictionary tsd",
                               "SELECT oid FROM pg_ts_dict WHERE dictname = 'tsd'"),
    # PostgreSQL 18 has its own integer-to-bytea casts: date to bytea is nobody's.
    "cast": ("CREATE CAST (date AS bytea) WITH INOUT", "cast from date to bytea",
             "SELECT oid FROM pg_cast"
             " WHERE castsource = 'date'::regtype AND casttarget = 'bytea'::regtype"),
    "conversion": ("CREATE CONVERSION conv FOR 'LATIN1' TO 'UTF8' FROM iso8859_1_to_utf8",
                   "conversion conv", "SELECT oid FROM pg_conversion WHERE conname = 'conv'"),
    "foreign data wrapper": ("CREATE FOREIGN DATA WRAPPER fdw", "foreign-data wrapper fdw",
                             "SELECT oid FROM pg_foreign_data_wrapper WHERE fdwname = 'fdw'"),
    "foreign server": ("CREATE FOREIGN DATA WRAPPER fdw2;"
                       " CREATE SERVER srv FOREIGN DATA WRAPPER fdw2",
                       "server srv", "SELECT oid FROM pg_foreign_server WHERE srvname = 'srv'"),
    "large object": ("SELECT lo_create(424242)",
                     "large object 424242", "SELECT oid FROM pg_largeobject_metadata"),
    "access method": ("CREATE ACCESS METHOD am2 TYPE TABLE HANDLER heap_tableam_handler",
                      "access method am2", "SELECT oid FROM pg_am WHERE amname = 'am2'"),
    "default privileges": ("ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
                           "default privileges on new relations",
                           "SELECT defaclacl::text FROM pg_default_acl"),
    "sequence": ("CREATE SEQUENCE seq",
                 "sequence seq", "SELECT oid FROM pg_class WHERE relname = 'seq'"),
    "view": ("CREATE VIEW v AS SELECT 1 AS x",
             "view v", "SELECT oid FROM pg_class WHERE relname = 'v'"),
    "table": ("CREATE TABLE precious (x int); INSERT INTO precious VALUES (1)",
              "table precious", "SELECT x FROM precious"),
}
# fmt: on


def _rows(conn: Conn, query: str) -> list[tuple[object, ...]]:
    with connect(conn, autocommit=True) as pg:
        return pg.execute(query).fetchall()


@pytest.mark.parametrize("kind", OBJECTS)
def test_a_scratch_database_holding_any_object_is_refused(kind, small_set, other_cluster, tmp):
    made, named, query = OBJECTS[kind]
    name = create_database(other_cluster, "notempty")
    conn = other_cluster.conn(name)
    try:
        run_sql(conn, made)
        before = _rows(conn, query)
        assert before, "the object was not made"
        res = verify(small_set, f"verify.target={other_cluster.url(name)}", tmp=tmp)
        line = one_line_error(res)
        assert res.returncode == EXIT_CONFIG, res.stdout
        assert f"verify.target {name} at " in line and " is not empty: it holds " in line
        assert named in line
        assert _rows(conn, query) == before  # still there, unchanged
        assert not list(small_set.glob("*-verify.json"))
    finally:
        if kind == "subscription":
            run_sql(conn, "DROP SUBSCRIPTION sub")
        drop_database(other_cluster, name)


def test_a_scratch_database_reached_as_a_non_superuser_is_refused(small_set, other_cluster, tmp):
    """The load would fail on the roles file, and the good set be called damaged."""
    name = create_database(other_cluster, "plainuser")
    run_sql(
        other_cluster.conn(), "DROP ROLE IF EXISTS verify_plain; CREATE ROLE verify_plain LOGIN"
    )
    try:
        run_sql(other_cluster.conn(), f'ALTER DATABASE "{name}" OWNER TO verify_plain')
        url = other_cluster.url(name, user="verify_plain")
        line = one_line_error(verify(small_set, f"verify.target={url}", tmp=tmp))
        assert "as verify_plain, who is not a superuser" in line
        assert not list(small_set.glob("*-verify.json"))
    finally:
        drop_database(other_cluster, name)
        run_sql(other_cluster.conn(), "DROP ROLE verify_plain")


def test_a_scratch_database_is_empty_again_for_the_next_verify(small_set, other_cluster, tmp):
    """What verify's own wipe leaves (a new public schema) is not taken for an object."""
    name = create_database(other_cluster, "scratch")
    try:
        for _ in range(2):
            res = verify(small_set, f"verify.target={other_cluster.url(name)}", tmp=tmp)
            assert res.returncode == 0, res.stdout + res.stderr
    finally:
        drop_database(other_cluster, name)
        for p in small_set.glob("*-verify.json"):
            p.unlink()


# --- items 4 and 17: a full TMPDIR -------------------------------------------------------


@pytest.fixture
def small_tmpfs() -> Iterator[Callable[[int], Path]]:
    """mount(size) -> a new tmpfs of size bytes, unmounted afterwards (we are root)."""
    mounts: list[Path] = []

    def mount(size: int) -> Path:
        path = Path(tempfile.mkdtemp(prefix="pgvault-tmpfs-"))
        mounts.append(path)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
            check=True,
        )
        return path

    yield mount
    for path in mounts:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)
        path.rmdir()


def cluster_footprint(programs) -> int:
    """Bytes a throwaway cluster of verify's takes, with its scratch database made."""
    with clusters.throwaway(programs, settings=THROWAWAY_SETTINGS, tcp=False) as c:
        with connect(c.conn(), autocommit=True) as pg:
            pg.execute("CREATE DATABASE probe")
        return sum(
            (Path(d) / f).lstat().st_blocks * 512 for d, _, files in os.walk(c.root) for f in files
        )


def test_a_full_tmpdir_is_could_not_run_and_keeps_the_verdict(
    mid_set, tmp_path, tmp, small_tmpfs, server_programs
):
    directory = copy_set(mid_set, tmp_path)
    res = verify(directory, tmp=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    (record,) = directory.glob("*-verify.json")
    verified = record.read_bytes()

    # Room for the cluster and its empty database, not for the set's 30 MB.
    full = small_tmpfs(cluster_footprint(server_programs) + (6 << 20))
    res = verify(directory, tmp=full)
    line = one_line_error(res)
    assert res.returncode == 1, res.stdout
    assert "could not run" in line and f"no space left in {full} " in line and "TMPDIR" in line
    assert "does NOT match" not in res.stdout
    assert record.read_bytes() == verified  # the verdict and its protection stand
    assert_cleaned_up(full)


def test_no_space_for_initdb_names_the_cause(small_set, tmp_path, small_tmpfs):
    directory = copy_set(small_set, tmp_path)
    full = small_tmpfs(4 << 20)
    res = verify(directory, tmp=full)
    line = one_line_error(res)
    assert res.returncode == 1
    assert f"no space left in {full} for a throwaway PostgreSQL cluster" in line
    assert "set TMPDIR to a directory on a larger filesystem" in line
    assert "installation" not in line
    assert not list(directory.glob("*-verify.json"))
    assert_cleaned_up(full)


def test_a_set_of_thousands_of_tables_verifies(pg_cluster, tmp_path, tmp):
    """Every table is created in the restore's one transaction and locked until it ends:
    the lock table ran out ("out of shared memory") and the set was called damaged."""
    name = create_database(pg_cluster, "many")
    conn = pg_cluster.conn(name)
    try:
        run_sql(
            conn,
            "DO $$BEGIN FOR i IN 1..2000 LOOP"
            " EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY)', i); END LOOP; END$$",
        )
        directory = backup_of(conn, tmp_path / "backups")
        res = verify(directory, tmp=tmp)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        assert "verified: 2000 tables" in res.stdout
    finally:
        drop_database(pg_cluster, name)


# --- item 7: a truncated data file is a damaged set ----------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_a_truncated_data_file_fails_verify_and_restore_changes_nothing(
    compression, parts_db, pg_cluster, tmp_path, tmp
):
    needs_tool(compression)
    directory = backup_of(parts_db, tmp_path / "backups", f"compression={compression}")
    (data,) = directory.glob("*-data.sql*")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    rewrite_manifest_checksums(directory)  # only the content tells

    res = verify(directory, tmp=tmp)
    assert res.returncode == EXIT_MISMATCH, res.stdout + res.stderr
    assert "inside the data of public.b_big" in res.stdout
    assert "✗ public.b_big:" in res.stdout and "does NOT match" in res.stdout
    record = verify_record(directory)
    assert record["verdict"] == "failed"
    assert any("public.b_big" in p for p in record["problems"])
    assert_cleaned_up(tmp)

    name = create_database(pg_cluster, "keep")
    target = pg_cluster.conn(name)
    try:
        run_sql(target, "CREATE TABLE keep (x int); INSERT INTO keep VALUES (7)")
        res = run_pgvault(
            "restore", f"dir={directory}", "prefix=latest", "yes=true",
            "restore.safety_backup=false", env=pgvault_env(target),
        )  # fmt: skip
        line = one_line_error(res)
        assert f"restore failed, {name} is unchanged: " in line
        assert "inside the data of public.b_big" in line
        assert _rows(target, "SELECT x FROM keep") == [(7,)]
        assert _rows(target, "SELECT to_regclass('public.b_big')::text") == [(None,)]
    finally:
        drop_database(pg_cluster, name)


# --- item 10: nobody else gets into the cluster; kill -9 leaves nothing for long -----------


def _connects(psql: str, host: str, port: int, *, as_nobody: bool) -> bool:
    """Whether psql reaches the server as superuser postgres (as `nobody`, or as root)."""
    argv = [psql, "-X", "-At", "-h", host, "-p", str(port), "-U", "postgres", "-d", "postgres",
            "-c", "SELECT 1"]  # fmt: skip
    if as_nobody:
        argv = ["runuser", "-u", "nobody", "--", *argv]
    env = {"PATH": os.environ["PATH"], "HOME": "/", "PGCONNECT_TIMEOUT": "10"}
    res = subprocess.run(argv, env=env, cwd="/", capture_output=True, text=True, timeout=60)
    return res.returncode == 0 and res.stdout.strip() == "1"


def test_a_private_cluster_admits_no_other_local_user(server_programs):
    psql = server_programs.path("psql")
    with clusters.throwaway(server_programs, tcp=False) as c:
        st_sock = c.socket_dir.stat()
        assert stat.S_IMODE(st_sock.st_mode) == 0o700
        assert st_sock.st_uid == pwd.getpwnam("postgres").pw_uid
        assert _connects(psql, str(c.socket_dir), c.port, as_nobody=False)  # it is up
        assert not _connects(psql, str(c.socket_dir), c.port, as_nobody=True)
        assert not _connects(psql, "127.0.0.1", c.port, as_nobody=True)
        with connect(c.conn(), autocommit=True) as pg:  # the server's own word
            assert pg.execute("SHOW listen_addresses").fetchone() == ("",)
    # The probe can fail: a cluster that listens on TCP with trust lets nobody in.
    with clusters.throwaway(server_programs, tcp=True) as c:
        assert _connects(psql, "127.0.0.1", c.port, as_nobody=True)


def _cluster_of(tmp: Path) -> Path | None:
    """The data directory of the (one) cluster in tmp whose server is ready."""
    for pidfile in tmp.glob(f"{clusterdirs.PREFIX}*/data/postmaster.pid"):
        with contextlib.suppress(OSError):
            lines = pidfile.read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return pidfile.parent
    return None


def _has_child(pid: int, program: bytes) -> bool:
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                if program in Path(f"/proc/{child}/cmdline").read_bytes():
                    return True
    return False


def _start_verify(directory: Path, tmp: Path) -> tuple[subprocess.Popen[str], Path]:
    """A running `pgvault verify` that is restoring into its cluster, and that cluster."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "verify", f"dir={directory}"],
        env=pgvault_env(TMPDIR=str(tmp)), cwd=tmp, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while (datadir := _cluster_of(tmp)) is None or not _has_child(proc.pid, b"psql"):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "verify never started restoring"
        time.sleep(0.02)
    return proc, datadir


def test_verifys_cluster_admits_no_other_local_user(mid_set, tmp_path, tmp, server_programs):
    directory = copy_set(mid_set, tmp_path)
    proc, datadir = _start_verify(directory, tmp)
    os.kill(proc.pid, signal.SIGSTOP)  # hold verify (not its server) while we probe
    try:
        lines = (datadir / "postmaster.pid").read_text().splitlines()
        port, sockets, listening = int(lines[3]), lines[4], lines[5]
        psql = server_programs.path("psql")
        assert _connects(psql, sockets, port, as_nobody=False)  # it is up
        assert not _connects(psql, sockets, port, as_nobody=True)
        assert not _connects(psql, "127.0.0.1", port, as_nobody=True)
        assert listening.strip() == ""
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert_cleaned_up(tmp)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_cluster_left_by_kill_9_is_reaped_by_the_next_verify(mid_set, small_set, tmp_path, tmp):
    proc, datadir = _start_verify(copy_set(mid_set, tmp_path), tmp)
    server = clusterdirs.postmaster(datadir)
    assert server is not None
    proc.kill()
    proc.communicate()
    assert _running(server), "the server dies with verify: nothing to reap"

    res = verify(small_set, tmp=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not _running(server)
    assert not datadir.parent.exists()
    assert postgres_processes_under(tmp) == []
    assert_cleaned_up(tmp)
    for p in small_set.glob("*-verify.json"):
        p.unlink()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_what_is_certainly_an_orphan_is_reaped(tmp_path, server_programs):
    parent = tmp_path / "parent"
    parent.mkdir()
    dead = _dead_pid()
    orphan = parent / f"{clusterdirs.PREFIX}{dead}-orphan01"
    (orphan / "data").mkdir(parents=True)
    (orphan / "data" / "PG_VERSION").write_text("15\n")
    hour_ago = time.time() - 3600
    os.utime(orphan, (hour_ago, hour_ago))  # no owner lock: only an old one is an orphan
    kept = {
        # no owner lock yet, and new: perhaps another namespace's cluster starting
        "young": parent / f"{clusterdirs.PREFIX}{dead}-young001",
        # owned by another user
        "foreign": parent / f"{clusterdirs.PREFIX}{dead}-foreign1",
        # its owner still runs
        "alive": parent / f"{clusterdirs.PREFIX}{os.getpid()}-alive001",
        # its owner lock is held (a pid of another PID namespace looks dead here)
        "locked": parent / f"{clusterdirs.PREFIX}{dead}-locked01",
        # not named as ours
        "other": parent / "pgvault-cluster-notapid",
    }
    for path in kept.values():
        path.mkdir()
        (path / "keep").write_text("x")
    for key in ("foreign", "alive", "locked"):
        os.utime(kept[key], (hour_ago, hour_ago))
    nobody = pwd.getpwnam("nobody")
    os.chown(kept["foreign"], nobody.pw_uid, nobody.pw_gid)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    link = parent / f"{clusterdirs.PREFIX}{dead}-symlink1"
    link.symlink_to(outside)
    lock = os.open(kept["locked"] / "owner.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reaped = clusters.reap_orphans(parent, server_programs)
    finally:
        os.close(lock)
    assert reaped == [orphan] and not orphan.exists()
    assert all((path / "keep").exists() for path in kept.values())
    assert link.is_symlink() and (outside / "keep").exists()


# --- what says nothing about the set ----------------------------------------------------

MARKERS = [
    "No space left on device", "could not extend file", "out of memory", "could not fork",
    "server closed the connection unexpectedly", "too many clients already", "cannot read",
    "out of shared memory", "terminating connection", "killed by signal 9",
    "Too many open files", "canceling statement due to lock timeout", "deadlock detected",
    "Input/output error", "extension control file",
]  # fmt: skip
quoted = st.builds(
    lambda a, m, b: a + m + b,
    st.text(st.characters(exclude_characters='"\n'), max_size=8),
    st.sampled_from(MARKERS),
    st.text(st.characters(exclude_characters='"\n'), max_size=8),
)


@given(value=quoted)
def test_a_value_from_the_set_never_makes_a_damaged_set_could_not_run(value):
    what = (
        f'restore failed, db is unchanged: ERROR:  invalid input syntax for type integer: "{value}"'
    )
    assert could_not_run(what, Path("/tmp"), "h:5432") is None
    assert could_not_run(what, None, "h:5432") is None


@given(a=st.text(max_size=8), marker=st.sampled_from(MARKERS), b=st.text(max_size=8))
def test_with_its_sqlstate_no_value_makes_a_damaged_set_could_not_run(a, marker, b):
    """PostgreSQL does not escape a quote inside a quoted value: the text alone can be
    made to read like a full disk. The SQLSTATE psql prints (VERBOSITY=verbose) cannot."""
    value = f'{a}" {marker}: "{b}'
    for code in ("22P02", "23505", "42601", "XX001"):
        what = f'psql:<stdin>:9: ERROR:  {code}: invalid input syntax for type integer: "{value}"'
        assert could_not_run(what, Path("/tmp"), "h:5432") is None, what
    full = 'psql:<stdin>:9: ERROR:  53100: could not extend file "base/1/2": No space left'
    assert could_not_run(full, None, "h:5432") is not None


@given(name=st.text(st.characters(exclude_characters='"\n'), max_size=30))
def test_no_space_is_could_not_run_whatever_the_file(name):
    what = (
        f'restore failed, db is unchanged: ERROR:  could not extend file "{name}": '
        "wrote only 4096 of 8192 bytes"
    )
    why, hint = could_not_run(what, Path("/mnt/t"), "h:5432") or ("", "")
    assert why.startswith("no space left in /mnt/t ") and "TMPDIR" in hint
    why, hint = could_not_run(what, None, "h:5432") or ("", "")
    assert why.startswith("the scratch server at h:5432 ran out of space")
