"""Running child processes: exit statuses checked, timeouts enforced, argv logged masked."""

from __future__ import annotations

import logging
import os
import time

import pytest

from pgvault import execute
from pgvault.errors import ClientProgramError


def test_a_failure_names_the_program_and_its_last_stderr_line():
    with pytest.raises(ClientProgramError) as e:
        execute.run(["sh", "-c", "echo x; echo first >&2; echo last words >&2; exit 3"])
    assert e.value.what == "sh failed: last words"
    assert "\n" not in e.value.line()


def test_a_silent_failure_names_its_exit_status():
    with pytest.raises(ClientProgramError, match=r"^false failed: exit status 1$"):
        execute.run(["false"])


def test_check_false_returns_the_status_and_the_output():
    res = execute.run(["sh", "-c", "echo x; echo oops >&2; exit 3"], check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, "x\n", "oops\n")


def test_a_timeout_kills_the_program_and_raises():
    started = time.monotonic()
    with pytest.raises(ClientProgramError, match=r"^sleep timed out after 0\.3 s$") as e:
        execute.run(["sleep", "30"], timeout=0.3, hint="h", timeout_hint="see the log")
    assert time.monotonic() - started < 10
    assert e.value.hint == "see the log"


def test_a_timeout_raises_even_unchecked():
    with pytest.raises(ClientProgramError, match="timed out"):
        execute.run(["sleep", "30"], timeout=0.2, check=False)


def test_a_missing_program_raises():
    with pytest.raises(ClientProgramError, match=r"^cannot start no-such-program-pgvault: "):
        execute.run(["/nonexistent/no-such-program-pgvault"], check=False)


def test_env_is_the_whole_environment():
    # A variable left out stays out (plumbum's env merge would bring HOME back).
    assert "HOME" in os.environ
    env = {"PATH": os.environ["PATH"], "ONLY": "me"}
    res = execute.run(["sh", "-c", 'echo "${HOME-unset} $ONLY"'], env=env)
    assert res.stdout == "unset me\n"


def test_the_debug_line_masks_a_password(caplog):
    url = "postgresql://u:secret@h/db"
    with caplog.at_level(logging.DEBUG):
        execute.run(["sh", "-c", "exit 0", "sh", f"--dbname={url}", "password=hunter2"])
    lines = [r.getMessage() for r in caplog.records if r.name == "pgvault.execute"]
    assert lines == [
        "running sh -c 'exit 0' sh '--dbname=postgresql://u:****@h/db' 'password=****'"
    ]
    assert "secret" not in caplog.text and "hunter2" not in caplog.text


def test_a_stage_logs_masked_and_plumbum_does_not_log_the_raw_argv(caplog):
    with caplog.at_level(logging.DEBUG), execute.stages() as running:
        st = execute.Stage(["sh", "-c", "exit 0", "sh", "postgresql://u:secret@h/db"], os.environ)
        running.append(st)
        st.check()
    assert "postgresql://u:****@h/db" in caplog.text
    assert "secret" not in caplog.text


def test_a_stage_failure_names_its_first_error_line_even_after_much_stderr():
    # 200 KiB of stderr would fill a pipe; a stage's stderr goes to a file instead.
    script = (
        "head -c 200000 /dev/zero | tr '\\0' 'n' >&2; echo >&2; echo 'ERROR: it broke' >&2; exit 2"
    )
    failed = pytest.raises(ClientProgramError, match=r"^sh failed: ERROR: it broke$")
    with failed, execute.stages() as running:
        st = execute.Stage(["sh", "-c", script], os.environ, stdout=execute.DEVNULL)
        running.append(st)
        st.check()
