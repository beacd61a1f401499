"""Out-of-range values are refused before anything runs, and a table another session
holds locked makes a backup give up after table_lock_timeout, naming the table."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgvault.connection import Conn, connect
from tests.conftest import one_line_error, pgvault_env, run_pgvault, run_sql


@contextlib.contextmanager
def holding(conn: Conn, statement: str) -> Iterator[None]:
    """Run statement in another session's open transaction, which keeps its locks until
    the block ends."""
    release, locked = threading.Event(), threading.Event()

    def hold() -> None:
        with connect(conn) as pg:
            pg.execute(statement)
            locked.set()
            release.wait(120)
            pg.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(30)
        yield
    finally:
        release.set()
        holder.join()


@pytest.mark.parametrize(
    ("arg", "key"),
    [
        ("retention.days=1000000000", "retention.days"),
        ("retention.keep_daily=-1", "retention.keep_daily"),
        ("lock_timeout=nan", "lock_timeout"),
        ("lock_timeout=inf", "lock_timeout"),
        ("backup.table_lock_timeout=0", "backup.table_lock_timeout"),
    ],
)
def test_out_of_range_values_are_refused_before_anything(empty_db, tmp_path: Path, arg, key):
    directory = tmp_path / "bk"
    res = run_pgvault("backup", f"dir={directory}", arg, env=pgvault_env(empty_db), timeout=60)
    line = one_line_error(res)
    assert res.returncode == 2
    assert key in line
    assert not directory.exists()  # nothing written, not even the directory


def test_a_locked_table_makes_the_backup_give_up_and_name_it(empty_db, tmp_path: Path):
    run_sql(empty_db, "CREATE TABLE busy (id int); CREATE TABLE calm (id int)")
    directory = tmp_path / "bk"
    env = pgvault_env(empty_db)
    with holding(empty_db, "LOCK TABLE busy IN ACCESS EXCLUSIVE MODE"):
        res = run_pgvault(
            "backup", f"dir={directory}", "backup.table_lock_timeout=2", env=env, timeout=120
        )
    line = one_line_error(res)
    assert "public.busy" in line and "locked by another session" in line
    assert "backup.table_lock_timeout" in line
    assert not list(directory.glob("backup-*"))  # no set, not even a partial one
    # The directory's lock went with the run: the next backup goes through.
    res = run_pgvault("backup", f"dir={directory}", "quiet=true", env=env, timeout=120)
    assert res.returncode == 0, res.stderr


def test_a_backup_removes_planted_partial_links_and_never_their_targets(empty_db, tmp_path):
    """A stale or planted `*.partial` of pgvault's naming goes, a symlink as a link: the
    file it points at is untouched."""
    directory = tmp_path / "bk"
    directory.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    link = directory / "backup-2020-01-01-000000-data.sql.partial"
    link.symlink_to(victim)
    res = run_pgvault("backup", f"dir={directory}", "quiet=true", env=pgvault_env(empty_db))
    assert res.returncode == 0, res.stderr
    assert not link.is_symlink() and not link.exists()
    assert victim.read_text() == "keep me"


def test_a_locked_table_makes_the_restore_give_up_and_change_nothing(empty_db, tmp_path):
    """The wipe waits for a table an open transaction has read; it gives up after
    restore.table_lock_timeout with the table's name, and the database is as it was."""
    run_sql(empty_db, "CREATE TABLE notes (id int); INSERT INTO notes VALUES (1), (2)")
    directory = tmp_path / "bk"
    env = pgvault_env(empty_db)
    res = run_pgvault("backup", f"dir={directory}", "quiet=true", env=env)
    assert res.returncode == 0, res.stderr
    run_sql(empty_db, "INSERT INTO notes VALUES (3)")
    # ACCESS SHARE on notes until that transaction ends.
    with holding(empty_db, "SELECT count(*) FROM notes"):
        res = run_pgvault(
            "restore", f"dir={directory}", "prefix=latest", "yes=true",
            "restore.safety_backup=false", "restore.table_lock_timeout=2", env=env, timeout=120,
        )  # fmt: skip
    line = one_line_error(res)
    assert "public.notes" in line and "restore.table_lock_timeout" in line
    assert f"{empty_db.dbname} is unchanged" in line
    with connect(empty_db) as pg:
        assert pg.execute("SELECT count(*) FROM notes").fetchone() == (3,)
