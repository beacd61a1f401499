"""`pgvault list` and `pgvault prune` on real sets written by the real backup (in process,
with a clock handed in, so sets of any age exist without waiting), next to foreign files,
partial sets, damaged sets, sets from the future and the leftovers of an interrupted prune."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pgvault import catalog, naming, runstate
from pgvault.backup import take_backup
from pgvault.config import Compression, PgvaultConfig, RetentionConfig, TargetConfig
from pgvault.errors import PgvaultError
from pgvault.ui import Reporter
from tests.conftest import (
    create_database,
    drop_database,
    needs_tool,
    one_line_error,
    pgvault_env,
    run_pgvault,
    run_sql,
)

NOW = datetime.now(UTC).replace(microsecond=0)
# label -> age of the set at NOW; "future" is a set written while the clock ran ahead.
AGES = {
    "future": -timedelta(days=2),
    "fresh": timedelta(hours=2),
    "recent": timedelta(days=3),
    "old": timedelta(days=10),
    "ancient": timedelta(days=40),
}
FOREIGN = ("notes.txt", "backup-2001-01-01-000000-data.sql.bak", "backup-latest")


@pytest.fixture(scope="module")
def source(pg_cluster):
    name = create_database(pg_cluster, "listing")
    run_sql(
        pg_cluster.conn(name),
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT i, md5(i::text) FROM generate_series(1, 2000) i;",
    )
    yield pg_cluster.url(name)
    drop_database(pg_cluster, name)


def verify_record(checked_at: str) -> dict[str, object]:
    return {"verdict": "verified", "checked_at": checked_at, "duration_s": 1.0,
            "server_version": "15.0", "tables": 3, "rows": 10, "problems": []}  # fmt: skip


def config(directory: Path, url: str, **overrides: object) -> PgvaultConfig:
    cfg = PgvaultConfig(dir=str(directory), target=TargetConfig(name="local", url=url))
    for key, value in overrides.items():
        if key == "compression":
            cfg.backup.compression = value  # type: ignore[assignment]
        else:
            setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def made(tmp_path_factory, source) -> tuple[Path, dict[str, str]]:
    """One real set per age (the "recent" one zstd-compressed), written once per module."""
    needs_tool("zstd")
    directory = tmp_path_factory.mktemp("made") / "backups"
    prefixes = {}
    for label, age in AGES.items():
        comp = Compression.zstd if label == "recent" else Compression.none
        cfg = config(directory, source, compression=comp)
        result = take_backup(
            cfg, Reporter(quiet=True), clock=lambda w=NOW - age: w, apply_retention=False
        )
        prefixes[label] = result.prefix
    return directory, prefixes


@pytest.fixture
def sets(made, tmp_path) -> tuple[Path, dict[str, str]]:
    """A fresh copy of the made sets, plus files that are not pgvault's."""
    src, prefixes = made
    directory = tmp_path / "backups"
    shutil.copytree(src, directory)
    (directory / "notes.txt").write_text("mine")
    (directory / "backup-2001-01-01-000000-data.sql.bak").write_text("also mine")
    # A symlink named like a pgvault file: prune must not follow or remove it.
    target = tmp_path / "elsewhere.sql"
    target.write_text("precious")
    (directory / "backup-latest").symlink_to(target)
    os.symlink(target, directory / "backup-2001-01-01-000000-roles.sql")
    return directory, prefixes


def digest(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.name not in (catalog.LOCK_NAME, runstate.STATE_FILE)  # no set's: every run updates it
    }


def files_of(directory: Path, prefix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(prefix + "-"))


def list_json(directory: Path, *args: str) -> dict:
    """The JSON list; with check=true a set that needs a look makes the exit code 1."""
    res = run_pgvault("list", f"dir={directory}", "format=json", *args, env=pgvault_env())
    doc = json.loads(res.stdout)
    bad = any(s["status"] in ("incomplete", "damaged") for s in doc["sets"])
    assert res.returncode == (1 if "check=true" in args and bad else 0), res.stderr
    return doc


def by_prefix(doc: dict) -> dict[str, dict]:
    return {s["prefix"]: s for s in doc["sets"]}


def set_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if naming.is_prefix(line[:24])]


def test_list_shows_every_set_newest_first_in_local_time(sets):
    directory, prefixes = sets
    before = digest(directory)
    res = run_pgvault("list", f"dir={directory}", env=pgvault_env(TZ="XST-05:30"))
    assert res.returncode == 0, res.stderr
    lines = set_lines(res.stdout)
    assert [line[:24] for line in lines] == sorted(prefixes.values(), reverse=True)
    for label, prefix in prefixes.items():
        (line,) = [line for line in lines if line.startswith(prefix)]
        local = naming.parse_prefix(prefix) + timedelta(hours=5, minutes=30)
        assert local.strftime("%Y-%m-%d %H:%M:%S") in line, line
        assert " complete " in line and "never" in line
        assert ("zstd" in line) == (label == "recent")
    for name in FOREIGN:
        assert name not in res.stdout
    assert digest(directory) == before


def test_list_reads_backup_dir_by_default(sets):
    directory, prefixes = sets
    res = run_pgvault("list", env=pgvault_env(BACKUP_DIR=str(directory)))
    assert res.returncode == 0, res.stderr
    assert len(set_lines(res.stdout)) == len(prefixes)


def test_list_json_has_exact_sizes_and_utc_times(sets):
    directory, prefixes = sets
    prefix = prefixes["recent"]
    record = directory / naming.file_name(prefix, "verify")
    record.write_text(json.dumps(verify_record("2026-01-02T03:04:05Z")))
    doc = list_json(directory)
    assert doc["directory"] == str(directory)
    assert [s["prefix"] for s in doc["sets"]] == sorted(prefixes.values(), reverse=True)
    for label, p in prefixes.items():
        s = by_prefix(doc)[p]
        on_disk = files_of(directory, p)
        assert s["size_bytes"] == sum(f.stat().st_size for f in on_disk)
        assert {f["name"] for f in s["files"]} == {f.name for f in on_disk}
        when = naming.parse_prefix(p)
        assert datetime.fromisoformat(s["time"].replace("Z", "+00:00")) == when
        assert s["status"] == "complete" and s["problem"] is None
        assert s["compression"] == ("zstd" if label == "recent" else "none")
        assert (s["age_seconds"] < 0) == (label == "future")
    assert by_prefix(doc)[prefix]["verification"] == "verified"
    assert by_prefix(doc)[prefix]["verification_checked_at"] == "2026-01-02T03:04:05Z"
    # A garbled record is "never", and listing does not fail because of it.
    record.write_bytes(b"\x00{not json")
    assert by_prefix(list_json(directory))[prefix]["verification"] == "never"


def test_check_true_shows_a_set_whose_checksum_disagrees_as_damaged(sets):
    directory, prefixes = sets
    data = directory / naming.file_name(prefixes["old"], "data")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes: only a checksum can tell
    data.write_bytes(bytes(raw))
    assert by_prefix(list_json(directory))[prefixes["old"]]["status"] == "complete"
    checked = by_prefix(list_json(directory, "check=true"))
    assert checked[prefixes["old"]]["status"] == "damaged"
    assert "data.sql" in checked[prefixes["old"]]["problem"]
    assert all(s["status"] == "complete" for p, s in checked.items() if p != prefixes["old"])
    res = run_pgvault("list", f"dir={directory}", "check=true", env=pgvault_env())
    (line,) = [line for line in set_lines(res.stdout) if line.startswith(prefixes["old"])]
    assert "damaged" in line
    assert res.returncode == 1 and "1 set(s) need a look" in res.stderr
    # A damaged set is reported, never deleted by age (check applies to prune too).
    res = run_pgvault("prune", f"dir={directory}", "check=true", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert data.exists() and prefixes["old"] in res.stderr


def test_a_truncated_file_shows_as_damaged_without_check(sets):
    directory, prefixes = sets
    schema = directory / naming.file_name(prefixes["ancient"], "schema")
    schema.write_bytes(schema.read_bytes()[:100])
    s = by_prefix(list_json(directory))[prefixes["ancient"]]
    assert s["status"] == "damaged" and "schema.sql" in s["problem"]


def test_a_partial_set_is_in_progress_only_while_the_directory_is_locked(sets):
    directory, prefixes = sets
    prefix = naming.format_prefix(NOW + timedelta(days=3))
    src = directory / naming.file_name(prefixes["fresh"], "data")
    shutil.copy(src, directory / (naming.file_name(prefix, "data") + naming.PARTIAL_SUFFIX))
    s = by_prefix(list_json(directory))[prefix]
    assert s["status"] == "incomplete" and s["files"][0]["partial"]
    before = digest(directory)
    with catalog.locked(directory, what="backup"):
        assert by_prefix(list_json(directory))[prefix]["status"] == "in progress"
        # prune takes the lock: it waits for no backup and deletes nothing meanwhile.
        line = one_line_error(run_pgvault("prune", f"dir={directory}", env=pgvault_env()))
        assert "another pgvault backup" in line
    assert digest(directory) == before
    assert by_prefix(list_json(directory))[prefix]["status"] == "incomplete"


def test_an_interrupted_prune_leaves_a_set_that_lists_as_incomplete(sets):
    directory, prefixes = sets
    (directory / naming.file_name(prefixes["old"], "manifest")).unlink()
    s = by_prefix(list_json(directory))[prefixes["old"]]
    assert s["status"] == "incomplete" and "manifest.json" in s["problem"]
    res = run_pgvault("prune", f"dir={directory}", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    # Reported, not deleted by age; the complete ancient set goes.
    assert prefixes["old"] in res.stderr and "incomplete" in res.stderr
    assert len(files_of(directory, prefixes["old"])) == 3
    assert files_of(directory, prefixes["ancient"]) == []


def test_prune_dry_run_shows_each_decision_and_deletes_nothing(sets):
    directory, prefixes = sets
    before = digest(directory)
    res = run_pgvault("prune", f"dir={directory}", "dry_run=true", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert digest(directory) == before
    verdicts = {}
    for line in res.stdout.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0] in ("keep", "delete"):
            verdicts[words[1]] = (words[0], line)
    assert set(verdicts) == set(prefixes.values())
    for label in ("old", "ancient"):
        action, line = verdicts[prefixes[label]]
        assert action == "delete" and "7 days" in line
    for label in ("future", "fresh", "recent"):
        assert verdicts[prefixes[label]][0] == "keep"
    assert "future" in verdicts[prefixes["future"]][1]


def test_prune_applies_the_policy_and_leaves_foreign_files(sets):
    directory, prefixes = sets
    foreign = {n: h for n, h in digest(directory).items() if not naming.parse_file_name(n)}
    foreign_links = {n: os.readlink(directory / n) for n in foreign if (directory / n).is_symlink()}
    res = run_pgvault("prune", f"dir={directory}", env=pgvault_env())
    assert res.returncode == 0, res.stderr
    assert "Cleaned up 2 old backup set(s) (8 files)" in res.stdout
    left = {s.prefix for s in catalog.scan(directory)}
    assert left == {prefixes[k] for k in ("future", "fresh", "recent")}
    assert all(s.complete for s in catalog.scan(directory))
    after = digest(directory)
    assert {n: after[n] for n in foreign} == foreign
    assert {n: os.readlink(directory / n) for n in foreign_links} == foreign_links
    res = run_pgvault("prune", f"dir={directory}", env=pgvault_env())
    assert "No old backups to clean up" in res.stdout


def test_keep_rules_and_the_newest_verified_set_through_the_cli(sets):
    directory, prefixes = sets
    verify = directory / naming.file_name(prefixes["ancient"], "verify")
    verify.write_text(json.dumps(verify_record(NOW.isoformat())))
    res = run_pgvault(
        "prune",
        f"dir={directory}",
        "retention.days=0",
        "retention.keep_last=1",
        env=pgvault_env(),
    )
    assert res.returncode == 0, res.stderr
    left = {s.prefix for s in catalog.scan(directory)}
    # The future set is kept aside; keep_last counts the fresh one; the ancient set was
    # the newest that passed a verify.
    assert left == {prefixes[k] for k in ("future", "fresh", "ancient")}


def test_retention_runs_after_a_backup_and_never_after_a_failed_one(sets, source):
    directory, prefixes = sets
    policy = RetentionConfig(days=7)
    cfg = config(directory, source, retention=policy)
    down = config(directory, "postgresql://nobody@127.0.0.1:1/none", retention=policy)
    later = NOW + timedelta(hours=1)
    with pytest.raises(PgvaultError):
        take_backup(down, Reporter(quiet=True), clock=lambda: later)
    assert {s.prefix for s in catalog.scan(directory)} == set(prefixes.values())
    result = take_backup(cfg, Reporter(quiet=True), clock=lambda: later)
    assert result.pruned is not None
    assert sorted(result.pruned.deleted_sets) == sorted([prefixes["old"], prefixes["ancient"]])
    left = {s.prefix for s in catalog.scan(directory)}
    assert left == {result.prefix, *(prefixes[k] for k in ("future", "fresh", "recent"))}


def test_no_backups_found(tmp_path):
    env = pgvault_env()
    missing = tmp_path / "nothing-here"
    for command in ("list", "prune"):
        for extra in ((), ("format=json",) if command == "list" else ("dry_run=true",)):
            res = run_pgvault(command, f"dir={missing}", *extra, env=env)
            assert res.returncode == 1 and res.stdout == ""
            assert res.stderr == (
                f"pgvault: error: {missing} does not exist (check dir= or BACKUP_DIR"
                + ("; the first backup creates it)\n" if command == "list" else ")\n")
            )
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("mine")
    res = run_pgvault("list", f"dir={empty}", env=env)
    assert res.returncode == 0 and f"No backups found in {empty}." in res.stdout
    assert list_json(empty)["sets"] == []


@pytest.mark.parametrize("command", ["list", "prune"])
def test_bad_directories_are_one_line_errors(tmp_path, command):
    env = pgvault_env()
    work = tmp_path / "work"
    work.mkdir()
    assert "BACKUP_DIR is not set" in one_line_error(run_pgvault(command, env=env, cwd=work))
    line = one_line_error(run_pgvault(command, "dir=rel/dir", env=env, cwd=work))
    assert "absolute" in line
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a directory" in one_line_error(run_pgvault(command, f"dir={afile}", env=env))
    assert list(work.iterdir()) == [] and afile.read_text() == "x"


def test_a_policy_that_keeps_nothing_is_refused_before_anything_is_deleted(sets):
    directory, _ = sets
    before = digest(directory)
    res = run_pgvault("prune", f"dir={directory}", "retention.days=0", env=pgvault_env())
    line = one_line_error(res)
    assert "keeps nothing" in line and "keep_last=1" in line
    assert digest(directory) == before


@pytest.mark.parametrize("value", ["/", "/dev", "/proc/self", "link"])
def test_the_root_and_system_directories_are_refused(tmp_path, value):
    """dir=/ or dir=/dev was accepted: a backup wrote its lock and sets there, and prune
    worked on it. Now every command refuses it with one line, before touching anything."""
    if value == "link":
        value = str(tmp_path / "link")
        (tmp_path / "link").symlink_to("/dev")
    env = pgvault_env()
    commands = [
        ("backup", "target.url=postgresql://nobody@127.0.0.1:1/none"),
        ("list",),
        ("prune",),
        ("prune", "dry_run=true", "incomplete=true"),
        ("restore", "prefix=latest", "yes=true"),
        ("verify",),
        ("show", "prefix=latest"),
    ]
    locks = [Path(p, catalog.LOCK_NAME) for p in ("/", "/dev", "/sys", "/proc/self")]
    for command in commands:
        line = one_line_error(run_pgvault(*command, f"dir={value}", env=env))
        assert f"dir={value} is " in line, line
        assert "filesystem root" in line or "system directory" in line or "inside /" in line
        assert "a directory of its own" in line
    # An absolute prefix names its directory: the same rule.
    line = one_line_error(
        run_pgvault("restore", "prefix=/dev/backup-2026-01-01-000000", "yes=true", env=env)
    )
    assert "prefix=/dev/backup-2026-01-01-000000 is the system directory /dev" in line
    assert not any(p.exists() for p in locks)
