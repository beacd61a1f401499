"""`pgvault status` on real sets (written in process with a clock handed in, so a set
of any age exists without waiting), the state file the real CLI writes, log.file, and
the space check before a backup writes anything, on a small file system of its own."""

from __future__ import annotations

import io
import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from pgvault import commands, hooks, naming, runstate, store
from pgvault.backup import take_backup
from pgvault.commands.status import StatusProblem
from pgvault.config import OutputFormat, PgvaultConfig, TargetConfig
from pgvault.ui import Reporter
from tests.conftest import (
    create_database,
    drop_database,
    one_line_error,
    pgvault_env,
    run_pgvault,
    run_sql,
)
from tests.unit.test_hardening_files import tmpfs

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def db(pg_cluster):
    name = create_database(pg_cluster, "status")
    run_sql(pg_cluster.conn(name), "CREATE TABLE t AS SELECT i FROM generate_series(1, 3000) i")
    yield pg_cluster, name
    drop_database(pg_cluster, name)


def config(directory: Path, url: str, **monitor: str | None) -> PgvaultConfig:
    cfg = PgvaultConfig(command="status", dir=str(directory),
                        target=TargetConfig(name="crm", url=url))  # fmt: skip
    cfg.monitor.min_free = "1MB"
    for key, value in monitor.items():
        setattr(cfg.monitor, key, value)
    return cfg


def backup_at(cfg: PgvaultConfig, when: datetime) -> str:
    result = take_backup(cfg, Reporter(quiet=True), clock=lambda: when, apply_retention=False)
    return result.prefix


def mark_verified(directory: Path, prefix: str, at: datetime) -> None:
    record = {"verdict": "verified", "checked_at": at.isoformat(), "duration_s": 1.0,
              "server_version": "15.0", "tables": 1, "rows": 3000, "problems": []}  # fmt: skip
    store.write_json_atomic(directory / naming.file_name(prefix, "verify"), record)


def status(cfg: PgvaultConfig, now: datetime, fmt: OutputFormat = OutputFormat.text):
    """Run the command in process at `now`: (problems raised or None, what it printed)."""
    cfg.status.format = fmt
    out = io.StringIO()
    ui = Reporter(quiet=False, out=Console(file=out, highlight=False, soft_wrap=True))
    try:
        commands.run(cfg, ui, commands.Context(clock=lambda: now))
    except StatusProblem as e:
        return e, out.getvalue()
    return None, out.getvalue()


def test_fresh_and_verified_is_all_fine(db, tmp_path):
    cluster, name = db
    cfg = config(tmp_path, cluster.url(name))
    prefix = backup_at(cfg, NOW - timedelta(hours=2))
    mark_verified(tmp_path, prefix, NOW - timedelta(hours=1))
    problem, out = status(cfg, NOW)
    assert problem is None, out
    assert f"newest complete: {prefix}, 2.0 h old" in out
    assert f"newest verified: {prefix}" in out and "✓ all checks pass" in out
    problem, out = status(cfg, NOW, OutputFormat.json)
    doc = json.loads(out)
    assert problem is None and doc["ok"] is True and doc["problems"] == []
    assert doc["newest_complete"]["prefix"] == prefix
    assert doc["newest_complete"]["age_s"] == 7200.0
    assert doc["expected_bytes"] == doc["newest_complete"]["size_bytes"] > 0


def test_stale_and_unverified_are_problems_each_on_its_line(db, tmp_path):
    cluster, name = db
    cfg = config(tmp_path, cluster.url(name))
    verified = backup_at(cfg, NOW - timedelta(days=10))
    mark_verified(tmp_path, verified, NOW - timedelta(days=10))
    newest = backup_at(cfg, NOW - timedelta(hours=30))
    problem, out = status(cfg, NOW)
    assert problem is not None and problem.exit_code == 1
    assert "2 check(s) failed for target crm" in problem.line()
    lines = [ln for ln in out.splitlines() if ln.startswith("✗")]
    assert len(lines) == 2, out
    assert f"({newest}) is 30.0 h old; monitor.max_age is 26h" in lines[0]
    assert f"newest verified backup of target crm ({verified}) is 10.0 d old" in lines[1]
    # Thresholds are config: widened, the same sets pass.
    wide = config(tmp_path, cluster.url(name), max_age="2d", max_unverified_age="2w")
    assert status(wide, NOW)[0] is None
    # Switched off, a check is not made at all.
    off = config(tmp_path, cluster.url(name), max_age=None, max_unverified_age=None)
    assert status(off, NOW)[0] is None


def test_a_newest_set_that_did_not_verify_is_a_problem_at_once(db, tmp_path):
    """Not only once max_unverified_age runs out: a mismatch is news now."""
    cluster, name = db
    cfg = config(tmp_path, cluster.url(name))
    good = backup_at(cfg, NOW - timedelta(hours=30))
    mark_verified(tmp_path, good, NOW - timedelta(hours=29))
    bad = backup_at(cfg, NOW - timedelta(hours=2))
    record = {"verdict": "failed", "checked_at": (NOW - timedelta(hours=1)).isoformat(),
              "duration_s": 1.0, "server_version": "15.0", "tables": 1, "rows": 2999,
              "problems": ["public.t: 2999 rows, the backup had 3000"]}  # fmt: skip
    store.write_json_atomic(tmp_path / naming.file_name(bad, "verify"), record)
    problem, out = status(cfg, NOW)
    assert problem is not None and "1 check(s) failed" in problem.line()
    assert f"✗ {bad} of target crm did NOT verify" in out
    problem, out = status(cfg, NOW, OutputFormat.json)
    assert json.loads(out)["failed_verify"] == [bad]


def test_never_verified_and_no_backup_at_all(db, tmp_path):
    cluster, name = db
    cfg = config(tmp_path, cluster.url(name))
    problem, out = status(cfg, NOW)
    assert problem is not None
    assert f"✗ no complete backup of target crm in {tmp_path}" in out
    assert "✗ no backup of target crm has been verified" in out
    backup_at(cfg, NOW - timedelta(hours=1))
    problem, out = status(cfg, NOW)
    assert problem is not None and "1 check(s) failed" in problem.line()
    assert "has been verified" in out


def test_another_targets_sets_do_not_count(db, pg_cluster, tmp_path):
    cluster, name = db
    other = create_database(pg_cluster, "status_other")
    try:
        backup_at(config(tmp_path, cluster.url(other)), NOW - timedelta(hours=1))
    finally:
        drop_database(pg_cluster, other)
    problem, out = status(config(tmp_path, cluster.url(name), max_unverified_age=None), NOW)
    assert problem is not None and "no complete backup of target crm" in out


def test_a_failed_run_is_recorded_and_reported_by_the_real_cli(db, tmp_path):
    cluster, name = db
    cfg = config(tmp_path, cluster.url(name), max_unverified_age=None)
    backup_at(cfg, NOW - timedelta(hours=1))
    log = tmp_path / "logs" / "pgvault.log"
    log.parent.mkdir()
    env = pgvault_env(cluster.conn(name))
    failed = run_pgvault("backup", f"dir={tmp_path}", "target.name=crm",
                         "target.url=postgresql://nobody:s3cret-pw@127.0.0.1:1/none",
                         f"log.file={log}", env=env)  # fmt: skip
    line = one_line_error(failed)
    mine = ("target.name=crm", f"target.url={cfg.target.url}", "monitor.max_unverified_age=null")
    res = run_pgvault("status", f"dir={tmp_path}", *mine, env=env)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "✗ the last backup run of target crm" in res.stdout and "failed:" in res.stdout
    assert line.removeprefix("pgvault: error: ") in res.stdout
    assert res.stderr.startswith("pgvault: error: 1 check(s) failed")
    (entry,) = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert entry["outcome"] == "failure" and entry["command"] == "backup"
    assert entry["target"] == "crm" and entry["error"] == line.removeprefix("pgvault: error: ")
    for text in (log.read_text(), (tmp_path / runstate.STATE_FILE).read_text(), res.stdout):
        assert "s3cret-pw" not in text
    # The next good run clears it; JSON says the same for scripts.
    good = run_pgvault("backup", f"dir={tmp_path}", "target.name=crm", "quiet=true",
                       f"target.url={cfg.target.url}", f"log.file={log}", env=env)  # fmt: skip
    assert good.returncode == 0, good.stderr
    res = run_pgvault("status", f"dir={tmp_path}", *mine, "format=json", env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    assert doc["ok"] and doc["last_backup"]["status"] == "success"
    assert [json.loads(ln)["outcome"] for ln in log.read_text().splitlines()] == [
        "failure",
        "success",
    ]


def _start_then_die(directory: str) -> None:
    run = hooks.Run("backup", "crm", "default", directory, started_at=NOW.timestamp())
    runstate.record(run, hooks.Event.start, Path(directory))


def test_a_run_that_started_and_died_is_a_problem(db, tmp_path):
    cluster, name = db
    cfg = config(tmp_path, cluster.url(name), max_unverified_age=None)
    backup_at(cfg, NOW - timedelta(hours=1))
    child = multiprocessing.get_context("fork").Process(target=_start_then_die,
                                                        args=(str(tmp_path),))  # fmt: skip
    child.start()
    child.join(30)
    problem, out = status(cfg, NOW)
    assert problem is not None and "never finished: it was killed" in out
    # While the run's process lives, it is running, not a problem.
    alive = hooks.Run("backup", "crm", "default", str(tmp_path), started_at=NOW.timestamp())
    runstate.record(alive, hooks.Event.start, tmp_path)
    assert status(cfg, NOW)[0] is None


def test_low_space_is_a_problem(db, tmp_path):
    cluster, name = db
    with tmpfs(tmp_path / "small", "size=4m,mode=0700") as d:
        cfg = config(d, cluster.url(name), max_unverified_age=None)
        backup_at(cfg, NOW - timedelta(hours=1))
        assert status(cfg, NOW)[0] is None
        cfg.monitor.min_free = "8MB"
        problem, out = status(cfg, NOW)
        assert problem is not None
        assert f"✗ {d} has " in out and "plus monitor.min_free 8MB" in out


def test_backup_refuses_before_writing_when_the_set_will_not_fit(db, tmp_path):
    cluster, name = db
    env = pgvault_env(cluster.conn(name))
    with tmpfs(tmp_path / "small", "size=2m,mode=0700") as d:
        target = d / "backups"
        res = run_pgvault("backup", f"dir={target}", env=env)
        line = one_line_error(res)
        assert f"not enough free space in {target}" in line and "monitor.min_free 64MB" in line
        assert not target.exists()  # not even the directory
        # Without the margin the set's own estimate (its tables) still fits: it is written.
        res = run_pgvault("backup", f"dir={target}", "monitor.min_free=0MB", env=env)
        assert res.returncode == 0, res.stderr
        (manifest,) = target.glob("*-manifest.json")
        size = sum(f["size"] for f in json.loads(manifest.read_text())["files"].values())
        # Now the previous set is the estimate: a margin that leaves less than it is refused.
        free = store_free(target)
        margin = max(0, (free - size) // 1024 + 1)
        before = sorted(p.name for p in target.iterdir())
        res = run_pgvault("backup", f"dir={target}", f"monitor.min_free={margin}KB", env=env)
        assert "not enough free space" in one_line_error(res)
        assert sorted(p.name for p in target.iterdir()) == before


def test_a_killed_runs_leftovers_do_not_count_against_the_space_check(db, tmp_path):
    """The check runs after stale .partial files are removed: a killed run on a tight
    disk must not block every later backup."""
    cluster, name = db
    env = pgvault_env(cluster.conn(name))
    with tmpfs(tmp_path / "small", "size=4m,mode=0700") as d:
        res = run_pgvault("backup", f"dir={d}", "monitor.min_free=0MB", env=env)
        assert res.returncode == 0, res.stderr
        stale = d / "backup-2020-01-01-000000-data.sql.partial"
        with open(stale, "wb") as f:  # what a killed run left: nearly all the space
            f.write(b"\0" * (store_free(d) - (64 << 10)))
        res = run_pgvault("backup", f"dir={d}", "monitor.min_free=128KB", env=env)
        assert res.returncode == 0, res.stderr
        assert not stale.exists() and len(list(d.glob("*-manifest.json"))) == 2


def store_free(path: Path) -> int:
    from pgvault import space

    return space.free_bytes(path)
