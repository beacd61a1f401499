"""Many databases in one sweep (--multirun), with real clusters: each job in a process of
its own, one job's failure (server down, pg_dump killed, a hang) costing no other job
anything, a summary naming every failure, n_jobs honoured, and a rerun after a crash
leaving neither a duplicate nor a half set."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pgvault import naming, unfinished
from tests.conftest import (
    PASSWORD,
    PASSWORD_USER,
    create_database,
    drop_database,
    pgvault_env,
    run_pgvault,
    run_sql,
)
from tests.s3server import free_port


@pytest.fixture(scope="module")
def small_dbs(pg_cluster):
    names = [create_database(pg_cluster, "sweep") for _ in range(2)]
    for i, name in enumerate(names):
        run_sql(
            pg_cluster.conn(name),
            f"CREATE TABLE t AS SELECT g AS id FROM generate_series(1, {i + 3}) g",
        )
    yield names
    for name in names:
        drop_database(pg_cluster, name)


def conf_dir(tmp_path: Path, targets: dict[str, str]) -> Path:
    """A user's conf dir with one target file per database (target=NAME)."""
    conf = tmp_path / "conf"
    (conf / "target").mkdir(parents=True)
    for name, url in targets.items():
        (conf / "target" / f"{name}.yaml").write_text(f"name: {name}\nurl: {url}\n")
    return conf


def url_of(pg_cluster, dbname: str) -> str:  # type: ignore[no-untyped-def]
    return f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{pg_cluster.port}/{dbname}"


def complete_sets(directory: Path) -> list[str]:
    return sorted(p.name.removesuffix("-manifest.json") for p in directory.glob("*-manifest.json"))


def set_files(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if naming.parse_file_name(p.name))


def processes(needle: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def pg_dumps_of(dbname: str, flag: bytes = b"--data-only") -> list[int]:
    """pg_dump processes dumping dbname's data (not a `pg_dump --version` probe); pgvault
    gives pg_dump the database in its environment."""
    found = []
    for pid in processes(b"pg_dump"):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            if (
                Path(argv[0].decode()).name == "pg_dump"
                and flag in argv
                and (
                    f"PGDATABASE={dbname}".encode() in env
                    or any(dbname.encode() in a for a in argv)
                )
            ):
                found.append(pid)
    return found


def test_a_sweep_isolates_failures_and_names_each_one(pg_cluster, small_dbs, big_db, tmp_path):
    """4 targets from the user's conf dir, two at a time: one server is down, one pg_dump
    is killed. The other two sets complete and verify; the summary names both failures."""
    base = f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{pg_cluster.port}"
    conf = conf_dir(tmp_path, {
        "crm_a": f"{base}/{small_dbs[0]}", "crm_b": f"{base}/{small_dbs[1]}",
        "down": f"postgresql://postgres@127.0.0.1:{free_port()}/x",
        "killed": f"{base}/{big_db.dbname}",
    })  # fmt: skip
    out = tmp_path / "sets"
    env = pgvault_env(PGVAULT_CONFIG_DIR=str(conf), TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "backup", "--multirun", "target=crm_a,crm_b,down,killed",
         "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"dir={out}/${{target.name}}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    killed: list[int] = []

    def kill_its_pg_dump() -> None:
        deadline = time.monotonic() + 120
        while not killed and proc.poll() is None and time.monotonic() < deadline:
            for pid in pg_dumps_of(big_db.dbname):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_its_pg_dump)
    killer.start()
    stdout, stderr = proc.communicate(timeout=300)
    killer.join()
    assert killed, "the big target's pg_dump was never seen"
    assert proc.returncode == 1, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("pgvault: error: 2 of 4 jobs failed: "), stderr
    assert "down" in last and "killed" in last and "crm_a" not in last, last
    # Each job's lines carry its name; the table has a row per job.
    assert "[down] pgvault: error: PostgreSQL does not appear to be running" in stderr
    rows = {ln.split()[0]: ln.split()[1] for ln in stdout.splitlines() if ln.split()[:1]
            and ln.split()[0] in ("crm_a", "crm_b", "down", "killed")}  # fmt: skip
    assert rows == {"crm_a": "ok", "crm_b": "ok", "down": "failure", "killed": "failure"}, stdout
    for name in ("crm_a", "crm_b"):
        assert len(complete_sets(out / name)) == 1
        res = run_pgvault("verify", f"dir={out / name}", env=pgvault_env())
        assert res.returncode == 0, res.stderr
    assert set_files(out / "killed") == []  # nothing half-written left, nothing complete-looking
    assert not (out / "down").exists() or set_files(out / "down") == []


def running_with(needle: bytes, marker: bytes) -> list[int]:
    """Processes whose command line holds needle and whose environment holds marker."""
    found = []
    for pid in processes(needle):
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
    return found


def test_format_json_a_hang_past_the_timeout_and_a_job_that_dies(pg_cluster, small_dbs, tmp_path):
    """sweep.timeout ends a job that hangs (a before-hook that sleeps), and only that job;
    a job whose pgvault process is killed (its hook kills it) is that job's failure; the
    others' sets complete. format=json gives one document with every job."""
    url = url_of(pg_cluster, small_dbs[0])
    env = pgvault_env(TMPDIR=str(tmp_path))
    hook = tmp_path / "hook.sh"
    hook.write_text(
        '#!/bin/sh\ncase "$PGVAULT_DIR" in\n  */slow) exec sleep 600;;\n'
        "  */dies) kill -9 $PPID;;\nesac\n"
    )
    hook.chmod(0o755)
    started = time.monotonic()
    dirs = ",".join(f"{tmp_path}/{d}" for d in ("fast", "slow", "dies", "last"))
    res = run_pgvault(
        "backup", "--multirun", f"dir={dirs}", f"target.url={url}", f"hooks.before=[{hook}]",
        "sweep.timeout=15s", "sweep.format=json", "quiet=true", env=env, timeout=200,
    )  # fmt: skip
    assert time.monotonic() - started < 120
    assert res.returncode == 1, res.stderr
    doc = json.loads(res.stdout)
    by_label = {j["label"]: j for j in doc["jobs"]}
    jobs = {d: by_label[f"dir={tmp_path}/{d}"] for d in ("fast", "slow", "dies", "last")}
    for d in ("fast", "last"):
        assert jobs[d]["status"] == "success" and jobs[d]["prefix"] and jobs[d]["size_bytes"] > 0
        assert len(complete_sets(tmp_path / d)) == 1
    assert jobs["slow"]["status"] == "timeout" and "sweep.timeout=15s" in jobs["slow"]["error"]
    assert jobs["dies"]["status"] == "failure" and "killed by signal 9" in jobs["dies"]["error"]
    assert set_files(tmp_path / "slow") == [] and set_files(tmp_path / "dies") == []
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("pgvault: error: 2 of 4 jobs failed: ") and "slow" in last, last
    # The timed-out job's whole session was ended: its hook's sleep too.
    assert running_with(b"sleep", f"{tmp_path}/slow".encode()) == []


def test_n_jobs_limits_how_many_run_at_once(pg_cluster, small_dbs, tmp_path):
    url = url_of(pg_cluster, small_dbs[0])
    dirs = ",".join(f"{tmp_path}/d{i}" for i in range(4))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "backup", "--multirun", f"dir={dirs}",
         f"target.url={url}", "hooks.before=[sleep 2]", "hydra/launcher=joblib",
         "hydra.launcher.n_jobs=2", "quiet=true"],
        env=pgvault_env(TMPDIR=str(tmp_path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    seen = []
    while proc.poll() is None:  # this sweep's jobs: their environment names its dirs
        seen.append(len(running_with(b"pgvault.sweep", str(tmp_path).encode())))
        time.sleep(0.05)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert max(seen) == 2, seen  # two at a time: parallel, and never more
    for i in range(4):
        assert len(complete_sets(tmp_path / f"d{i}")) == 1


def test_two_overlapping_runs_of_one_target_make_one_set(big_db, tmp_path):
    env = pgvault_env(big_db)
    first = subprocess.Popen(
        [sys.executable, "-m", "pgvault", "backup", f"dir={tmp_path}", "quiet=true"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (dumps := pg_dumps_of(big_db.dbname)) and time.monotonic() < deadline:
        time.sleep(0.01)
    for pid in dumps:  # held mid-dump while the second run starts
        os.kill(pid, signal.SIGSTOP)
    try:
        second = run_pgvault("backup", f"dir={tmp_path}", env=env)
    finally:
        for pid in dumps:
            os.kill(pid, signal.SIGCONT)
    assert second.returncode != 0, (dumps, second.stdout, list(tmp_path.iterdir()))
    assert "another pgvault" in second.stderr or "is in use" in second.stderr, second.stderr
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert len(complete_sets(tmp_path)) == 1
    assert [p.name for p in tmp_path.glob("*.partial")] == []


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_crash_mid_sweep_then_a_rerun_leaves_whole_sets_only(big_db, pg_cluster, tmp_path,
                                                               launcher):  # fmt: skip
    """kill -9 of the sweep while its first job dumps: the job's own process ends too (it
    does not run on unwatched, not even in a joblib worker that outlives the sweep), and
    the rerun completes every job without a duplicate or a half set."""
    dirs, url = f"dir={tmp_path}/first,{tmp_path}/second", url_of(pg_cluster, big_db.dbname)
    args = [sys.executable, "-m", "pgvault", "backup", "--multirun", dirs, f"target.url={url}",
            "quiet=true"]  # fmt: skip
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"]
    env = pgvault_env(TMPDIR=str(tmp_path))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "first").glob("*data.sql.partial")) and time.monotonic() < deadline:
        time.sleep(0.02)
    children = running_with(b"pgvault.sweep", str(tmp_path).encode())
    assert children
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{p}").exists() for p in children)
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for d in ("first", "second"):
        files = set_files(tmp_path / d)
        sets = complete_sets(tmp_path / d)
        assert len(sets) == 1, files  # the rerun's, and nothing of the killed run
        assert all(f.startswith(sets[0]) for f in files), files


def test_a_retry_removes_the_half_set_a_kill_left_after_its_renames(
    pg_cluster, small_dbs, tmp_path
):
    """A kill between the renames and the manifest leaves final names and no manifest;
    the note names that set as pgvault's, so the retry removes it. A set without a
    manifest that no note names (the seed's) stays."""
    env = pgvault_env(pg_cluster.conn(small_dbs[0]))
    assert run_pgvault("backup", f"dir={tmp_path}", env=env).returncode == 0
    (killed,) = complete_sets(tmp_path)
    (tmp_path / naming.file_name(killed, "manifest")).unlink()
    (tmp_path / unfinished.NOTE).write_text(json.dumps({"prefix": killed}))
    seed = "backup-2001-01-01-000000"
    for kind in ("roles", "schema", "data"):
        (tmp_path / naming.file_name(seed, kind)).write_text("-- the seed's\n")
    res = run_pgvault("backup", f"dir={tmp_path}", env=env)
    assert res.returncode == 0, res.stderr
    (retried,) = complete_sets(tmp_path)
    assert retried != killed
    assert not any(n.startswith(killed) for n in set_files(tmp_path))
    assert sorted(n for n in set_files(tmp_path) if n.startswith(seed)) == [
        naming.file_name(seed, k) for k in ("data", "roles", "schema")
    ]
    assert not (tmp_path / unfinished.NOTE).exists()


def test_a_failure_after_the_manifest_landed_keeps_the_whole_set(
    pg_cluster, small_dbs, tmp_path, monkeypatch
):
    """The directory's fsync after the manifest's rename fails (or a signal comes then):
    the run fails, and the set, whole on disk, keeps every file."""
    from pgvault import store
    from pgvault.backup import take_backup
    from pgvault.config import PgvaultConfig, TargetConfig
    from pgvault.errors import PgvaultError
    from pgvault.ui import Reporter

    real = store.fsync_dir

    def failing_once_the_manifest_is_there(directory: Path) -> None:
        if list(Path(directory).glob("*-manifest.json")):
            raise OSError(errno.EIO, "Input/output error")
        real(directory)

    monkeypatch.setattr(store, "fsync_dir", failing_once_the_manifest_is_there)
    url = url_of(pg_cluster, small_dbs[0])
    cfg = PgvaultConfig(dir=str(tmp_path), target=TargetConfig(name="t", url=url))
    with pytest.raises(PgvaultError) as e:
        take_backup(cfg, Reporter(quiet=True), apply_retention=False)
    assert "Input/output error" in e.value.line()
    monkeypatch.undo()
    (prefix,) = complete_sets(tmp_path)
    kinds = sorted(n.removeprefix(prefix + "-") for n in set_files(tmp_path))
    assert kinds == ["data.sql", "manifest.json", "roles.sql", "schema.sql"]
    res = run_pgvault("list", f"dir={tmp_path}", "check=true", env=pgvault_env())
    assert res.returncode == 0 and "complete" in res.stdout, res.stdout + res.stderr
