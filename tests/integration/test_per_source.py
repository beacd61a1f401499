"""Retention, "latest" and verify's default set per source database, with the sets of
several databases in one directory (as `--multirun target=a,b` writes them), through the
real CLI on real clusters; and `prune incomplete=true` on what killed backups leave.

Old sets are made as the other tests make them: a real set renamed to an older prefix,
its manifest rewritten to match (retention dates a set by its name)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pgvault import catalog, naming, runstate
from pgvault.connection import connect
from tests.conftest import (
    create_database,
    drop_database,
    one_line_error,
    pgvault_env,
    run_pgvault,
    run_sql,
)

DAY = timedelta(days=1)


@pytest.fixture(scope="module")
def two_dbs(pg_cluster):
    """Databases a and b, each with a table of its own: name -> URL."""
    names = {}
    for label in ("a", "b"):
        name = create_database(pg_cluster, f"src_{label}")
        run_sql(
            pg_cluster.conn(name),
            f"CREATE TABLE only_{label} (id int PRIMARY KEY, v text);"
            f"INSERT INTO only_{label} SELECT i, '{label}' || i FROM generate_series(1, 50) i;",
        )
        names[label] = name
    yield {label: pg_cluster.url(name) for label, name in names.items()}, names
    for name in names.values():
        drop_database(pg_cluster, name)


def backup(directory: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    res = run_pgvault("backup", f"dir={directory}", f"target.url={url}", *args, env=pgvault_env())
    assert res.returncode == 0, res.stderr
    return res


def newest_prefix(directory: Path) -> str:
    return max(s.prefix for s in catalog.scan(directory))


def age_set(directory: Path, prefix: str, age: timedelta, *, format_1: bool = False) -> str:
    """Rename a set to a prefix age before now, rewriting its manifest to match; with
    format_1, as an old pgvault wrote it (no server, no kind, no data_raw_bytes)."""
    new = naming.format_prefix(datetime.now(UTC) - age)
    mpath = directory / naming.file_name(prefix, "manifest")
    manifest = json.loads(mpath.read_text())
    manifest["prefix"] = new
    for entry in manifest["files"].values():
        entry["name"] = entry["name"].replace(prefix, new)
    if format_1:
        manifest["format"] = 1
        for key in ("server", "kind", "data_raw_bytes"):
            del manifest[key]
    for p in directory.iterdir():
        if p.name.startswith(prefix + "-") and p != mpath:
            p.rename(p.with_name(p.name.replace(prefix, new)))
    (directory / naming.file_name(new, "manifest")).write_text(json.dumps(manifest))
    mpath.unlink()
    return new


def database_of(directory: Path, prefix: str) -> str:
    (bset,) = [s for s in catalog.scan(directory) if s.prefix == prefix]
    assert bset.manifest is not None
    return bset.manifest.database


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if not p.is_symlink() else "link"
        for p in sorted(directory.iterdir())
        if p.name not in (catalog.LOCK_NAME, runstate.STATE_FILE)  # no set's: every run updates it
    }


# -- The case: a backup of b must not prune a's sets ---------------------------


def test_a_backup_of_one_database_never_prunes_anothers_sets(two_dbs, tmp_path):
    urls, names = two_dbs
    bk = tmp_path / "bk"
    backup(bk, urls["a"])
    legacy = age_set(bk, newest_prefix(bk), 20 * DAY, format_1=True)  # no server recorded
    backup(bk, urls["a"])
    a_set = age_set(bk, newest_prefix(bk), 10 * DAY)  # a's newest set is 10 days old
    (bk / naming.file_name(naming.format_prefix(datetime.now(UTC) - 30 * DAY), "roles")).write_text(
        "-- a set whose source cannot be told (no manifest)"
    )
    before = digest(bk)

    res = backup(bk, urls["b"])
    # Before the fix: "Cleaned up 1 old backup set(s)", and no set of a was left.
    assert "No old backups to clean up for " + names["b"] in res.stdout, res.stdout
    assert {k: v for k, v in digest(bk).items() if k in before} == before
    by_db = {s.prefix: database_of(bk, s.prefix) for s in catalog.scan(bk) if s.complete}
    assert by_db[a_set] == names["a"] and by_db[legacy] == names["a"]

    # b's own old set goes with b's next backup; a's stay.
    b_old = age_set(bk, newest_prefix(bk), 9 * DAY)
    res = backup(bk, urls["b"])
    assert f"Cleaned up 1 old backup set(s) (4 files) for {names['b']}" in res.stdout
    assert not list(bk.glob(b_old + "-*"))
    assert {k: v for k, v in digest(bk).items() if k in before} == before

    # a's backup prunes a's 10-day-old set, never the format-1 set nor the unknown one.
    res = backup(bk, urls["a"])
    assert f"Cleaned up 1 old backup set(s) (4 files) for {names['a']}" in res.stdout
    left = {s.prefix: s for s in catalog.scan(bk)}
    assert a_set not in left and legacy in left and left[legacy].complete
    assert sum(1 for s in left.values() if not s.complete) == 1
    assert sorted(database_of(bk, p) for p, s in left.items() if s.complete) == sorted(
        [names["a"], names["a"], names["b"]]
    )


def test_prune_applies_the_policy_to_each_source_apart(two_dbs, tmp_path):
    urls, names = two_dbs
    bk = tmp_path / "bk"
    made = {}
    for label, ages in (("a", (10, 20)), ("b", (0, 15)), ("legacy", (30, 40))):
        for days in ages:
            backup(bk, urls["b" if label == "b" else "a"], "retention.keep_last=9")
            if days:
                made[label, days] = age_set(bk, newest_prefix(bk), days * DAY,
                                            format_1=label == "legacy")  # fmt: skip
            else:
                made[label, days] = newest_prefix(bk)
    before = digest(bk)
    res = run_pgvault("prune", f"dir={bk}", "dry_run=true", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert digest(bk) == before
    verdicts = {w[1]: w[0] for w in (ln.split() for ln in res.stdout.splitlines()) if len(w) > 2}
    # Each source keeps its own newest set, however old; the rest of each goes by age.
    gone = {made["a", 20], made["b", 15], made["legacy", 40]}
    assert {p for p, v in verdicts.items() if v == "delete"} == gone
    assert {p for p, v in verdicts.items() if v == "keep"} == set(made.values()) - gone
    headings = [ln.strip() for ln in res.stdout.splitlines() if ln.endswith(":")]
    assert len(headings) == 4  # the "Retention in ..." line and one per source
    assert any(names["a"] in h and "server not recorded" in h for h in headings)
    res = run_pgvault("prune", f"dir={bk}", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert "Cleaned up 3 old backup set(s) (12 files)" in res.stdout
    assert {s.prefix for s in catalog.scan(bk)} == set(made.values()) - gone
    for prefix in gone:
        assert f"deleted {prefix}" in res.stdout


# -- "latest" and verify's default: the configured target's newest set -----------------


@pytest.fixture
def a_then_b(two_dbs, tmp_path):
    """a's set, older; then b's, newer."""
    urls, _ = two_dbs
    bk = tmp_path / "bk"
    backup(bk, urls["a"])
    a_set = age_set(bk, newest_prefix(bk), 2 * DAY)
    backup(bk, urls["b"])
    return bk, a_set, newest_prefix(bk)


def test_verify_takes_the_targets_newest_set_not_a_newer_one_of_another_database(two_dbs, a_then_b):
    urls, _ = two_dbs
    bk, a_set, b_set = a_then_b
    res = run_pgvault("verify", f"dir={bk}", f"target.url={urls['a']}", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert f"{a_set} verified" in res.stdout and b_set not in res.stdout
    assert (bk / naming.file_name(a_set, "verify")).exists()
    assert not (bk / naming.file_name(b_set, "verify")).exists()


def test_latest_of_a_target_with_no_set_among_several_databases_is_refused(
    two_dbs, a_then_b, pg_cluster
):
    bk, _, _ = a_then_b
    other = pg_cluster.url("postgres")
    before = digest(bk)
    for args in (
        ("verify",),
        ("verify", "prefix=latest"),
        ("restore", "prefix=latest", "yes=true"),
    ):
        res = run_pgvault(*args, f"dir={bk}", f"target.url={other}", env=pgvault_env())
        line = one_line_error(res)
        assert "'latest' is ambiguous" in line and "2 databases" in line
    assert digest(bk) == before


def test_restore_latest_never_restores_another_databases_newer_set(two_dbs, a_then_b, pg_cluster):
    urls, names = two_dbs
    bk, a_set, b_set = a_then_b
    conn = pg_cluster.conn(names["a"])
    run_sql(conn, "INSERT INTO only_a VALUES (1000, 'after the backup')")
    res = run_pgvault(
        "restore", f"dir={bk}", f"target.url={urls['a']}", "prefix=latest", "yes=true",
        "restore.safety_backup=false", env=pgvault_env(),
    )  # fmt: skip
    with connect(conn) as pg:
        tables = {
            r[0] for r in pg.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        rows = pg.execute("SELECT count(*) FROM only_a").fetchone()
    # b's set (newer) must never land in a: before the fix it did, and only_a was gone.
    assert tables == {"only_a"}, (tables, res.stderr)
    assert res.returncode == 0, res.stderr  # a's own set, the older one
    assert a_set in res.stdout and b_set not in res.stdout
    assert rows == (50,)
    run_sql(conn, "DELETE FROM only_a WHERE id = 1000")


# -- prune incomplete=true --------------------------------------------------------------


def plant_leftover(bk: Path, complete: str, age: timedelta, mtime_age: timedelta) -> str:
    """A set killed between its renames and its manifest: a real set's SQL files under an
    older prefix, no manifest, files last written mtime_age ago."""
    new = naming.format_prefix(datetime.now(UTC) - age)
    stamp = (datetime.now(UTC) - mtime_age).timestamp()
    for kind in naming.SQL_KINDS:
        src = bk / naming.file_name(complete, kind)
        dst = bk / naming.file_name(new, kind)
        dst.write_bytes(src.read_bytes())
        os.utime(dst, (stamp, stamp))
    return new


def prune_lines(res: subprocess.CompletedProcess[str]) -> dict[str, str]:
    out = {}
    for line in res.stdout.splitlines():
        words = line.split()
        if len(words) > 2 and words[0] in ("keep", "delete", "deleted"):
            out[words[1]] = line
    return out


def test_prune_incomplete_deletes_stale_leftovers_only(two_dbs, tmp_path):
    urls, _ = two_dbs
    bk = tmp_path / "bk"
    backup(bk, urls["a"])
    complete = age_set(bk, newest_prefix(bk), 5 * DAY)
    stale = plant_leftover(bk, complete, 3 * DAY, 2 * DAY)
    fresh_files = plant_leftover(bk, complete, 4 * DAY, timedelta(hours=1))
    young = plant_leftover(bk, complete, timedelta(hours=6), 2 * DAY)
    old_stamp = (datetime.now(UTC) - 9 * DAY).timestamp()
    (bk / "notes.txt").write_text("mine")
    (bk / "backup-2001-01-01-000000-data.sql.bak").write_text("also mine")
    elsewhere = tmp_path / "elsewhere.sql"
    elsewhere.write_text("precious")
    (bk / "backup-2001-01-01-000000-roles.sql").symlink_to(elsewhere)
    for name in ("notes.txt", "backup-2001-01-01-000000-data.sql.bak"):
        os.utime(bk / name, (old_stamp, old_stamp))
    before = digest(bk)

    plain = run_pgvault("prune", f"dir={bk}", env=pgvault_env())
    assert plain.returncode == 0 and digest(bk) == before
    assert "incomplete=true deletes incomplete sets" in plain.stdout

    dry = run_pgvault("prune", f"dir={bk}", "incomplete=true", "dry_run=true", env=pgvault_env())
    assert dry.returncode == 0, dry.stderr
    assert digest(bk) == before
    lines = prune_lines(dry)
    assert lines[stale].split()[0] == "delete" and "untouched for over a day" in lines[stale]
    for kept in (complete, fresh_files, young):
        assert lines[kept].split()[0] == "keep", lines[kept]
    assert "would clean up 1 old backup set(s) (3 files), 1 of them incomplete" in dry.stdout

    res = run_pgvault("prune", f"dir={bk}", "incomplete=true", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert f"deleted {stale}" in res.stdout
    assert "Cleaned up 1 old backup set(s) (3 files), 1 of them incomplete" in res.stdout
    after = digest(bk)
    assert {k: v for k, v in before.items() if not k.startswith(stale)} == after
    assert elsewhere.read_text() == "precious"


def test_prune_incomplete_leaves_a_set_in_progress(two_dbs, tmp_path):
    """While a pgvault process holds the directory, the newest set without a manifest
    may be a backup's between its renames and its manifest: a dry run keeps it, and a
    real prune waits for the lock (here: fails at once) instead of deleting anything."""
    urls, _ = two_dbs
    bk = tmp_path / "bk"
    backup(bk, urls["a"])
    complete = age_set(bk, newest_prefix(bk), 5 * DAY)
    older = plant_leftover(bk, complete, 4 * DAY, 3 * DAY)
    newest = plant_leftover(bk, complete, 2 * DAY, 2 * DAY)
    before = digest(bk)
    with catalog.locked(bk, what="backup"):
        dry = run_pgvault(
            "prune", f"dir={bk}", "incomplete=true", "dry_run=true", env=pgvault_env()
        )
        assert dry.returncode == 0, dry.stderr
        lines = prune_lines(dry)
        assert lines[newest].split()[0] == "keep" and lines[older].split()[0] == "delete"
        line = one_line_error(
            run_pgvault("prune", f"dir={bk}", "incomplete=true", env=pgvault_env())
        )
        assert "another pgvault backup" in line
    assert digest(bk) == before
    res = run_pgvault("prune", f"dir={bk}", "incomplete=true", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert {s.prefix for s in catalog.scan(bk)} == {complete}


def test_prune_incomplete_during_a_real_backup_and_after_its_kill(big_db, tmp_path):
    """A backup that is running is never touched; once it is killed -9 and its leftovers
    are more than a day old, prune incomplete=true removes them."""
    bk = tmp_path / "bk"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "backup", f"dir={bk}"],
        env=pgvault_env(big_db), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(bk.glob("*-data.sql.partial")) if bk.exists() else True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)  # mid-dump, holding the directory, for as long as we need
    dry = run_pgvault("prune", f"dir={bk}", "incomplete=true", "dry_run=true", env=pgvault_env())
    busy = run_pgvault("prune", f"dir={bk}", "incomplete=true", env=pgvault_env())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert dry.returncode == 0 and "delete " not in dry.stdout, dry.stdout
    assert "another pgvault backup" in one_line_error(busy)
    (killed,) = {p.name[:24] for p in bk.glob("backup-*")}
    assert all(p.name.endswith(".partial") for p in bk.glob("backup-*"))
    # A day later: the same leftovers, older by name and by mtime.
    new = naming.format_prefix(datetime.now(UTC) - 2 * DAY)
    stamp = (datetime.now(UTC) - 2 * DAY).timestamp()
    for p in list(bk.glob(killed + "-*")):
        moved = p.rename(p.with_name(p.name.replace(killed, new)))
        os.utime(moved, (stamp, stamp))
    res = run_pgvault("prune", f"dir={bk}", "incomplete=true", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert f"deleted {new}" in res.stdout and "1 of them incomplete" in res.stdout
    assert not list(bk.glob("backup-*"))
