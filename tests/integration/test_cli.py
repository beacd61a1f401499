"""The command line as Hydra users expect it: help, --cfg, multirun, user configs, no
litter, a non-editable install, and one-line errors for bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    PASSWORD,
    PASSWORD_USER,
    create_database,
    drop_database,
    one_line_error,
    pgvault_env,
    run_pgvault,
    run_sql,
)
from tests.integration.test_backup import start_backup

ROOT = Path(__file__).resolve().parents[2]


def only_line(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode != 0
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("pgvault: error: ") and line.endswith(")")
    return line


def test_help_lists_the_commands(tmp_path):
    res = run_pgvault("--help", env=pgvault_env(), cwd=tmp_path)
    assert res.returncode == 0
    for command in ("backup", "list", "prune", "restore", "verify"):
        assert f"\n  {command} " in res.stdout
    assert "target: local, supabase_local" in res.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "no command given"),
        (("bakcup",), "unknown command 'bakcup'"),
        (("backup", "target.prot=1"), "unknown key 'target.prot'"),
        (("backup", "compression=lz4"), "expected one of [none, gzip, zstd]"),
        (("backup", "target=nope"), "Could not find 'target/nope'"),
        (("backup", "retention.days=many"), "retention.days"),
        (("backup", "dir=relative"), "dir must be an absolute path"),
        (("backup", "dir=/x", "target.url='postgresql://u@h/d?sslpassword=k'"), "sslpassword"),
        # Wrong only once resolved, inside Hydra's job: still one line, not Hydra's two.
        (("backup", "target.url=${oc.env:PGVAULT_NO_SUCH_VAR}"), "PGVAULT_NO_SUCH_VAR"),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, expected):
    line = only_line(run_pgvault(*args, env=pgvault_env(), cwd=tmp_path))
    assert expected in line
    assert list(tmp_path.iterdir()) == []


def test_cfg_job_shows_the_composed_config(tmp_path):
    res = run_pgvault("backup", "--cfg", "job", "env=prod", env=pgvault_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "compression: zstd" in res.stdout and "keep_monthly: 12" in res.stdout
    assert "hydra:" not in res.stdout and "allowed:" not in res.stdout  # restore's, not backup's
    res = run_pgvault("restore", "--cfg", "job", "env=prod", env=pgvault_env(), cwd=tmp_path)
    assert res.returncode == 0 and "allowed: false" in res.stdout
    assert "compression:" not in res.stdout
    hydra = run_pgvault("backup", "--cfg", "hydra", env=pgvault_env(), cwd=tmp_path)
    assert hydra.returncode == 0 and "output_subdir: null" in hydra.stdout
    assert list(tmp_path.iterdir()) == []


def test_user_config_dir_adds_targets_and_policies(tmp_path):
    conf = tmp_path / "conf"
    (conf / "target").mkdir(parents=True)
    (conf / "retention").mkdir()
    (conf / "env").mkdir()
    (conf / "target" / "crm.yaml").write_text("name: crm\nurl: postgresql://crm@db:5432/crm\n")
    (conf / "retention" / "monthly.yaml").write_text("days: 30\nkeep_monthly: 12\n")
    (conf / "env" / "site.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /target: crm\n"
        "  - override /retention: monthly\nquiet: true\n"
    )
    # ./conf beside where pgvault runs ...
    res = run_pgvault("backup", "--cfg", "job", "env=site", env=pgvault_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "url: postgresql://crm@db:5432/crm" in res.stdout
    assert "days: 30" in res.stdout and "keep_monthly: 12" in res.stdout
    assert "quiet: true" in res.stdout
    # ... or PGVAULT_CONFIG_DIR from anywhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = pgvault_env(PGVAULT_CONFIG_DIR=str(conf))
    res = run_pgvault("backup", "--cfg", "job", "target=crm", env=env, cwd=elsewhere)
    assert res.returncode == 0 and "name: crm" in res.stdout
    assert list(elsewhere.iterdir()) == []


def test_user_config_yaml_replaces_packaged_defaults(tmp_path):
    conf = tmp_path / "conf"
    (conf / "retention").mkdir(parents=True)
    (conf / "retention" / "default.yaml").write_text("days: 90\n")
    # Without a config.yaml the packaged file wins, and pgvault says so.
    res = run_pgvault("backup", "--cfg", "job", env=pgvault_env(), cwd=tmp_path)
    assert res.returncode == 0 and "days: 7" in res.stdout
    assert "does not replace the packaged retention/default.yaml" in res.stderr
    # With one, the user's directory comes first.
    packaged = (ROOT / "conf" / "config.yaml").read_text()
    (conf / "config.yaml").write_text(packaged)
    res = run_pgvault("backup", "--cfg", "job", env=pgvault_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "days: 90" in res.stdout and res.stderr == ""


def test_multirun_runs_every_job_and_litters_nothing(pg_cluster, tmp_path):
    name = create_database(pg_cluster, "multi")
    conn = pg_cluster.conn(name)
    run_sql(conn, "CREATE TABLE t AS SELECT 1 AS x")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    try:
        url = f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{pg_cluster.port}/{name}"
        res = run_pgvault(
            "backup",
            "--multirun",
            f"dir={tmp_path}/a,{tmp_path}/b",
            f"target.url={url}",
            "quiet=true",
            env=pgvault_env(TMPDIR=str(tmp_path)),
            cwd=cwd,
        )
    finally:
        drop_database(pg_cluster, name)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "a").glob("*-manifest.json"))) == 1
    assert len(list((tmp_path / "b").glob("*-manifest.json"))) == 1
    assert list(cwd.iterdir()) == []
    # Hydra's multirun.yaml (the whole config, password included) is gone with its dir.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "cwd"]
    for p in tmp_path.rglob("*"):
        assert not p.is_file() or PASSWORD.encode() not in p.read_bytes(), p


def test_a_config_that_makes_runs_sweeps_sweeps_and_litters_nothing(tmp_path):
    """hydra.mode=MULTIRUN in a user's config.yaml turns a plain run into a sweep, as
    with @hydra.main; its multirun.yaml stays out of TMPDIR as with --multirun."""
    conf = tmp_path / "cwd" / "conf"
    conf.mkdir(parents=True)
    packaged = (ROOT / "conf" / "config.yaml").read_text()
    (conf / "config.yaml").write_text(packaged.replace("hydra:\n", "hydra:\n  mode: MULTIRUN\n", 1))
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    res = run_pgvault(
        "list", f"dir={tmp_path}/a,{tmp_path}/b", env=pgvault_env(TMPDIR=str(tmp_path)),
        cwd=tmp_path / "cwd",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"No backups found in {tmp_path}/a." in res.stdout, res.stdout
    assert f"No backups found in {tmp_path}/b." in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "cwd"]
    assert sorted(p.name for p in (tmp_path / "cwd").iterdir()) == ["conf"]


def test_a_non_editable_install_finds_its_configs(tmp_path):
    """pip install (not editable) into a target dir, then run it away from the source."""
    target = tmp_path / "site"
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-v",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # Every config folder is a declared package: setuptools has nothing to warn about.
    assert "is absent from the `packages` configuration" not in built.stdout + built.stderr
    assert "absent from the packages" not in built.stdout + built.stderr
    assert (target / "pgvault" / "conf" / "config.yaml").is_file()
    assert (target / "pgvault" / "schemas" / "manifest.schema.json").is_file()
    assert (target / "pgvault" / "conf" / "target" / "supabase_local.yaml").is_file()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = pgvault_env(PYTHONPATH=str(target))
    res = subprocess.run(
        [sys.executable, "-c", "import pgvault, sys; print(pgvault.__file__)"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert res.stdout.startswith(str(target)), res.stdout
    res = subprocess.run(
        [sys.executable, "-m", "pgvault", "backup", "--cfg", "job", "target=supabase_local"],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert "name: supabase_local" in res.stdout and "postgres:****@" in res.stdout
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("pgvault re", {"restore"}),
        ("pgvault backup targ", {"target.", "target="}),
        ("pgvault restore target=", {"target=local", "target=supabase_local"}),
    ],
)
def test_tab_completion_knows_commands_and_groups(tmp_path, line, expected):
    env = pgvault_env(COMP_LINE=line, COMP_POINT=str(len(line)))
    res = run_pgvault("-sc", "query=bash", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert set(res.stdout.split()) == expected


def _children(pid: int, name: bytes) -> list[int]:
    """The pids of pid's children whose argv holds name."""
    out = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and name in argv:
            out.append(int(entry))
    return out


def test_a_killed_pg_dump_is_named_with_its_signal_not_a_message_above(big_db, backup_dir):
    proc = start_backup(big_db, backup_dir)
    deadline = time.monotonic() + 120
    dumps: list[int] = []
    while not dumps and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if backup_dir.exists() and any(backup_dir.glob("*-data.sql.partial")):
            dumps = _children(proc.pid, b"--data-only")
        time.sleep(0.02)
    assert dumps, "pg_dump of the data never started"
    os.kill(dumps[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    line = one_line_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert "pg_dump failed: killed by signal 9 (SIGKILL)" in line
    assert "above" not in line
