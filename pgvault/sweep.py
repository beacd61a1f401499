"""A multirun's jobs, each in a pgvault process of its own, and the summary of them all.

Hydra's launchers report only the first failed job, drop what the jobs return and abort
the sweep when a job exits or dies. So a job here never fails in Hydra's eyes: it runs
`pgvault COMMAND overrides...` as a child (its arguments on stdin, so no password is in
a process list), in a session of its own that a timeout ends whole (pg_dump included),
prints the child's lines prefixed with its label, and writes the child's outcome into
the sweep's private directory. The CLI reads those outcomes when the launcher returns:
one table (or JSON), and an error naming every job that failed.

Passwords taken out of the overrides (masking.slot) live in the CLI's process only; a
launcher's workers get them in PGVAULT_SWEEP_SECRETS, set for the sweep's length.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from pgvault import masking
from pgvault.errors import PgvaultError, one_line

SECRETS_ENV = "PGVAULT_SWEEP_SECRETS"
OUTCOME_ENV = "PGVAULT_SWEEP_OUTCOME"
KEYS_ENV = "PGVAULT_SWEEP_KEYS"
# Seconds a timed-out job gets to clean up after SIGTERM before its session is killed.
GRACE = 10.0
# A sweep's jobs that share a directory take turns on its lock: how long one waits for
# it when neither lock_timeout nor sweep.timeout says.
SHARED_DIR_WAIT = 3600.0


@dataclass
class JobOutcome:
    """What one job of a sweep did; the summary's row."""

    num: int
    label: str
    status: str = "failure"  # success, failure or timeout
    exit_code: int = 1
    prefix: str | None = None
    size_bytes: int | None = None
    rows: int | None = None
    verified: bool | None = None
    duration_s: float = 0.0
    error: str | None = None
    format: str = "text"
    extra: dict[str, Any] = field(default_factory=dict)


# -- The CLI's side: before and after the launcher -----------------------------------


@contextlib.contextmanager
def sweeping(overrides: Sequence[str]) -> Iterator[list[str]]:
    """Around a multirun: hand the secrets to the launcher's local workers, and yield the
    overrides that tell every job (wherever it runs) which keys are swept (its label) and
    where the user's configs are."""
    from pgvault.cli import user_conf_dir

    keys = ";".join(swept_keys(overrides))
    extra = [f"++hydra.job.env_set.{KEYS_ENV}='{keys}'"]
    conf = user_conf_dir()
    if conf is not None and "'" not in str(conf):
        extra.append(f"++hydra.job.env_set.PGVAULT_CONFIG_DIR='{conf}'")
    saved = os.environ.get(SECRETS_ENV)
    os.environ[SECRETS_ENV] = json.dumps(masking.slots())
    try:
        yield extra
    finally:
        if saved is None:
            os.environ.pop(SECRETS_ENV, None)
        else:
            os.environ[SECRETS_ENV] = saved


def swept_keys(overrides: Sequence[str]) -> list[str]:
    """The keys of the overrides that sweep (target=a,b  dir=range(...)), in order."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    keys = []
    for word in overrides:
        with contextlib.suppress(Exception):  # Hydra itself reports what it cannot read
            o = parser.parse_override(word)
            if o.is_sweep_override() and not o.is_hydra_override():
                keys.append(o.key_or_group)
    return keys


def outcomes(sweep_dir: str, returned: Sequence[JobOutcome] = ()) -> list[JobOutcome]:
    """Every job's outcome: as the launcher returned it, else as its job wrote it."""
    found = {o.num: o for o in returned}
    for path in Path(sweep_dir).glob("outcome-*.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            o = JobOutcome(**json.loads(path.read_text()))
            found.setdefault(o.num, o)
    return [found[n] for n in sorted(found)]


def returned(batches: Any) -> list[JobOutcome]:
    """The outcomes in what Hydra's sweeper returned (batches of JobReturn)."""
    out = []
    for batch in batches or []:
        for job in batch:
            value = getattr(job, "_return_value", None)
            with contextlib.suppress(TypeError):
                if isinstance(value, dict):
                    out.append(JobOutcome(**value))
    return out


def summarize(
    sweep_dir: str, returned: Sequence[JobOutcome] = (), stopped: BaseException | None = None
) -> None:
    """Print the table (or JSON) of the sweep's jobs; raise SweepFailed naming every job
    that failed, or the launcher's own error when it stopped the sweep."""
    done = outcomes(sweep_dir, returned)
    if not done and stopped is not None:
        raise stopped
    as_json = any(o.format == "json" for o in done)
    if as_json:
        print(json.dumps({"jobs": [_public(o) for o in done]}, indent=2), flush=True)
    else:
        print(table(done), flush=True)
    failed = [o for o in done if o.status != "success"]
    if stopped is not None:
        why = one_line(getattr(stopped, "line", lambda: str(stopped))())
        raise SweepFailed(
            f"the sweep stopped after {len(done)} job(s): {why or type(stopped).__name__}",
            "the table above lists the jobs that ended; run the others again",
        )
    if failed:
        names = ", ".join(o.label for o in failed)
        raise SweepFailed(
            f"{len(failed)} of {len(done)} jobs failed: {names}",
            "each one's error is in the table above; the other jobs' sets are complete",
        )


class SweepFailed(PgvaultError):
    """One job or more of a multirun failed."""


def _public(o: JobOutcome) -> dict[str, Any]:
    row = asdict(o)
    del row["format"], row["extra"]
    return row


def table(done: Sequence[JobOutcome]) -> str:
    from pgvault.ui import mb

    head = ("job", "result", "set", "size", "time", "error")
    rows = [
        (o.label, "ok" if o.status == "success" else o.status, o.prefix or "-",
         mb(o.size_bytes) if o.size_bytes is not None else "-", f"{o.duration_s:.1f} s",
         o.error or "")
        for o in done
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    lines = []
    for r in [head, *rows]:
        cells = [c.ljust(w) for c, w in zip(r, widths, strict=False)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    ok = sum(o.status == "success" for o in done)
    lines.append(f"{ok} of {len(done)} jobs succeeded")
    return "\n".join(lines)


# -- A job: runs in the launcher's process or worker -----------------------------------


def run_job(cfg: Any, overrides: Sequence[str], sweep_dir: str, num: int) -> dict[str, Any]:
    """Run one job of a sweep in a child pgvault; record its outcome in the sweep dir
    (when this process can reach it) and return it. Never raises, but for an interrupt
    (the child is ended first)."""
    started = time.monotonic()
    outcome = JobOutcome(num=num, label=f"job {num}")
    try:
        masking.adopt(json.loads(os.environ.get(SECRETS_ENV) or "[]"))
        outcome.label = label(cfg, overrides, num)
        outcome = _run_child(cfg, overrides, sweep_dir, outcome)
    except KeyboardInterrupt:
        outcome.error = "interrupted"
        outcome.exit_code = 130
        raise
    except BaseException as e:  # a bug or a SystemExit: this job's failure, no one else's
        text = e.line() if isinstance(e, PgvaultError) else f"{type(e).__name__}: {e}"
        outcome.error = masking.mask(one_line(text))
    finally:
        outcome.duration_s = round(time.monotonic() - started, 3)
        with contextlib.suppress(OSError):
            _write(Path(sweep_dir, f"outcome-{num}.json"), asdict(outcome))
    return asdict(outcome)


def label(cfg: Any, overrides: Sequence[str], num: int) -> str:
    """The job's name in lines and the table: the swept value (target=a,b: "a"), else
    the target's name and the job's number."""
    keys = [k for k in os.environ.get(KEYS_ENV, "").split(";") if k]
    values = {}
    for word in overrides:
        key, _, value = word.partition("=")
        values[key.lstrip("+~")] = re.sub(r"\\(.)", r"\1", value)  # Hydra's escapes
    if keys == ["target"] and "target" in values:
        return values["target"]
    picked = [f"{k}={masking.mask(values[k])}" for k in keys if k in values]
    if picked:
        return " ".join(picked)
    try:
        name = cfg.get("target", {}).get("name")
    except Exception:  # a target without a name: its job says so itself
        name = None
    return f"{name or 'job'}#{num}"


def _run_child(cfg: Any, overrides: Sequence[str], sweep_dir: str, o: JobOutcome) -> JobOutcome:
    from pgvault import config, units

    if not masking.slots() and any(f"${{{masking.RESOLVER}:" in w for w in overrides):
        raise PgvaultError(
            "a password given on the command line cannot reach this job's worker",
            "give it in ~/.pgpass, a libpq service file or the workers' environment",
        )
    typed = config.to_typed(cfg)
    o.format = typed.sweep.format.value
    timeout = (
        units.parse_duration(typed.sweep.timeout, "sweep.timeout") if typed.sweep.timeout else None
    )
    command = typed.command
    args = [command, *real_args(w for w in overrides if not w.startswith("command="))]
    from pgvault.commands import SPECS

    if typed.lock_timeout == 0 and "lock_timeout" in SPECS[command].keys:
        # Queue behind a job of the same directory rather than fail.
        args.append(f"lock_timeout={timeout or SHARED_DIR_WAIT:g}")
    args.append("hydra.mode=RUN")  # a config that sets MULTIRUN must not sweep again
    # In the sweep dir, or (on a Ray node of its own, where it is not) this process's.
    here = sweep_dir if os.path.isdir(sweep_dir) else None
    fd, name = tempfile.mkstemp(prefix=f"run-{o.num}-", suffix=".json", dir=here)
    os.close(fd)
    outcome_file = Path(name)
    env = {k: v for k, v in os.environ.items() if k != SECRETS_ENV}
    env[OUTCOME_ENV] = str(outcome_file)
    env.setdefault("PYTHONUNBUFFERED", "1")
    child = subprocess.Popen(
        [sys.executable, "-m", "pgvault.sweep"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    last_error: list[str] = []
    json_mode = o.format == "json"
    readers = [
        threading.Thread(target=_relay, args=(child.stdout, o.label, 2 if json_mode else 1, None)),
        threading.Thread(target=_relay, args=(child.stderr, o.label, 2, last_error)),
    ]
    for r in readers:
        r.start()
    ran: dict[str, Any] = {}
    try:
        assert child.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            child.stdin.write(json.dumps({"args": args}).encode() + b"\n")
            child.stdin.flush()  # and kept open: see child_main
        try:
            code: int | None = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end(child)
            code = None
    except BaseException:
        _end(child)
        raise
    finally:
        with contextlib.suppress(OSError):
            if child.stdin is not None:
                child.stdin.close()
        for r in readers:
            r.join(timeout=GRACE)
        with contextlib.suppress(FileNotFoundError, ValueError):
            ran = json.loads(outcome_file.read_text() or "{}")
        with contextlib.suppress(FileNotFoundError):
            outcome_file.unlink()
    for key in ("prefix", "size_bytes", "rows", "verified", "error"):
        setattr(o, key, ran.get(key))
    if code is None:
        o.status, o.exit_code = "timeout", 124
        o.error = f"still running after sweep.timeout={typed.sweep.timeout}, so it was ended"
    elif code == 0:
        o.status, o.exit_code, o.error = "success", 0, None
    else:
        o.status, o.exit_code = "failure", code
        if code < 0:
            o.error = f"its process was killed by signal {-code}"
        elif not o.error:
            o.error = last_error[-1] if last_error else f"exit code {code}"
    return o


def real_args(overrides: Any) -> list[str]:
    """The overrides as the user wrote them: each ${pgvault_secret:N} back to its secret
    (this worker got them in PGVAULT_SWEEP_SECRETS)."""
    secrets = json.loads(os.environ.get(SECRETS_ENV) or "null") or masking.slots()
    return [masking.unslot(o, secrets) for o in overrides]


def _relay(stream: IO[bytes] | None, name: str, fd: int, errors: list[str] | None) -> None:
    """Copy stream's lines to fd, each prefixed with the job's name and written whole."""
    if stream is None:
        return
    lead = f"[{name}] ".encode()
    for raw in iter(stream.readline, b""):
        line = raw.rstrip(b"\r\n").split(b"\r")[-1]  # a progress line's last state
        if errors is not None and line.startswith(b"pgvault: error: "):
            errors.append(line[len(b"pgvault: error: ") :].decode(errors="replace"))
        with contextlib.suppress(OSError):
            os.write(fd, lead + line + b"\n")
    stream.close()


def _end(child: subprocess.Popen[bytes]) -> None:
    """End the child's whole session: SIGTERM (it cleans up as on Ctrl-C), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        try:
            child.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signal.SIGKILL)  # what it left behind in its session


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


# -- The child: `python -m pgvault.sweep` ----------------------------------------------


def record(run: Any) -> None:
    """In a sweep's child: leave the ended run's outcome where its job reads it."""
    path = os.environ.get(OUTCOME_ENV)
    if path:
        with contextlib.suppress(OSError):
            _write(Path(path), asdict(run))


def child_main() -> None:
    """Read the job's arguments (one line of JSON), then run them. The job keeps stdin
    open: its end (the job's process died, the sweep was killed) ends this run as a
    SIGTERM does, cleaning up, rather than leaving it to run on unwatched."""
    request = json.loads(sys.stdin.buffer.readline())

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()
    from pgvault import cli

    cli.main(list(request["args"]))


if __name__ == "__main__":
    child_main()
