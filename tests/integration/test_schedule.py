"""pgvault schedule with the real crontab program, in a throwaway user's crontab (never
root's own), and the real CLI printing an entry and refusing a bad expression."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from pgvault import cronexpr, schedule
from pgvault.config import PgvaultConfig, ScheduleVerify
from tests.conftest import needs_tool, one_line_error, pgvault_env

UNRELATED = "MAILTO=ops@example.com\n# nightly report\n17 3 * * *  /usr/local/bin/report --all %Y\n"


@pytest.fixture
def cron_user() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("creating a throwaway user needs root")
    if shutil.which("crontab") is None or shutil.which("useradd") is None:
        pytest.skip("needs crontab and useradd")
    name = f"pgvault-cron-{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "--no-create-home", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["crontab", "-u", name, "-r"], capture_output=True)
        subprocess.run(["userdel", name], check=True, capture_output=True)


def table(user: str) -> str:
    res = subprocess.run(["crontab", "-u", user, "-l"], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else ""


def plan_for(tmp_path: Path, **options: object) -> schedule.Plan:
    cfg = PgvaultConfig()
    cfg.dir = str(tmp_path / "backups")
    cfg.target.name = "crm"
    for key, value in options.items():
        setattr(cfg.schedule, key, value)
    return schedule.plan(cfg, "default", "linux")


def test_install_twice_then_uninstall_in_a_throwaway_crontab(tmp_path, cron_user, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert table(cron_user) == ""  # "no crontab for USER" reads as an empty table
    subprocess.run(["crontab", "-u", cron_user, "-"], input=UNRELATED, text=True, check=True)
    plan = plan_for(tmp_path, cron="*/30 1-4 * * mon-fri", verify=ScheduleVerify.weekly)
    assert schedule.crontab_install(plan, user=cron_user)
    once = table(cron_user)
    assert once.startswith(UNRELATED)
    assert once.count("# pgvault:pgvault-backup-crm ") == 1
    assert once.count("# pgvault:pgvault-verify-crm ") == 1
    ours = once[len(UNRELATED) :].splitlines()
    fields = " ".join(ours[1].split()[:5])
    assert cronexpr.parse(fields) == replace(plan.entries[0].cron, text=fields)
    assert not schedule.crontab_install(plan, user=cron_user)
    assert table(cron_user) == once
    # A changed time replaces our line in place; weekly verify off removes its entry.
    later = plan_for(tmp_path, at="05:45")
    assert schedule.crontab_install(later, user=cron_user)
    now = table(cron_user)
    assert now.startswith(UNRELATED) and "pgvault-verify-crm" not in now
    assert [ln for ln in now.splitlines() if ln.startswith("45 5 * * * ")]
    assert schedule.crontab_uninstall(later.names, user=cron_user) == ["pgvault-backup-crm"]
    assert table(cron_user) == UNRELATED
    assert schedule.crontab_uninstall(later.names, user=cron_user) == []
    assert table(cron_user) == UNRELATED


def pgvault_script() -> str:
    script = Path(sys.executable).parent / "pgvault"
    return str(script) if script.is_file() else "pgvault"


def run_cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = pgvault_env(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    return subprocess.run(
        [pgvault_script(), "schedule", *args], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def root_crontab() -> str | None:
    res = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    return res.stdout if res.returncode == 0 else None


def test_the_cli_prints_the_entry_and_refuses_a_bad_expression(tmp_path):
    directory = tmp_path / "backups"
    res = run_cli(f"dir={directory}", "target=local", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    if schedule.backend() == "systemd":  # a user systemd prints units
        assert any(ln.endswith("pgvault-backup-local.timer") for ln in lines)
    else:
        mark = lines.index(next(ln for ln in lines if ln.startswith("# pgvault:")))
        assert cronexpr.cron_marks(lines[mark]) == "pgvault-backup-local"
        entry = lines[mark + 1]
        assert entry.startswith("0 2 * * * ")
        assert f"dir={directory}" in entry and "target=local" in entry and "quiet=true" in entry
        assert entry.endswith(f">>{directory}/pgvault.log 2>&1")
    before = root_crontab() if shutil.which("crontab") else None
    for args in (["cron=0 25 * * *"], ["cron=0 25 * * *", "install=true"]):
        bad = run_cli(f"dir={directory}", *args, tmp_path=tmp_path)
        assert bad.returncode == 2
        line = one_line_error(bad)
        assert "schedule.cron '0 25 * * *': hour 25 is out of 0-23" in line
    if shutil.which("crontab"):
        assert root_crontab() == before
    assert sorted(os.listdir(tmp_path)) == []  # no dir, no log, no unit files


def test_the_printed_entry_composes_the_same_config(tmp_path):
    """What cron would run, run with --cfg job: the same dir and target, no error."""
    directory = tmp_path / "backups"
    res = run_cli(f"dir={directory}", "target=supabase_local", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    if schedule.backend() != "crontab":
        pytest.skip("this machine's user systemd prints units, not a crontab line")
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("0 2 * * * "))
    command = line.removeprefix("0 2 * * * ").removeprefix("umask 077; ").rsplit(" >>", 1)[0]
    argv = shlex.split(command)
    job = subprocess.run([*argv, "--cfg", "job"], env=pgvault_env(), capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL, cwd="/")  # fmt: skip
    assert job.returncode == 0, job.stderr
    assert f"dir: {directory}" in job.stdout and "name: supabase_local" in job.stdout
    assert "quiet: true" in job.stdout


def test_target_settings_on_the_command_line_are_refused_not_dropped(tmp_path):
    res = run_cli(f"dir={tmp_path / 'b'}", "target.url=postgresql://u:pw@db/crm",
                  tmp_path=tmp_path)  # fmt: skip
    line = one_line_error(res)
    assert res.returncode == 2 and "target.url on the command line" in line
    assert "pw@" not in res.stdout + res.stderr


def test_uninstall_needs_neither_dir_nor_a_valid_expression(tmp_path):
    if schedule.backend() == "crontab":  # else systemd's user timers
        needs_tool("crontab")
    before = root_crontab() if shutil.which("crontab") else None
    res = run_cli("uninstall=true", "cron=0 25 * * *", "target=local", tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "nothing to uninstall" in res.stdout
    if shutil.which("crontab"):
        assert root_crontab() == before
