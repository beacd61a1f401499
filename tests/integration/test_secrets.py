"""Passwords given to the real CLI stay out of everything it shows and leaves: its error
lines, --cfg job, Hydra's --info, the process title `ps` reads while it runs, and the
files a killed --multirun leaves in $TMPDIR."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from pgvault import cli, hooks
from tests.conftest import (
    PASSWORD,
    PASSWORD_USER,
    one_line_error,
    pgvault_env,
    run_pgvault,
)

# The cases, each an argument as the shell hands it over: each printed the password.
CASES = {
    "a space": ('target.url="postgresql://u:Pa ss-Wd1@127.0.0.1:1/d"', "Pa ss-Wd1"),
    "a space Hydra cannot read": ("target.url=postgresql://u:Pa ss-Wd1@127.0.0.1:1/d", "Pa ss-Wd1"),
    "a bad %-escape": ("target.url=postgresql://u:Pa%zzWd1@127.0.0.1:1/d", "Pa%zzWd1"),
    "a mistyped scheme": ("target.url=postgres:/u:PaSsWd1x@127.0.0.1:1/d", "PaSsWd1x"),
    "an unencoded @": ("target.url=postgresql://u:Pa@Ss-Wd1@127.0.0.1:1/d", "Ss-Wd1"),
    "an unencoded /": ("target.url=postgresql://u:Pa/Ss-Wd1@127.0.0.1:1/d", "Ss-Wd1"),
    "libpq quoting a conninfo": ("target.url='host=127.0.0.1 password=Pa ss-Wd1'", "ss-Wd1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_url_is_one_masked_line_everywhere(case, tmp_path):
    word, secret = CASES[case]
    env = pgvault_env(PGCONNECT_TIMEOUT="3")
    res = run_pgvault("backup", f"dir={tmp_path}/b", word, env=env, cwd=tmp_path)
    line = one_line_error(res)
    assert secret not in res.stdout + res.stderr, line
    assert not (tmp_path / "b").exists()
    for flags in (["--cfg", "job"], ["--info", "config"], ["--info", "all"]):
        res = run_pgvault("backup", *flags, word, env=env, cwd=tmp_path)
        assert secret not in res.stdout + res.stderr, (flags, res.stdout + res.stderr)
        if res.returncode == 0 and flags[0] == "--cfg":
            assert "u:****@" in res.stdout or "password=****" in res.stdout, res.stdout


def test_hydra_info_masks_a_config_files_password(tmp_path):
    res = run_pgvault("--info", "config", "target=supabase_local", env=pgvault_env(), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "postgres:****@127.0.0.1:54322" in res.stdout
    assert "postgres:postgres@" not in res.stdout
    res = run_pgvault("backup", "--cfg", "job", "target=supabase_local", env=pgvault_env())
    assert res.returncode == 0 and "postgres:****@" in res.stdout


def test_libpqs_own_message_and_the_hooks_never_hold_the_password(pg_cluster, tmp_path):
    """A wrong password over TCP: libpq's answer, the error line and what a hook hears."""
    bad = "Wr0ng pass@word"
    url = f"postgresql://{PASSWORD_USER}:{quote(bad, safe='')}@127.0.0.1:{pg_cluster.port}/x"
    heard: list[str] = []

    def hook(event: hooks.Event, run: hooks.Run) -> None:
        heard.append(run.error or "")

    hooks.register(hook)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
            cli.main(["backup", f"dir={tmp_path}/b", f"target.url={url}"])
    finally:
        hooks.unregister(hook)
    assert "authentication failed" in err.getvalue()
    for text in (err.getvalue(), *heard):
        assert bad not in text and quote(bad, safe="") not in text, text


def _pgvault(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pgvault", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _wait_for_data(directory: Path, proc: subprocess.Popen[str]) -> None:
    """Until the backup writes its data file: pgvault is well past its start."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if directory.exists() and any(directory.glob("*-data.sql.partial")):
            return
        time.sleep(0.02)
    raise AssertionError("the backup never got going")


def test_ps_never_shows_the_password_of_target_url(big_db, pg_cluster, backup_dir):
    url = f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{pg_cluster.port}/{big_db.dbname}"
    proc = _pgvault("backup", f"dir={backup_dir}", f"target.url={url}", env=pgvault_env())
    _wait_for_data(backup_dir, proc)
    titles = []
    while proc.poll() is None:
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            # An exiting (or zombie) process has an empty cmdline: nothing to check.
            if title:
                titles.append(title)
        time.sleep(0.05)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    assert titles, "pgvault ended before its title was read"
    for title in titles:
        assert PASSWORD.encode() not in title
        assert b"pgvault" in title and f"{PASSWORD_USER}:****@".encode() in title, title


@pytest.mark.parametrize("where", ["override", "config file"])
def test_a_killed_multirun_leaves_no_password_in_tmpdir(big_db, pg_cluster, tmp_path, where):
    url = f"postgresql://{PASSWORD_USER}:{PASSWORD}@127.0.0.1:{pg_cluster.port}/{big_db.dbname}"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = pgvault_env(TMPDIR=str(tmp))
    if where == "override":
        target = f"target.url={url}"
    else:
        conf = tmp_path / "conf" / "target"
        conf.mkdir(parents=True)
        (conf / "secretive.yaml").write_text(f"name: secretive\nurl: {url}\n")
        env["PGVAULT_CONFIG_DIR"] = str(tmp_path / "conf")
        target = "target=secretive"
    dirs = f"dir={tmp_path}/a,{tmp_path}/b"
    for flags in (["--cfg", "job"], ["--info", "config"]):
        shown = run_pgvault("backup", *flags, f"dir={tmp_path}/a", target, env=env)
        assert PASSWORD not in shown.stdout + shown.stderr
        assert f"{PASSWORD_USER}:****@" in shown.stdout, shown.stdout + shown.stderr
    proc = _pgvault("backup", "--multirun", dirs, target, "quiet=true", env=env)
    _wait_for_data(tmp_path / "a", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (sweep,) = tmp.glob("pgvault-multirun-*")  # the kill left Hydra's sweep dir ...
    assert not (sweep / "multirun.yaml").is_file()  # ... and no config in it
    secrets = (PASSWORD.encode(), quote(PASSWORD, safe="").encode())
    left = [p for d in ("tmp", "a", "b") for p in (tmp_path / d).rglob("*") if p.is_file()]
    assert left  # the killed job's partial files
    for path in left:
        assert not any(s in path.read_bytes() for s in secrets), path
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
