"""Hook commands, pings and Apprise against real processes and a local HTTP server the
test starts: a notifier that is down, hanging or failing costs a warning line and a
bounded wait, never the run; the run reaches a hook only through its environment."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgvault import hooks, masking, notify
from pgvault.config import NotifyWhen, PgvaultConfig

TIMEOUT = 0.5
RETRIES = 1
# What a notifier may cost: every attempt's timeout, the pauses between them, and slack
# for a loaded machine.
BOUND = TIMEOUT * (RETRIES + 1) + notify.RETRY_PAUSE * RETRIES + 2.5

FAILED = hooks.Run(
    "backup", "crm", "prod", "/backups", prefix="crm_20240102T030405Z", status="failure",
    error="pg_dump failed: connection refused", exit_code=1, duration_s=1.5, started_at=1e9,
)  # fmt: skip
DONE = hooks.Run(
    "backup", "crm", "prod", "/backups", prefix="crm_20240102T030405Z", status="success",
    size_bytes=12345, rows=42, duration_s=2.0, started_at=1e9,
)  # fmt: skip
STARTED = hooks.Run("backup", "crm", "prod", "/backups", started_at=1e9)


@pytest.fixture(autouse=True)
def forget_secrets() -> Iterator[None]:
    masking.reset()
    yield
    masking.reset()


# --- a local notifier -------------------------------------------------------------------


@dataclass
class Notifier:
    url: str
    port: int
    status: int = 200
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # method, path, body


@pytest.fixture
def server() -> Iterator[Notifier]:
    notifier = Notifier("", 0)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.answer()

        def do_POST(self) -> None:
            self.answer()

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            notifier.requests.append((self.command, self.path, body))
            self.send_response(notifier.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = httpd.server_address[1]
    notifier.url, notifier.port = f"http://127.0.0.1:{port}", port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield notifier
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hanging_port() -> Iterator[int]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


def config(**notify_cfg: object) -> PgvaultConfig:
    cfg = PgvaultConfig()
    cfg.notify.timeout, cfg.notify.retries = TIMEOUT, RETRIES
    for key, value in notify_cfg.items():
        setattr(cfg.notify, key, value)
    return cfg


def tell(cfg: PgvaultConfig, *pairs: tuple[hooks.Event, hooks.Run]) -> list[str]:
    warnings: list[str] = []
    hook = notify.observer(cfg, warnings.append)
    assert hook is not None
    for event, run in pairs:
        hook(event, run)
    return warnings


# --- pings ----------------------------------------------------------------------------------


def test_pings_start_success_and_fail_with_the_error_line(server):
    secret = "0f8a3c1e-7b7d-4b8e-9a1e-5d3c2b1a0f9e"
    cfg = config(ping_url=f"{server.url}/{secret}")
    warnings = tell(cfg, (hooks.Event.start, STARTED), (hooks.Event.success, DONE),
                    (hooks.Event.failure, FAILED))  # fmt: skip
    assert warnings == []
    paths = [path for _, path, _ in server.requests]
    assert paths == [f"/{secret}/start", f"/{secret}", f"/{secret}/fail"]
    assert "pg_dump failed: connection refused" in server.requests[2][2]
    assert "12345" in server.requests[1][2] and "crm_20240102T030405Z" in server.requests[1][2]


@pytest.mark.parametrize("command", ["verify", "restore", "prune"])
def test_only_backup_runs_ping_the_check(server, command):
    """A manual verify or restore must neither reset nor fail the backup's check."""
    cfg = config(ping_url=f"{server.url}/uuid")
    runs = [hooks.Run(**{**r.__dict__, "command": command}) for r in (STARTED, DONE, FAILED)]
    events = (hooks.Event.start, hooks.Event.success, hooks.Event.failure)
    assert tell(cfg, *zip(events, runs, strict=True)) == []
    assert server.requests == []


def test_a_ping_url_keeps_its_query_and_loses_a_trailing_slash(server):
    tell(config(ping_url=f"{server.url}/abc/?create=1"), (hooks.Event.failure, FAILED))
    assert [path for _, path, _ in server.requests] == ["/abc/fail?create=1"]


def test_a_server_that_is_down_is_one_warning_without_the_secret_path(closed_port):
    cfg = config(ping_url=f"http://127.0.0.1:{closed_port}/the-secret-uuid")
    started = time.monotonic()
    warnings = tell(cfg, (hooks.Event.failure, FAILED))
    assert time.monotonic() - started < BOUND
    assert len(warnings) == 1
    assert warnings[0].startswith(f"ping to http://127.0.0.1:{closed_port}/... failed: ")
    assert "refused" in warnings[0] and "unaffected" in warnings[0]
    assert "the-secret-uuid" not in warnings[0]


def test_a_hanging_server_costs_at_most_the_timeouts(hanging_port):
    cfg = config(ping_url=f"http://127.0.0.1:{hanging_port}/uuid")
    started = time.monotonic()
    warnings = tell(cfg, (hooks.Event.success, DONE))
    elapsed = time.monotonic() - started
    assert elapsed < BOUND
    assert elapsed >= TIMEOUT * (RETRIES + 1) * 0.9  # it did wait for each attempt
    assert warnings == [
        f"ping to http://127.0.0.1:{hanging_port}/... failed: timed out; "
        "the backup itself is unaffected"
    ]


def test_a_500_is_retried_then_a_warning(server):
    server.status = 500
    warnings = tell(config(ping_url=f"{server.url}/uuid"), (hooks.Event.failure, FAILED))
    assert len(server.requests) == RETRIES + 1
    assert len(warnings) == 1 and "HTTP 500" in warnings[0]


def test_a_ping_url_that_is_not_http_is_a_warning():
    warnings = tell(config(ping_url="file:///etc/passwd"), (hooks.Event.failure, FAILED))
    assert len(warnings) == 1 and "not an http(s) URL" in warnings[0]


@settings(max_examples=50, deadline=None)
@given(
    user=st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8),
    token=st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=8),
)
def test_a_shown_url_never_holds_its_tokens(user, token):
    for url, shown in [
        (f"https://{user}:{token}@hc-ping.com/x", "https://hc-ping.com/..."),
        (f"https://hc-ping.com/{token}", "https://hc-ping.com/..."),
        (f"ntfys://{user}:{token}@ntfy.sh/{token}?priority={token}", "ntfys://ntfy.sh/..."),
        # Where Apprise keeps a token in the host's place, no host is shown.
        (f"tgram://{token}/{user}", "tgram://..."),
        (f"slack://{token}/{token}/{token}/#{user}", "slack://..."),
    ]:
        assert notify.shown_url(url) == shown
    said = f"posting to https://hooks.slack.com/services/{token} failed for {token}, {user}"
    reason = notify._without_url_parts(said, f"slack://{token}/B0/C0/#{user}")
    assert token not in reason and "https://hooks.slack.com/..." in reason


# --- Apprise ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def apprise_loaded() -> None:
    """Import Apprise once, so the timings below measure the sending only."""
    import apprise  # noqa: F401


def test_apprise_sends_the_failure_with_its_error_line(server):
    warnings = tell(config(apprise=[f"json://127.0.0.1:{server.port}/notify"]),
                    (hooks.Event.success, DONE), (hooks.Event.failure, FAILED))  # fmt: skip
    assert warnings == []
    assert len(server.requests) == 1  # apprise_on=failure: the success is not sent
    method, path, body = server.requests[0]
    payload = json.loads(body)
    assert (method, path) == ("POST", "/notify")
    assert payload["title"] == "pgvault backup of crm failed"
    assert "pg_dump failed: connection refused" in payload["message"]
    assert "crm_20240102T030405Z" in payload["message"]


def test_apprise_on_always_sends_the_success_too(server):
    cfg = config(apprise=[f"json://127.0.0.1:{server.port}/n"], apprise_on=NotifyWhen.always)
    assert tell(cfg, (hooks.Event.start, STARTED), (hooks.Event.success, DONE)) == []
    [(_, _, body)] = server.requests
    payload = json.loads(body)
    assert payload["title"] == "pgvault backup of crm succeeded"
    assert "12345 bytes" in payload["message"]


@pytest.mark.parametrize("kind", ["down", "hanging", "500"])
def test_apprise_that_cannot_deliver_is_one_bounded_warning(
    kind, server, closed_port, hanging_port
):
    server.status = 500
    port = {"down": closed_port, "hanging": hanging_port, "500": server.port}[kind]
    cfg = config(apprise=[f"json://127.0.0.1:{port}/secret-token-path"])
    started = time.monotonic()
    warnings = tell(cfg, (hooks.Event.failure, FAILED))
    assert time.monotonic() - started < BOUND
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"apprise notification to json://127.0.0.1:{port}/... failed")
    assert "secret-token-path" not in warnings[0]
    if kind == "500":
        assert len(server.requests) == RETRIES + 1 and "500" in warnings[0]


def test_apprise_logs_nothing_of_its_own_on_stderr(closed_port):
    """In a process of its own (pytest's log capture would hide Apprise's records), with a
    root handler as Hydra's logging would install."""
    code = (
        "import logging, sys; logging.basicConfig(); from pgvault import hooks, notify;"
        "from pgvault.config import PgvaultConfig;"
        "cfg = PgvaultConfig(); cfg.notify.timeout = 0.5;"
        f"cfg.notify.apprise = ['json://127.0.0.1:{closed_port}/x', 'nosuchscheme://h/t'];"
        "hook = notify.observer(cfg, lambda w: print('warning:', w, file=sys.stderr));"
        "hook(hooks.Event.failure, hooks.Run('backup', 'crm', 'd', None, status='failure'))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and all(ln.startswith("warning: apprise notification") for ln in lines)
    assert done.stdout == ""


def test_an_unknown_apprise_url_is_a_warning():
    warnings = tell(config(apprise=["nosuchscheme://host/token"]), (hooks.Event.failure, FAILED))
    assert len(warnings) == 1 and "to nosuchscheme://... failed" in warnings[0]


def test_a_remembered_password_reaches_no_ping_or_message(server):
    masking.remember("Hunter2-secret")
    failed = hooks.Run(**{**FAILED.__dict__, "error": "auth failed: Hunter2-secret",
                          "directory": "/backups/Hunter2-secret"})  # fmt: skip
    cfg = config(ping_url=f"{server.url}/uuid", apprise=[f"json://127.0.0.1:{server.port}/n"])
    assert tell(cfg, (hooks.Event.failure, failed)) == []
    assert len(server.requests) == 2
    assert all("Hunter2" not in body and "auth failed: ****" in body
               for _, _, body in server.requests)  # fmt: skip


def test_nothing_configured_is_no_observer():
    assert notify.observer(PgvaultConfig(), print) is None


# --- hook commands ------------------------------------------------------------------------

DUMP_ENV = "import json, os, sys; json.dump(dict(os.environ), open(sys.argv[1], 'w'))"


def dump_env_command(out: Path) -> str:
    return shlex.join([sys.executable, "-c", DUMP_ENV, str(out)])


def test_a_hook_sees_the_run_and_no_password(tmp_path, monkeypatch):
    password = "Tr0ub4dor&3"
    monkeypatch.setenv("PGPASSWORD", password)
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@db.example.com/crm")
    monkeypatch.setenv("APP_DSN", f"host=db user=app password={password}")
    monkeypatch.setenv("PGPASSFILE", "/home/app/.pgpass")
    masking.remember(password)
    out = tmp_path / "env.json"
    run = hooks.Run(**{**FAILED.__dict__, "error": f"auth failed for {password}"})
    notify.run_commands([dump_env_command(out)], run, timeout=30)
    env = json.loads(out.read_text())
    assert env["PGVAULT_COMMAND"] == "backup" and env["PGVAULT_TARGET"] == "crm"
    assert env["PGVAULT_ENV"] == "prod" and env["PGVAULT_DIR"] == "/backups"
    assert env["PGVAULT_STATUS"] == "failure" and env["PGVAULT_EXIT_CODE"] == "1"
    assert env["PGVAULT_PREFIX"] == "crm_20240102T030405Z"
    assert env["PGVAULT_ERROR"] == "auth failed for ****"
    assert env["PGVAULT_DURATION_SECONDS"] == "1.500"
    assert "PGVAULT_SIZE_BYTES" not in env and "PGVAULT_VERIFIED" not in env
    assert env["PGPASSFILE"] == "/home/app/.pgpass"
    for gone in ("PGPASSWORD", "DATABASE_URL", "APP_DSN"):
        assert gone not in env
    assert password not in json.dumps(env)


def test_a_running_run_has_no_exit_code_and_stale_values_are_not_inherited(monkeypatch):
    monkeypatch.setenv("PGVAULT_ERROR", "an old error from a parent run")
    env = notify.hook_env(STARTED)
    assert env["PGVAULT_STATUS"] == "running"
    assert "PGVAULT_EXIT_CODE" not in env and "PGVAULT_ERROR" not in env
    done = notify.hook_env(hooks.Run(**{**DONE.__dict__, "verified": True}))
    assert done["PGVAULT_SIZE_BYTES"] == "12345" and done["PGVAULT_ROWS"] == "42"
    assert done["PGVAULT_VERIFIED"] == "true" and done["PGVAULT_EXIT_CODE"] == "0"


@settings(max_examples=60, deadline=None)
@given(password=st.text(st.characters(blacklist_characters="*\x00", blacklist_categories=["Cs"]),
                        min_size=4, max_size=30))  # fmt: skip
def test_hook_env_never_holds_a_remembered_password(password):
    masking.reset()
    masking.remember(password)
    planted = {"PGPASSWORD": password, "SOME_URL": f"https://u:{password}@h/x",
               "NOTE": f"it is {password}!"}  # fmt: skip
    run = hooks.Run("backup", "crm", "default", "/b", error=f"failed: {password}",
                    prefix=password, status="failure")  # fmt: skip
    with mock.patch.dict(os.environ, planted):
        env = notify.hook_env(run)
    assert not any(password in value for value in env.values())
    assert "PGVAULT_ERROR" in env


def test_a_failing_before_hook_is_one_line_naming_it():
    command = shlex.join([sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(notify.HookFailed) as caught:
        notify.run_commands([command], STARTED, timeout=30)
    line = caught.value.line()
    assert "\n" not in line and caught.value.exit_code == 1
    assert line.startswith("hooks.before command `") and "exited with 3" in line
    assert line.endswith("(fix the hook or remove it from hooks.before)")


def test_the_first_failing_command_stops_the_rest(tmp_path):
    out = tmp_path / "env.json"
    with pytest.raises(notify.HookFailed, match="exited with 1"):
        notify.run_commands(["/bin/false", dump_env_command(out)], STARTED, timeout=30)
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "said"),
    [("echo 'unterminated", "cannot be split like a shell line"),
     ("/nonexistent/pgvault-hook --flag", "was not found"), ("   ", "is empty")],
)  # fmt: skip
def test_a_command_that_cannot_run_is_hook_failed(command, said):
    with pytest.raises(notify.HookFailed, match=said) as caught:
        notify.run_commands([command], STARTED, timeout=30, hook="after")
    assert "hooks.after" in caught.value.line() and "\n" not in caught.value.line()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_hook_past_its_timeout_is_killed_with_its_children(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = (
        "import subprocess, sys, time;"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(60)"
    )
    started = time.monotonic()
    with pytest.raises(notify.HookFailed, match="did not finish within 1 s and was killed"):
        notify.run_commands([shlex.join([sys.executable, "-c", code])], STARTED, timeout=1)
    assert time.monotonic() - started < 10
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def test_shell_metacharacters_in_the_run_are_never_interpreted(tmp_path):
    out, planted = tmp_path / "env.json", tmp_path / "pwned"
    evil = f"$(touch {planted}) `touch {planted}`; touch {planted} | touch {planted}"
    run = hooks.Run(**{**FAILED.__dict__, "error": evil, "prefix": f"x;touch {planted}"})
    notify.run_commands([dump_env_command(out), f"echo $(touch {planted})"], run, timeout=30)
    env = json.loads(out.read_text())
    assert env["PGVAULT_ERROR"] == evil and env["PGVAULT_PREFIX"] == f"x;touch {planted}"
    assert not planted.exists()


def test_after_and_on_failure_run_on_their_event_and_failing_ones_warn(tmp_path):
    after, failure = tmp_path / "after.json", tmp_path / "failure.json"
    cfg = PgvaultConfig()
    cfg.hooks.after = [dump_env_command(after), "/bin/false"]
    cfg.hooks.on_failure = [dump_env_command(failure)]
    warnings = tell(cfg, (hooks.Event.start, STARTED), (hooks.Event.success, DONE))
    assert json.loads(after.read_text())["PGVAULT_STATUS"] == "success"
    assert not failure.exists()
    assert warnings == [
        "hooks.after command `/bin/false` exited with 1 "
        "(fix the hook or remove it from hooks.after)"
    ]
    assert tell(cfg, (hooks.Event.failure, FAILED)) == []
    assert json.loads(failure.read_text())["PGVAULT_ERROR"] == FAILED.error
