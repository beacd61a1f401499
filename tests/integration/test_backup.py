"""`pgvault backup` against real throwaway clusters: the set, its manifest, and every fault
that must leave no partial set behind and older sets untouched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pgvault import runstate, unfinished
from pgvault.connection import connect
from tests.conftest import (
    PASSWORD,
    PASSWORD_USER,
    create_database,
    drop_database,
    needs_tool,
    one_line_error,
    pgvault_env,
    plain_psql_restore,
    process_running,
    run_pgvault,
    run_sql,
)


def sets_in(directory: Path) -> dict[str, set[str]]:
    """prefix -> names of the files of each set (complete or not) in directory."""
    out: dict[str, set[str]] = {}
    for p in directory.iterdir():
        if p.name.startswith("backup-"):
            out.setdefault(p.name[:24], set()).add(p.name)
    return out


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        # The lock, and the state file every run updates (status reads it), are no set's.
        if p.is_file() and p.name not in (".pgvault.lock", runstate.STATE_FILE)
    }


def manifest_of(directory: Path, prefix: str | None = None) -> dict:
    paths = sorted(directory.glob(f"{prefix or 'backup-*'}-manifest.json"))
    return json.loads(paths[-1].read_text())


@pytest.fixture
def small_db(pg_cluster):
    name = create_database(pg_cluster, "small")
    conn = pg_cluster.conn(name)
    run_sql(
        conn,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 1000) i;",
    )
    yield conn
    drop_database(pg_cluster, name)


def test_backup_writes_a_complete_checked_set(small_db, backup_dir):
    res = run_pgvault("backup", f"dir={backup_dir}", env=pgvault_env(small_db))
    assert res.returncode == 0, res.stderr
    assert "✓ Backup completed successfully!" in res.stdout
    assert f"Location: {backup_dir}" in res.stdout
    (prefix,) = sets_in(backup_dir)
    m = manifest_of(backup_dir)
    assert m["prefix"] == prefix and m["target"] == "local"
    for kind in ("roles", "schema", "data"):
        path = backup_dir / f"{prefix}-{kind}.sql"
        assert path.name in res.stdout
        assert m["files"][kind]["size"] == path.stat().st_size
        assert m["files"][kind]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((backup_dir / f"{prefix}-manifest.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(backup_dir.stat().st_mode) == 0o700
    assert m["tables"]["public.t"]["rows"] == 1000
    assert m["server_major"] >= 10 and m["snapshot"]["id"]
    # Data is COPY, and the schema file holds pre-data then post-data.
    data = (backup_dir / f"{prefix}-data.sql").read_text()
    assert "COPY public.t (id, v) FROM stdin;" in data
    schema = (backup_dir / f"{prefix}-schema.sql").read_bytes()
    assert b"PRIMARY KEY" in schema[m["schema_post_data_offset"] :]
    assert b"CREATE TABLE public.t" in schema[: m["schema_post_data_offset"]]


def test_quiet_prints_nothing(small_db, backup_dir):
    res = run_pgvault("backup", f"dir={backup_dir}", "quiet=true", env=pgvault_env(small_db))
    assert res.returncode == 0, res.stderr
    assert res.stdout == "" and res.stderr == ""
    assert len(sets_in(backup_dir)) == 1


def test_two_backups_in_one_second_do_not_collide(small_db, backup_dir):
    env = pgvault_env(small_db)
    for _ in range(3):
        assert run_pgvault("backup", f"dir={backup_dir}", "quiet=true", env=env).returncode == 0
    sets = sets_in(backup_dir)
    assert len(sets) == 3 and all(len(files) == 4 for files in sets.values())


@pytest.mark.parametrize(
    ("compression", "suffix", "tool"), [("gzip", ".gz", "gzip"), ("zstd", ".zst", "zstd")]
)
def test_compressed_data_decompresses_to_the_counted_rows(
    small_db, backup_dir, compression, suffix, tool
):
    needs_tool(tool)
    res = run_pgvault(
        "backup", f"dir={backup_dir}", f"compression={compression}", env=pgvault_env(small_db)
    )
    assert res.returncode == 0, res.stderr
    (data,) = backup_dir.glob(f"backup-*-data.sql{suffix}")
    m = manifest_of(backup_dir)
    assert m["compression"] == compression
    assert m["files"]["data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    plain = subprocess.run([tool, "-d", "-c", str(data)], capture_output=True, check=True).stdout
    block = plain.split(b"COPY public.t (id, v) FROM stdin;\n", 1)[1].split(b"\\.\n", 1)[0]
    assert block.count(b"\n") == m["tables"]["public.t"]["rows"] == 1000


def test_writes_during_a_backup_stay_consistent(
    big_db, pg_cluster, other_cluster, server_programs, backup_dir
):
    """A writer keeps two tables in step (and changes the schema) during the backup: the
    restored database must show one moment, and the manifest must agree with the data."""
    name = create_database(pg_cluster, "busy")
    conn = pg_cluster.conn(name)
    run_sql(
        conn,
        "CREATE TABLE bulk AS SELECT i, md5(i::text) AS h FROM generate_series(1, 400000) i;"
        "CREATE TABLE orders (id bigserial PRIMARY KEY, amount int);"
        "CREATE TABLE totals (n bigint, s bigint); INSERT INTO totals VALUES (0, 0);",
    )
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with connect(conn, autocommit=True) as pg:
            while not stop.is_set():
                with pg.transaction():
                    pg.execute("INSERT INTO orders (amount) VALUES (7)")
                    pg.execute("UPDATE totals SET n = n + 1, s = s + 7")
                written[0] += 1
                if written[0] == 50:
                    pg.execute("CREATE TABLE added_during_backup (x int)")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while written[0] < 20:
            time.sleep(0.01)
        res = run_pgvault("backup", f"dir={backup_dir}", env=pgvault_env(conn))
    finally:
        stop.set()
        thread.join()
        drop_database(pg_cluster, name)
    assert res.returncode == 0, res.stderr
    m = manifest_of(backup_dir)
    target = create_database(other_cluster, "consistent")
    try:
        tconn = other_cluster.conn(target)
        files = {k: next(backup_dir.glob(f"*-{k}.sql")) for k in ("roles", "schema", "data")}
        plain_psql_restore(server_programs.path("psql"), tconn.conninfo, files)
        with connect(tconn, autocommit=True) as pg:
            n, s = pg.execute("SELECT n, s FROM totals").fetchone()
            orders, amount = pg.execute(
                "SELECT count(*), coalesce(sum(amount), 0) FROM orders"
            ).fetchone()
            (seq,) = pg.execute("SELECT last_value FROM orders_id_seq").fetchone()
        assert (orders, amount) == (n, s)
        assert m["tables"]["public.orders"]["rows"] == orders
        assert m["tables"]["public.totals"]["rows"] == 1
        assert 0 < orders < written[0]
        # The sequence kept moving after the snapshot; the manifest has what a restore sets.
        assert m["sequences"]["public.orders_id_seq"] == seq
    finally:
        drop_database(other_cluster, target)
    # And the set verifies, although the database was busy while it was written.
    res = run_pgvault("verify", f"dir={backup_dir}", env=pgvault_env())
    assert res.returncode == 0, res.stdout + res.stderr


def test_server_down_leaves_nothing(backup_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = pgvault_env(PGHOST="127.0.0.1", PGPORT=str(port), PGUSER="postgres", PGDATABASE="x")
    line = one_line_error(run_pgvault("backup", f"dir={backup_dir}", env=env))
    assert "does not appear to be running" in line and f"127.0.0.1:{port}" in line
    assert not backup_dir.exists()


def test_wrong_password_and_missing_database(pg_cluster, backup_dir):
    env = pgvault_env(pg_cluster.conn(tcp=True, user=PASSWORD_USER), PGPASSWORD="wrong")
    env["PGHOST"] = "127.0.0.1"
    line = one_line_error(run_pgvault("backup", f"dir={backup_dir}", env=env))
    assert "authentication failed" in line and PASSWORD_USER in line and "wrong" not in line
    env = pgvault_env(pg_cluster.conn("no_such_db"))
    line = one_line_error(run_pgvault("backup", f"dir={backup_dir}", env=env))
    assert "database 'no_such_db' does not exist" in line
    assert not backup_dir.exists()


def test_bad_directories(small_db, tmp_path):
    env = pgvault_env(small_db)
    line = one_line_error(run_pgvault("backup", env=env))
    assert "BACKUP_DIR is not set" in line
    line = one_line_error(run_pgvault("backup", "dir=relative/path", env=env, cwd=tmp_path))
    assert "absolute" in line
    assert not (tmp_path / "relative").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a directory" in one_line_error(run_pgvault("backup", f"dir={afile}", env=env))
    # BACKUP_DIR is the default for dir.
    res = run_pgvault("backup", env={**env, "BACKUP_DIR": str(tmp_path / "from_env")})
    assert res.returncode == 0, res.stderr
    assert len(sets_in(tmp_path / "from_env")) == 1


def test_unwritable_directory(small_db, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(locked)], check=True)  # root ignores modes
    else:
        locked.chmod(0o500)
    try:
        line = one_line_error(run_pgvault("backup", f"dir={locked}", env=pgvault_env(small_db)))
        assert "not writable" in line
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o700)
    assert list(locked.iterdir()) == []


def test_client_programs_older_than_the_server_are_refused(small_db, backup_dir, tmp_path):
    """A bin dir whose programs report an older major version: refused before any write."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for prog in ("pg_dump", "pg_dumpall", "psql"):
        (fake / prog).write_text(f"#!/bin/sh\necho '{prog} (PostgreSQL) 9.6.24'\n")
        (fake / prog).chmod(0o755)
    line = one_line_error(
        run_pgvault(
            "backup", f"dir={backup_dir}", f"clients.bindir={fake}", env=pgvault_env(small_db)
        )
    )
    assert "9.6.24" in line and "install the version" in line
    assert not backup_dir.exists()


def start_backup(conn, backup_dir: Path, **popen: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pgvault", "backup", f"dir={backup_dir}"],
        env=pgvault_env(conn),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        **popen,
    )


def _wait_for_partial_data(backup_dir: Path, proc: subprocess.Popen[str], size: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        for p in backup_dir.glob("*-data.sql.partial") if backup_dir.exists() else []:
            with contextlib.suppress(FileNotFoundError):
                if p.stat().st_size > size:
                    return
        time.sleep(0.02)
    raise AssertionError("the backup never got going")


def _children(parent: int, name: str) -> list[int]:
    """The pids of parent's child processes running the program name."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            comm, rest = (entry / "stat").read_text().rsplit(")", 1)
            if int(rest.split()[1]) == parent and comm.split("(", 1)[1] == name:
                found.append(int(entry.name))
    return found


def test_kill_9_during_the_data_dump_leaves_no_complete_looking_set(big_db, small_db, backup_dir):
    assert run_pgvault("backup", f"dir={backup_dir}", env=pgvault_env(small_db)).returncode == 0
    before = digest(backup_dir)
    proc = start_backup(big_db, backup_dir)
    _wait_for_partial_data(backup_dir, proc, 2 << 20)
    # pg_dump writes the data file itself: it must not go on without pgvault. Frozen, it
    # cannot finish by itself before the check.
    dumps = [
        pid for pid in _children(proc.pid, "pg_dump")
        if b"--data-only" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    ]  # fmt: skip
    assert dumps
    for pid in dumps:
        os.kill(pid, signal.SIGSTOP)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        deadline = time.monotonic() + 10
        while any(process_running(pid) for pid in dumps) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(process_running(pid) for pid in dumps)
    finally:
        for pid in dumps:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    after = digest(backup_dir)
    # The older set is untouched; what the killed run left is only .partial files (and
    # its start in the state file, which status reads).
    assert {k: v for k, v in after.items() if k in before} == before
    leftovers = set(after) - set(before)
    # The partial files, and the note that names them for the next backup.
    leftovers.discard(unfinished.NOTE)
    assert leftovers and all(name.endswith(".partial") for name in leftovers)
    status = run_pgvault("status", f"dir={backup_dir}", env=pgvault_env(small_db))
    assert status.returncode == 1
    assert "the last backup run of target local" in status.stdout
    assert "never finished: it was killed" in status.stdout
    # The next backup clears the leftovers and completes.
    res = run_pgvault("backup", f"dir={backup_dir}", "quiet=true", env=pgvault_env(small_db))
    assert res.returncode == 0, res.stderr
    assert not list(backup_dir.glob("*.partial"))
    assert all(len(files) == 4 for files in sets_in(backup_dir).values())


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_disk_full_removes_the_partial_set(big_db, small_db, backup_dir, compression):
    """The dump fails half-way (the file may not grow past 4 MiB): no partial set stays,
    and retention does not run, so a set older than retention.days survives too. The
    write error is what is reported, never the compressor the writer killed because of
    it (that race made gzip say "killed by signal 9" every time)."""
    needs_tool(compression)
    assert run_pgvault("backup", f"dir={backup_dir}", env=pgvault_env(small_db)).returncode == 0
    (prefix,) = sets_in(backup_dir)
    copy_set(backup_dir, prefix, "backup-2001-01-01-000000")
    before = digest(backup_dir)

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    res = run_pgvault(
        "backup", f"dir={backup_dir}", f"compression={compression}",
        env=pgvault_env(big_db), preexec_fn=small_disk,
    )  # fmt: skip
    line = one_line_error(res)
    assert f"cannot write the backup into {backup_dir}: File too large" in line, line
    assert digest(backup_dir) == before


def test_two_concurrent_backups(big_db, backup_dir):
    first = start_backup(big_db, backup_dir)
    _wait_for_partial_data(backup_dir, first, 1 << 20)
    # Freeze the first mid-dump, so the second surely starts while it runs.
    first.send_signal(signal.SIGSTOP)
    try:
        second = run_pgvault("backup", f"dir={backup_dir}", env=pgvault_env(big_db))
    finally:
        first.send_signal(signal.SIGCONT)
    line = one_line_error(second)
    assert "another pgvault backup" in line and "lock_timeout" in line
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    sets = sets_in(backup_dir)
    assert len(sets) == 1 and all(len(files) == 4 for files in sets.values())


def test_password_stays_out_of_argv_files_and_config(big_db, pg_cluster, backup_dir):
    """Backs up over TCP with a scram password in target.url; while it runs, no process's
    argv holds the password, and afterwards no file in the directory does."""
    url = f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{pg_cluster.port}/{big_db.dbname}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "backup", f"dir={backup_dir}", f"target.url={url}"],
        env=pgvault_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_pg_dump = False
    while proc.poll() is None:
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == proc.pid:
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"pg_dump" in argv:
                    seen_pg_dump = True
                    assert PASSWORD.encode() not in argv
        time.sleep(0.01)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert seen_pg_dump
    for p in backup_dir.iterdir():
        assert PASSWORD.encode() not in p.read_bytes(), p.name
    shown = run_pgvault("backup", "--cfg", "job", f"target.url={url}", env=pgvault_env())
    assert shown.returncode == 0 and PASSWORD not in shown.stdout and "****" in shown.stdout


def copy_set(directory: Path, prefix: str, new_prefix: str) -> None:
    for p in directory.glob(f"{prefix}-*"):
        target = directory / p.name.replace(prefix, new_prefix)
        if p.name.endswith("-manifest.json"):
            m = json.loads(p.read_text())
            m["prefix"] = new_prefix
            for f in m["files"].values():
                f["name"] = f["name"].replace(prefix, new_prefix)
            target.write_text(json.dumps(m))
        else:
            shutil.copy(p, target)


def test_retention_runs_after_success_and_never_after_failure(small_db, backup_dir):
    env = pgvault_env(small_db)
    assert run_pgvault("backup", f"dir={backup_dir}", env=env).returncode == 0
    (prefix,) = sets_in(backup_dir)
    old = "backup-2001-01-01-000000"
    copy_set(backup_dir, prefix, old)
    (backup_dir / "notes.txt").write_text("mine")
    (backup_dir / "backup-2001-01-01-000000-data.sql.bak").write_text("also mine")

    down = {**env, "PGPORT": "1"}
    one_line_error(run_pgvault("backup", f"dir={backup_dir}", env=down))
    assert old in sets_in(backup_dir)

    res = run_pgvault("backup", f"dir={backup_dir}", env=env)
    assert res.returncode == 0, res.stderr
    assert "✓ Cleaned up 1 old backup set(s) (4 files)" in res.stdout
    assert old not in {p for p in sets_in(backup_dir) if len(sets_in(backup_dir)[p]) == 4}
    assert (backup_dir / "notes.txt").exists()
    assert (backup_dir / "backup-2001-01-01-000000-data.sql.bak").exists()
    res = run_pgvault("backup", f"dir={backup_dir}", env=env)
    assert "✓ No old backups to clean up" in res.stdout


def test_a_terminal_sees_a_progress_line(big_db, backup_dir):
    """On a terminal (a real pty here) the data dump shows a bar on stderr: bytes of an
    estimated total, the rate and the time left."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "backup", f"dir={backup_dir}"],
        env={**pgvault_env(big_db), "TERM": "xterm", "COLUMNS": "120"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        text=True,
    )
    os.close(follower)
    seen = b""
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:
            break
        if not data:
            break
        seen += data
    os.close(leader)
    out, _ = proc.communicate()
    assert proc.returncode == 0
    assert b"  data " in seen and b"MB/s" in seen and b"ETA" in seen
    assert re.search(rb"\d+(\.\d+)?/\d+(\.\d+)? MB", seen)
    assert "Backup completed successfully" in out


def test_a_role_that_is_not_a_superuser_backs_up_without_role_passwords(small_db, backup_dir):
    """Supabase's `postgres` is no superuser: pg_dumpall may not read pg_authid."""
    run_sql(
        small_db,
        "DO $$BEGIN CREATE ROLE plain_backup LOGIN;"
        " EXCEPTION WHEN duplicate_object THEN NULL; END$$;"
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO plain_backup;",
    )
    env = {**pgvault_env(small_db), "PGUSER": "plain_backup"}
    res = run_pgvault("backup", f"dir={backup_dir}", env=env)
    assert res.returncode == 0, res.stderr
    assert "not a superuser" in res.stderr and "role passwords" in res.stderr
    m = manifest_of(backup_dir)
    assert m["role_passwords"] is False and m["tables"]["public.t"]["rows"] == 1000
    roles = next(backup_dir.glob("*-roles.sql")).read_text()
    assert "CREATE ROLE plain_backup" in roles and "PASSWORD" not in roles
