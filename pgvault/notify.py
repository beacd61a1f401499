"""Telling people and programs how a run went: hook commands, healthchecks.io-style pings
and Apprise notifications.

Hook commands are the user's own configured strings, split like a shell line and run
without a shell; the run reaches them only through PGVAULT_* environment variables, so
nothing a database or an error message holds is ever parsed as a command. A notifier
that is down, slow or wrong costs at most timeout * (retries + 1) seconds and one warning
line: it never fails nor hangs the run it reports on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pgvault import hooks, masking
from pgvault.config import NotifyWhen, PgvaultConfig
from pgvault.errors import PgvaultError, one_line

# The database's credentials: a hook has no business with them.
DROPPED = frozenset({"PGPASSWORD", "DATABASE_URL"})
ENV_NAMES = (
    "PGVAULT_COMMAND", "PGVAULT_TARGET", "PGVAULT_ENV", "PGVAULT_DIR", "PGVAULT_STATUS",
    "PGVAULT_PREFIX", "PGVAULT_ERROR", "PGVAULT_EXIT_CODE", "PGVAULT_SIZE_BYTES",
    "PGVAULT_ROWS", "PGVAULT_DURATION_SECONDS", "PGVAULT_VERIFIED",
)  # fmt: skip
# URL schemes (each also with an s: https, jsons) whose host part is a host, not a token.
HOST_SCHEMES = frozenset({"http", "json", "xml", "form", "ntfy", "apprise", "gotify", "mmost",
                          "mailto", "matrix", "rocket", "nctalk", "ncloud"})  # fmt: skip
# Between two attempts at a notifier: long enough for a blip, short enough not to matter.
RETRY_PAUSE = 1.0
# What a notifier thread may take beyond its own timeouts before we stop waiting for it.
SLACK = 2.0
# A ping answer is never interesting beyond its status; read a little so keep-alive ends.
_ANSWER_BYTES = 4096


class HookFailed(PgvaultError):
    """A hook command failed (hooks.before: the run does not start)."""

    exit_code = 1


# --- hook commands ----------------------------------------------------------------------


def hook_env(run: hooks.Run) -> dict[str, str]:
    """The environment a hook command runs with: ours without its secrets, plus the run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in DROPPED and k not in ENV_NAMES and masking.mask(v) == v
    }
    known: dict[str, object | None] = {
        "PGVAULT_COMMAND": run.command,
        "PGVAULT_TARGET": run.target,
        "PGVAULT_ENV": run.env,
        "PGVAULT_DIR": run.directory,
        "PGVAULT_STATUS": run.status,
        "PGVAULT_PREFIX": run.prefix,
        "PGVAULT_ERROR": run.error,
        # Before the end a run has no exit code yet, only the field's default.
        "PGVAULT_EXIT_CODE": None if run.status == "running" else run.exit_code,
        "PGVAULT_SIZE_BYTES": run.size_bytes,
        "PGVAULT_ROWS": run.rows,
        "PGVAULT_DURATION_SECONDS": None if run.duration_s is None else f"{run.duration_s:.3f}",
        "PGVAULT_VERIFIED": None if run.verified is None else str(run.verified).lower(),
    }
    for name, value in known.items():
        if value is not None:
            env[name] = masking.mask(str(value))
    return env


def run_commands(
    commands: list[str], run: hooks.Run, *, timeout: float, hook: str = "before"
) -> None:
    """Run each command of hooks.<hook> in turn; the first that fails raises HookFailed."""
    env = hook_env(run)
    for command in commands:
        _run_one(str(command), env, timeout, hook)


def _run_one(command: str, env: dict[str, str], timeout: float, hook: str) -> None:
    shown = one_line(masking.mask(command))

    def failed(what: str) -> HookFailed:
        return HookFailed(
            f"hooks.{hook} command `{shown}` {what}", f"fix the hook or remove it from hooks.{hook}"
        )

    try:
        argv = shlex.split(command)
    except ValueError as e:
        raise failed(f"cannot be split like a shell line: {e}") from None
    if not argv:
        raise failed("is empty")
    try:
        # Its own session: on a timeout the whole group goes, children included.
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True, close_fds=True
        )
    except FileNotFoundError:
        raise failed("was not found (give its absolute path)") from None
    except OSError as e:
        raise failed(f"cannot be run: {e.strerror or e}") from None
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise failed(f"did not finish within {timeout:g} s and was killed") from None
    except BaseException:  # Ctrl-C does not reach another session: end it ourselves
        _kill_group(proc)
        raise
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        raise failed(f"was killed by {name}")
    if code != 0:
        raise failed(f"exited with {code}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# --- the observer ---------------------------------------------------------------------------


def _apprise_logger() -> logging.Logger:
    """Apprise's logger, made quiet: what it says is ours to report, in one line, never
    its own records (or tracebacks) on stderr."""
    logger = logging.getLogger("apprise")
    logger.propagate = False
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    return logger


# A notifier slower than this is down for our purposes: a backup never waits minutes.
MAX_TIMEOUT = 120.0


def check(cfg: PgvaultConfig) -> None:
    """Refuse hooks and notifier settings that could only fail later, before anything runs:
    a hook that cannot be split, a ping URL that is not http(s), an Apprise URL Apprise
    does not know, a notifier timeout of minutes."""
    from pgvault.errors import ConfigError

    for key in ("before", "after", "on_failure"):
        for i, command in enumerate(getattr(cfg.hooks, key)):
            try:
                words = shlex.split(command)
            except ValueError as e:
                raise ConfigError(
                    f"hooks.{key}[{i}] `{command}`: {e}",
                    "fix its quoting; it runs without a shell",
                ) from None
            if not words:
                raise ConfigError(f"hooks.{key}[{i}] is empty", "give a command or remove it")
    if not 0.1 <= cfg.notify.timeout <= MAX_TIMEOUT:
        raise ConfigError(
            f"notify.timeout is {cfg.notify.timeout}", f"give seconds from 0.1 to {MAX_TIMEOUT:g}"
        )
    url = cfg.notify.ping_url
    if url is not None:
        try:
            parts = urlsplit(url)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        except ValueError:
            usable = False
        if not usable:
            raise ConfigError(
                f"notify.ping_url {shown_url(url)} is not an http(s) URL",
                "give the check's URL, e.g. https://hc-ping.com/UUID",
            )
    if cfg.notify.apprise:
        import apprise

        _apprise_logger()

        for i, u in enumerate(cfg.notify.apprise):
            if apprise.Apprise.instantiate(u, suppress_exceptions=True) is None:
                raise ConfigError(
                    f"notify.apprise[{i}] {shown_url(u)} is not a URL Apprise knows",
                    "see Apprise's list of services; check it with `apprise --dry-run URL`",
                )


def observer(cfg: PgvaultConfig, warn: Callable[[str], None]) -> hooks.Hook | None:
    """The hook that runs hooks.after / hooks.on_failure, pings and Apprise for a run;
    None when none of them is configured."""
    after, on_failure = list(cfg.hooks.after), list(cfg.hooks.on_failure)
    ping_url, apprise_urls = cfg.notify.ping_url, list(cfg.notify.apprise)
    if not (after or on_failure or ping_url or apprise_urls):
        return None
    timeout, retries = float(cfg.notify.timeout), max(0, int(cfg.notify.retries))
    always = NotifyWhen(cfg.notify.apprise_on) is NotifyWhen.always

    def told(event: hooks.Event, run: hooks.Run) -> None:
        commands = {hooks.Event.success: after, hooks.Event.failure: on_failure}.get(event)
        if commands:
            name = "after" if event is hooks.Event.success else "on_failure"
            try:
                run_commands(commands, run, timeout=cfg.hooks.timeout, hook=name)
            except HookFailed as e:
                warn(e.line())
        # The check a ping URL feeds watches the (scheduled) backup: a manual verify or
        # restore must neither reset nor fail it.
        if ping_url and run.command == "backup":
            ping(ping_url, event, run, warn, timeout=timeout, retries=retries)
        wanted = event is hooks.Event.failure or (event is hooks.Event.success and always)
        if apprise_urls and wanted:
            send_apprise(apprise_urls, run, warn, timeout=timeout, retries=retries)

    return told


def shown_url(url: str) -> str:
    """url as a warning may show it: scheme://host[:port], the path (often the secret
    UUID or token) and any user:password left out. Most Apprise URLs keep a token where
    the host would be (slack://TokenA/..., tgram://bot_token/...): only scheme://... then."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # tgram://123:token/... has no port where urlsplit wants one
        lead = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
        return f"{lead.group(1).lower()}://..." if lead else "an unparseable URL"
    if not scheme:
        return "an unparseable URL"
    if scheme.rstrip("s") not in HOST_SCHEMES:
        return f"{scheme}://..."
    rest = "/..." if parts.path.strip("/") or parts.query else ""
    return f"{scheme}://{host}{port}{rest}"


def _summary(run: hooks.Run) -> list[str]:
    lines = [run.error] if run.error else []
    for label, value in (("set", run.prefix), ("env", run.env), ("dir", run.directory)):
        if value:
            lines.append(f"{label}: {value}")
    if run.size_bytes is not None:
        lines.append(f"size: {run.size_bytes} bytes")
    if run.rows is not None:
        lines.append(f"rows: {run.rows}")
    if run.duration_s is not None:
        lines.append(f"duration: {run.duration_s:.1f} s")
    if run.verified is not None:
        lines.append(f"verified: {'matched' if run.verified else 'did not match'}")
    return [masking.mask(line) for line in lines]


# --- pings ----------------------------------------------------------------------------------


def ping(
    url: str,
    event: hooks.Event,
    run: hooks.Run,
    warn: Callable[[str], None],
    *,
    timeout: float,
    retries: int,
) -> None:
    """Ping url (start), url (success) or url/fail in healthchecks.io's style."""
    suffix = {hooks.Event.start: "/start", hooks.Event.failure: "/fail"}.get(event, "")
    try:
        parts = urlsplit(url)
        target = urlunsplit(parts._replace(path=parts.path.rstrip("/") + suffix))
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        target, usable = "", False
    if not usable:
        warn(f"notify.ping_url is not an http(s) URL; the {run.command} itself is unaffected")
        return
    body = "" if event is hooks.Event.start else "\n".join(_summary(run))
    import urllib.error  # here: http.client and email cost every command 11 ms to import
    import urllib.request

    def attempt() -> str | None:
        request = urllib.request.Request(
            target,
            data=body.encode(),
            method="POST",
            headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": "pgvault"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                answer.read(_ANSWER_BYTES)
        except urllib.error.HTTPError as e:
            e.close()
            return f"HTTP {e.code}"
        except urllib.error.URLError as e:
            return _reason(e.reason)
        except Exception as e:  # http.client's own errors are no OSError: any is a failure
            return _reason(e)
        return None

    problem = _with_retries(attempt, timeout=timeout, retries=retries)
    if problem is not None:
        warn(
            f"ping to {shown_url(target)} failed: {problem}; the {run.command} itself is unaffected"
        )


def _reason(e: object) -> str:
    if isinstance(e, TimeoutError) or "timed out" in str(e):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return one_line(str(e)) or type(e).__name__


def _with_retries(attempt: Callable[[], str | None], *, timeout: float, retries: int) -> str | None:
    """Call attempt (None: it worked; else why not) up to retries + 1 times, all of it in a
    daemon thread we stop waiting for after its time is up (a server that trickles bytes
    could keep a socket timeout from ever firing)."""
    result: list[str | None] = ["timed out"]

    def tries() -> None:
        for n in range(retries + 1):
            if n:
                time.sleep(min(RETRY_PAUSE, timeout))
            result[0] = attempt()
            if result[0] is None:
                return

    # Then abandoned: a daemon thread does not keep the process alive.
    thread = threading.Thread(target=tries, name="pgvault-ping", daemon=True)
    thread.start()
    thread.join(_budget(timeout, retries))
    return result[0]


def _budget(timeout: float, retries: int) -> float:
    """The longest a notifier may take: every attempt, the pauses, and some slack."""
    return (timeout + min(RETRY_PAUSE, timeout)) * (retries + 1) + SLACK


# --- Apprise --------------------------------------------------------------------------------


class _Captured(logging.Handler):
    """Apprise's warnings of one thread: the reason a delivery failed."""

    def __init__(self, thread: int) -> None:
        super().__init__(logging.WARNING)
        self.thread = thread
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            with contextlib.suppress(Exception):
                self.messages.append(record.getMessage())


def send_apprise(
    urls: list[str],
    run: hooks.Run,
    warn: Callable[[str], None],
    *,
    timeout: float,
    retries: int,
) -> None:
    """Send the run's title and summary to every Apprise URL, all at once."""
    try:
        import apprise
    except Exception:  # missing, or broken by one of its own dependencies
        warn(f"apprise cannot be imported; the {run.command} itself is unaffected")
        return
    logger = _apprise_logger()
    outcome = "failed" if run.status == "failure" else "succeeded"
    title = masking.mask(f"pgvault {run.command} of {run.target} {outcome}")
    body = "\n".join(_summary(run)) or title
    kind = apprise.NotifyType.FAILURE if run.status == "failure" else apprise.NotifyType.SUCCESS
    problems: dict[str, str | None] = {}

    def deliver(url: str) -> None:
        problems[url] = _deliver(apprise, logger, url, (title, body, kind), timeout=timeout,
                                 retries=retries)  # fmt: skip

    threads = [threading.Thread(target=deliver, args=(u,), daemon=True) for u in urls]
    deadline = time.monotonic() + _budget(timeout, retries)
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    for url in urls:
        problem = problems.get(url, "timed out")
        if problem is not None:
            warn(f"apprise notification to {shown_url(url)} failed: {problem}; "
                 f"the {run.command} itself is unaffected")  # fmt: skip


def _deliver(
    apprise: Any,
    logger: logging.Logger,
    url: str,
    message: tuple[str, str, Any],
    *,
    timeout: float,
    retries: int,
) -> str | None:
    title, body, kind = message
    captured = _Captured(threading.get_ident())
    logger.addHandler(captured)
    try:
        service = apprise.Apprise.instantiate(url, asset=apprise.AppriseAsset(async_mode=False))
        if service is None:
            return "not a URL Apprise knows (check it with `apprise --dry-run`)"
        # Apprise's own per-request bounds default to 4 s each.
        service.socket_connect_timeout = timeout
        service.socket_read_timeout = timeout
        # A plugin's rate limit (ntfy: one message per 5 s) would hold our one retry past
        # its deadline; we pause between attempts ourselves.
        service.request_rate_per_sec = 0
        for n in range(retries + 1):
            if n:
                time.sleep(min(RETRY_PAUSE, timeout))
            captured.messages.clear()
            # The plugin itself, not Apprise's dispatcher: it sends in this thread, so
            # the records we capture are this URL's.
            if service.notify(body=body, title=title, notify_type=kind):
                return None
        said = captured.messages[-1] if captured.messages else "not delivered"
        return _without_url_parts(said, url)
    except Exception as e:  # a plugin's bug is one more notifier that is down
        return _without_url_parts(f"{type(e).__name__}: {e}", url)
    finally:
        logger.removeHandler(captured)


def _without_url_parts(text: str, url: str) -> str:
    """Apprise's message with the URL's tokens (its path, user, password, query values)
    and any URL it quotes taken out: they are often the notifier's credentials."""
    try:
        parts = urlsplit(url)
        pieces = [*re.split(r"[/:@?&=]", f"{parts.netloc.rpartition('@')[0]}/{parts.path}"),
                  *re.split(r"[&=]", parts.query)]  # fmt: skip
        if parts.scheme.lower().rstrip("s") not in HOST_SCHEMES:
            pieces.append(parts.netloc.rpartition("@")[2].partition(":")[0])
    except ValueError:
        pieces = []
    for piece in sorted(set(pieces), key=len, reverse=True):
        if len(piece) >= masking.MIN_LITERAL:
            text = text.replace(piece, masking.MASK)
    text = re.sub(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+", lambda m: shown_url(m.group()), text)
    return one_line(masking.mask(text))[:300].rstrip(" .")
