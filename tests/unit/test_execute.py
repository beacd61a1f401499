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


def _stage_error(script: str) -> ClientProgramError:
    with pytest.raises(ClientProgramError) as e, execute.stages() as running:
        st = execute.Stage(["sh", "-c", script], os.environ, stdout=execute.DEVNULL)
        running.append(st)
        st.check()
    return e.value


def test_a_killed_stage_says_how_it_ended_and_points_to_no_message():
    # Its stderr is captured, never shown: there is no "message above" to see.
    e = _stage_error("kill -9 $$")
    assert e.what == "sh failed: killed by signal 9 (SIGKILL)"
    assert "above" not in e.line() and "out-of-memory" in e.hint
    e = _stage_error("echo 'FATAL: gone' >&2; kill -TERM $$")
    assert e.what == "sh failed: killed by signal 15 (SIGTERM): FATAL: gone"
    assert "above" not in e.line()


def test_a_silent_stage_failure_says_it_said_nothing():
    e = _stage_error("exit 3")
    assert e.what == "sh failed: exit status 3, with no message"
    assert "above" not in e.line()


def test_a_killed_short_program_names_its_signal():
    with pytest.raises(ClientProgramError, match=r"^sh failed: killed by signal 9 \(SIGKILL\)$"):
        execute.run(["sh", "-c", "kill -9 $$"])


def test_a_multi_line_message_becomes_one_line():
    with pytest.raises(ClientProgramError) as e:
        execute.run(["sh", "-c", "exit 2"], hint="first\n  second")
    assert e.value.line() == "sh failed: exit status 2 (first; second)"
    e2 = _stage_error("printf 'psql: error: connection failed\\n\\tIs it up?\\n' >&2; exit 2")
    assert "\n" not in e2.line()


def test_the_debug_line_masks_a_password_the_run_knows_however_malformed(caplog):
    from pgvault import masking

    masking.reset()
    masking.remember_in("target.url=postgresql://u:pa ss@wörd@h/d")
    try:
        with caplog.at_level(logging.DEBUG):
            execute.run(["sh", "-c", "exit 0", "sh", "note: pa ss@wörd, pa%20ss%40w%C3%B6rd"])
    finally:
        masking.reset()
    assert "pa ss@wörd" not in caplog.text and "pa%20ss" not in caplog.text
    assert "note: ****, ****" in caplog.text


def test_a_notices_location_line_is_not_taken_for_the_error():
    """psql with VERBOSITY=verbose follows every message, a NOTICE too, with a LOCATION
    line naming a C function, which may well be called ...Error...."""
    stderr = (
        'psql:<stdin>:3: NOTICE:  00000: table "gone" does not exist, skipping\n'
        "LOCATION:  DropErrorMsgNonExistent, tablecmds.c:1337\n"
        'psql:<stdin>:9: ERROR:  42703: column "is_anonymous" does not exist\n'
        "LOCATION:  errorMissingColumn, parse_relation.c:3650\n"
    )
    e = execute.stage_failure("psql", 3, stderr)
    assert e.what.endswith('ERROR:  42703: column "is_anonymous" does not exist')
