"""`pgvault verify` on real sets: good sets verify; sets damaged so that only a real
restore and compare can tell are caught with the table (or index) named; the throwaway
cluster is always gone afterwards, also after SIGINT and SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pgvault.connection import connect
from pgvault.facts import pgoptions
from tests.conftest import create_database, drop_database, pgvault_env, run_pgvault, run_sql

EXIT_MISMATCH = 3


@pytest.fixture(scope="module")
def crm_db(pg_cluster):
    """Three tables with distinct data, an index, a sequence and a large object."""
    name = create_database(pg_cluster, "verify")
    conn = pg_cluster.conn(name)
    run_sql(
        conn,
        "CREATE TABLE people (id serial PRIMARY KEY, name text, city text);"
        "CREATE INDEX people_city_idx ON people (city);"
        "INSERT INTO people (name, city) SELECT 'person ' || i, 'city ' || (i % 7)"
        " FROM generate_series(1, 500) i;"
        "CREATE TABLE orders (id int PRIMARY KEY, person_id int REFERENCES people, total int);"
        "INSERT INTO orders SELECT i, 1 + i % 500, i * 3 FROM generate_series(1, 800) i;"
        "CREATE TABLE notes (body text); INSERT INTO notes VALUES (E'a\\tb'), ('plain');"
        "SELECT lo_from_bytea(0, 'blob');",
    )
    yield conn
    drop_database(pg_cluster, name)


@pytest.fixture(scope="module")
def good_set(crm_db, tmp_path_factory) -> Path:
    """A directory holding one backup of crm_db; tests copy it before damaging it."""
    directory = tmp_path_factory.mktemp("verify") / "backups"
    res = run_pgvault("backup", f"dir={directory}", env=pgvault_env(crm_db))
    assert res.returncode == 0, res.stderr
    return directory


@pytest.fixture
def copy_of_set(good_set, tmp_path) -> Path:
    directory = tmp_path / "backups"
    shutil.copytree(good_set, directory)
    for p in directory.glob("*-verify.json"):
        p.unlink()
    return directory


def set_file(directory: Path, kind: str) -> Path:
    (path,) = directory.glob(f"backup-*-{kind}.sql")
    return path


def rewrite_manifest_checksums(directory: Path) -> None:
    """Make the manifest's sizes and sha256 agree with the files as they are now, so
    that only a real restore and compare can tell what changed."""
    (mpath,) = directory.glob("backup-*-manifest.json")
    manifest = json.loads(mpath.read_text())
    for entry in manifest["files"].values():
        data = (directory / entry["name"]).read_bytes()
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    mpath.write_text(json.dumps(manifest))


def verify_record(directory: Path) -> dict:
    (path,) = directory.glob("backup-*-verify.json")
    return json.loads(path.read_text())


def verify(directory: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    """Run the real `pgvault verify` with its temp files (the cluster) under tmp."""
    return run_pgvault(
        "verify", f"dir={directory}", *args, env=pgvault_env(TMPDIR=str(tmp)), cwd=tmp
    )


def postgres_processes_under(path: Path) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if str(path).encode() in cmdline and b"postgres" in cmdline:
                found.append(cmdline.decode(errors="replace"))
    return found


def assert_cleaned_up(tmp: Path) -> None:
    assert [p.name for p in tmp.iterdir()] == []
    assert postgres_processes_under(tmp) == []


def test_a_good_set_verifies_and_is_recorded(copy_of_set, tmp_path, tmp):
    before = {p.name: p.read_bytes() for p in copy_of_set.glob("backup-*")}
    res = verify(copy_of_set, tmp=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "✓ public.people: 500 rows" in res.stdout
    assert "✓ public.orders: 800 rows" in res.stdout
    assert "verified: 3 tables, 1302 rows match" in res.stdout
    record = verify_record(copy_of_set)
    assert record["verdict"] == "verified" and record["problems"] == []
    assert record["server_version"] and record["duration_s"] > 0
    # The set's own files are untouched.
    for name, data in before.items():
        assert (copy_of_set / name).read_bytes() == data
    listing = run_pgvault("list", f"dir={copy_of_set}", "format=json", env=pgvault_env())
    assert listing.returncode == 0, listing.stderr
    assert "verified" in listing.stdout
    assert_cleaned_up(tmp)


def _drop_one_row(data: bytes, table: bytes) -> bytes:
    head, rest = data.split(b"COPY " + table, 1)
    header, rows = rest.split(b"\n", 1)
    first_row_end = rows.index(b"\n") + 1
    return head + b"COPY " + table + header + b"\n" + rows[first_row_end:]


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (
            lambda d: _drop_one_row(d, b"public.orders"),
            "public.orders: 799 rows, the backup had 800",
        ),
        (
            lambda d: d.replace(b"person 42\t", b"person 24\t", 1),
            "public.people: 500 rows, content",
        ),
        (lambda d: d[: d.index(b"COPY public.people")], "public.people: missing"),
        (lambda d: d[: d.index(b"person 300\t")], "public.people"),
    ],
    ids=["row-missing", "value-changed", "truncated-at-table", "truncated-inside-table"],
)
def test_damaged_data_is_caught_with_the_table_named(copy_of_set, tmp_path, damage, named, tmp):
    data = set_file(copy_of_set, "data")
    data.write_bytes(damage(data.read_bytes()))
    rewrite_manifest_checksums(copy_of_set)
    res = verify(copy_of_set, tmp=tmp)
    assert res.returncode == EXIT_MISMATCH, res.stdout + res.stderr
    assert named in res.stdout
    assert "does NOT match" in res.stdout
    assert res.stderr.startswith("pgvault: error: ") and "did not verify" in res.stderr
    record = verify_record(copy_of_set)
    assert record["verdict"] == "failed" and record["problems"]
    assert_cleaned_up(tmp)


def test_a_schema_file_missing_an_index_is_caught(copy_of_set, tmp_path, tmp):
    schema = set_file(copy_of_set, "schema")
    text = schema.read_bytes()
    line = next(ln for ln in text.split(b"\n") if b"CREATE INDEX people_city_idx" in ln)
    manifest = json.loads(next(copy_of_set.glob("*-manifest.json")).read_text())
    assert text.index(line) > manifest["schema_post_data_offset"]  # the offset stays valid
    schema.write_bytes(text.replace(line + b"\n", b""))
    rewrite_manifest_checksums(copy_of_set)
    res = verify(copy_of_set, tmp=tmp)
    assert res.returncode == EXIT_MISMATCH, res.stdout + res.stderr
    assert "index public.people_city_idx is missing" in res.stdout
    assert_cleaned_up(tmp)


def test_a_damaged_file_without_rewritten_checksums_fails_too(copy_of_set, tmp_path, tmp):
    data = set_file(copy_of_set, "data")
    data.write_bytes(data.read_bytes().replace(b"person 42\t", b"person 24\t", 1))
    res = verify(copy_of_set, tmp=tmp)
    assert res.returncode == EXIT_MISMATCH
    assert "does not match its sha256" in res.stdout
    assert_cleaned_up(tmp)


def test_could_not_run_has_its_own_exit_code(tmp_path, tmp):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = verify(empty, tmp=tmp)
    assert res.returncode not in (0, EXIT_MISMATCH)
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("pgvault: error: no complete backup set") and line.endswith(")")


def test_verify_all_and_backup_with_verify(crm_db, tmp_path, tmp):
    directory = tmp_path / "backups"
    env = pgvault_env(crm_db, TMPDIR=str(tmp))
    res = run_pgvault("backup", f"dir={directory}", "verify=true", env=env)
    assert res.returncode == 0, res.stderr
    assert "verified: 3 tables" in res.stdout
    assert verify_record(directory)["verdict"] == "verified"
    assert run_pgvault("backup", f"dir={directory}", "quiet=true", env=env).returncode == 0
    res = run_pgvault("verify", f"dir={directory}", "all=true", env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("verified: 3 tables") == 2
    assert len(list(directory.glob("*-verify.json"))) == 2


def test_the_feature_rich_database_verifies(feature_db, tmp_path, tmp):
    directory = tmp_path / "backups"
    res = run_pgvault("backup", f"dir={directory}", env=pgvault_env(feature_db))
    assert res.returncode == 0, res.stderr
    res = verify(directory, tmp=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert '✓ "Odd Schema"."Mixed Case ""Table""": 2 rows' in res.stdout
    assert "✓ audit.log:" in res.stdout
    assert_cleaned_up(tmp)


def test_a_scratch_database_is_used_and_emptied(copy_of_set, other_cluster, tmp_path, tmp):
    name = create_database(other_cluster, "scratch")
    try:
        url = other_cluster.url(name)
        res = verify(copy_of_set, f"verify.target={url}", tmp=tmp)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "verified: 3 tables" in res.stdout
        with connect(other_cluster.conn(name), autocommit=True) as pg:
            left = pg.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
            ).fetchone()
            los = pg.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()
        assert left == (0,) and los == (0,)
    finally:
        drop_database(other_cluster, name)


@pytest.fixture(scope="module")
def big_set(big_db, tmp_path_factory) -> Path:
    """A set large enough (~70 MB) that a signal arrives while verify restores it."""
    directory = tmp_path_factory.mktemp("bigverify") / "backups"
    res = run_pgvault("backup", f"dir={directory}", "quiet=true", env=pgvault_env(big_db))
    assert res.returncode == 0, res.stderr
    return directory


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_cluster_and_removes_it(big_set, sig, tmp):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "verify", f"dir={big_set}"],
        env=pgvault_env(TMPDIR=str(tmp)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not _has_child(proc.pid, b"psql"):  # the cluster is up and the restore running
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "verify never started restoring"
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert "interrupted" in err
    assert_cleaned_up(tmp)
    assert not list(big_set.glob("*-verify.json"))


def _has_child(pid: int, program: bytes) -> bool:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return False
    for child in children:
        try:
            if program in Path(f"/proc/{child}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def test_a_database_with_its_own_time_zone_and_bytea_output_verifies(pg_cluster, tmp_path, tmp):
    """COPY writes timestamptz in the session's time zone and bytea per bytea_output; the
    throwaway cluster has neither of the source database's settings."""
    name = create_database(pg_cluster, "zoned")
    conn = pg_cluster.conn(name)
    try:
        run_sql(
            conn,
            f"ALTER DATABASE {name} SET timezone = 'America/New_York';"
            f"ALTER DATABASE {name} SET bytea_output = 'escape';",
        )
        run_sql(
            conn,
            "CREATE TABLE events (at timestamptz, payload bytea);"
            "INSERT INTO events VALUES ('2025-06-01 12:00+00', '\\x00ff'),"
            " ('2025-12-01 12:00+00', NULL);",
        )
        directory = tmp_path / "backups"
        res = run_pgvault("backup", f"dir={directory}", "quiet=true", env=pgvault_env(conn))
        assert res.returncode == 0, res.stderr
        assert "08:00:00-04" in next(directory.glob("*-data.sql")).read_text()
        res = verify(directory, tmp=tmp)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "✓ public.events: 2 rows" in res.stdout
    finally:
        drop_database(pg_cluster, name)


def test_pgoptions_reach_the_server_as_given(pg_cluster):
    odd = {"pgvault.probe": "a b\\c d", "TimeZone": "America/New_York"}
    env = {**pgvault_env(pg_cluster.conn()), "PGOPTIONS": pgoptions(odd, "-c work_mem=5MB")}
    psql = str(Path(pg_cluster.programs.path("psql")))
    shown = subprocess.run(
        [psql, "-X", "-At", "-c", "SHOW pgvault.probe", "-c", "SHOW TimeZone",
         "-c", "SHOW work_mem"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.split("\n")  # fmt: skip
    assert shown[:3] == ["a b\\c d", "America/New_York", "5MB"]


def test_a_latin1_database_verifies(pg_cluster, tmp_path, tmp):
    """pg_dump writes COPY in the database's encoding: verify restores into the same."""
    name = f"latin1_{os.getpid()}"
    with connect(pg_cluster.conn(), autocommit=True) as pg:
        pg.execute(
            f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'LATIN1'"
            " LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    conn = pg_cluster.conn(name)
    try:
        run_sql(conn, "CREATE TABLE words (w text); INSERT INTO words VALUES ('ñandú'), ('Ågot');")
        directory = tmp_path / "backups"
        res = run_pgvault("backup", f"dir={directory}", "quiet=true", env=pgvault_env(conn))
        assert res.returncode == 0, res.stderr
        assert "ñandú".encode("latin-1") in next(directory.glob("*-data.sql")).read_bytes()
        res = verify(directory, tmp=tmp)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "✓ public.words: 2 rows" in res.stdout
    finally:
        drop_database(pg_cluster, name)


def test_a_backup_of_a_database_named_postgres_verifies(pg_cluster, tmp_path, tmp):
    """Supabase's database is `postgres`, which every throwaway cluster has too."""
    conn = pg_cluster.conn("postgres")
    directory = tmp_path / "backups"
    res = run_pgvault("backup", f"dir={directory}", "quiet=true", env=pgvault_env(conn))
    assert res.returncode == 0, res.stderr
    res = verify(directory, tmp=tmp)
    assert res.returncode == 0, res.stdout + res.stderr
    assert verify_record(directory)["verdict"] == "verified"


def test_a_missing_extension_is_could_not_run_not_a_bad_set(copy_of_set, tmp):
    schema = set_file(copy_of_set, "schema")
    (mpath,) = copy_of_set.glob("*-manifest.json")
    m = json.loads(mpath.read_text())
    line = b"CREATE EXTENSION pgvault_no_such_extension;\n"
    schema.write_bytes(line + schema.read_bytes())
    m["schema_post_data_offset"] += len(line)
    mpath.write_text(json.dumps(m))
    rewrite_manifest_checksums(copy_of_set)
    res = verify(copy_of_set, tmp=tmp)
    assert res.returncode not in (0, EXIT_MISMATCH), res.stdout + res.stderr
    (err,) = res.stderr.strip().splitlines()
    assert "could not run" in err and "pgvault_no_such_extension" in err
    assert "install that extension" in err
    assert not list(copy_of_set.glob("*-verify.json"))  # no verdict on the set
    assert_cleaned_up(tmp)


def test_a_scratch_database_that_is_not_empty_is_refused(copy_of_set, other_cluster, tmp):
    name = create_database(other_cluster, "notempty")
    try:
        run_sql(
            other_cluster.conn(name),
            "CREATE TABLE precious (x int); INSERT INTO precious VALUES (1)",
        )
        res = verify(copy_of_set, f"verify.target={other_cluster.url(name)}", tmp=tmp)
        (err,) = res.stderr.strip().splitlines()
        assert res.returncode not in (0, EXIT_MISMATCH) and "is not empty" in err
        with connect(other_cluster.conn(name), autocommit=True) as pg:
            assert pg.execute("SELECT x FROM precious").fetchall() == [(1,)]
    finally:
        drop_database(other_cluster, name)
