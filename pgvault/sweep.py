"""A multirun's jobs, each in a pgvault process of its own, and the summary of them all.

Hydra's launchers report only the first failed job, drop what the jobs return and abort
the sweep when a job exits or dies. So a job here never fails in Hydra's eyes: it runs
`pgvault COMMAND overrides...` as a child (its arguments on stdin, so no password is in
a process list), in a session of its own that a timeout ends whole (pg_dump included),
prints the child's lines prefixed with its label, and returns the child's outcome (also
written into the sweep's private directory, when the job can reach it). The CLI prints
one table (or JSON) of them, and an error naming every job that failed.

Passwords taken out of the overrides (masking.slot) stay on this machine: a launcher's
local workers get them in PGVAULT_SWEEP_SECRETS, set for the sweep's length, and each
child the ones its arguments use, on stdin.
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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from pgvault import masking
from pgvault.errors import PgvaultError, one_line

SECRETS_ENV = masking.SLOTS_ENV
OUTCOME_ENV = "PGVAULT_SWEEP_OUTCOME"
KEYS_ENV = "PGVAULT_SWEEP_KEYS"
PARENT_ENV = "PGVAULT_SWEEP_PARENT"
# Whether the user asked for Hydra's tracebacks (HYDRA_FULL_ERROR=1): the CLI sets it for
# its own Hydra calls, and a job's child must not inherit that.
FULL_ERROR_ENV = "PGVAULT_SWEEP_FULL_ERROR"
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


# -- The CLI's side: before and after the launcher -----------------------------------


@contextlib.contextmanager
def sweeping(overrides: Sequence[str], full_error: bool = False) -> Iterator[list[str]]:
    """Around a multirun: hand the secrets to the launcher's local workers, and yield the
    overrides that tell every job (wherever it runs) which keys are swept (its label),
    where the user's configs are, and which process ran the sweep (a job's child ends
    when it is gone)."""
    from pgvault.cli import user_conf_dir

    keys = ";".join(swept_keys(overrides))
    extra = [
        f"++hydra.job.env_set.{KEYS_ENV}='{keys}'",
        f"++hydra.job.env_set.{PARENT_ENV}='{identity(os.getpid())}'",
    ]
    conf = user_conf_dir()
    if conf is not None and "'" not in str(conf):
        extra.append(f"++hydra.job.env_set.PGVAULT_CONFIG_DIR='{conf}'")
    saved = {k: os.environ.get(k) for k in (SECRETS_ENV, FULL_ERROR_ENV)}
    os.environ[SECRETS_ENV] = json.dumps(masking.slots())
    os.environ[FULL_ERROR_ENV] = "1" if full_error else "0"
    try:
        yield extra
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def identity(pid: int) -> str:
    """pid, its start time, and this machine's boot and pid namespace: enough to tell,
    from another process, whether it still runs (and whether the question makes sense
    here at all: a Ray node of its own has other pids)."""
    from pgvault.lease import machine

    return f"{pid}:{_start_time(pid)}:{machine()}"


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def parent_gone(text: str) -> bool:
    """Whether the sweep process identity() described has ended; False when it cannot
    be told from here."""
    from pgvault.lease import machine

    pid, start, here = [*text.split(":", 2), "", ""][:3]
    if here != machine() or here.endswith(":?") or not pid.isdigit():  # ":?": unknowable
        return False
    return _start_time(int(pid)) != start


def check(overrides: Sequence[str]) -> None:
    """Refuse a bad sweep.timeout in one line before any job starts (each job would fail
    with it alone)."""
    from pgvault import units

    for word in overrides:
        key, _, value = word.partition("=")
        value = value.strip("'\"")
        if key.lstrip("+") == "sweep.timeout" and value not in ("null", "") and "," not in value:
            units.parse_duration(value, "sweep.timeout")


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
        for job in batch if isinstance(batch, list | tuple) else [batch]:
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
    if not done:
        if stopped is not None:
            raise stopped
        return  # no job ran: --info, --hydra-help
    as_json = any(o.format == "json" for o in done)
    if as_json:
        print(json.dumps({"jobs": [_public(o) for o in done]}, indent=2), flush=True)
    else:
        print(table(done), flush=True)
    failed = [o for o in done if o.status != "success"]
    if stopped is not None:
        why = one_line(getattr(stopped, "line", lambda: str(stopped))())
        bad = f"; failed: {', '.join(o.label for o in failed)}" if failed else ""
        raise SweepFailed(
            f"the sweep stopped after {len(done)} job(s): {why or type(stopped).__name__}{bad}",
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
    del row["format"]
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
    # The slots stay in: the child gets the secrets on stdin (cli.main's secrets).
    args = [command, *(w for w in overrides if not w.startswith("command="))]
    from pgvault.commands import SPECS
    from pgvault.config import MAX_WAIT

    if typed.lock_timeout == 0 and "lock_timeout" in SPECS[command].keys:
        # Queue behind a job of the same directory (or remote) rather than fail.
        args.append(f"lock_timeout={min(timeout or SHARED_DIR_WAIT, MAX_WAIT):g}")
    args.append("hydra.mode=RUN")  # a config that sets MULTIRUN must not sweep again
    # In the sweep dir, or (on a Ray node of its own, where it is not) this process's.
    here = sweep_dir if os.path.isdir(sweep_dir) else None
    fd, name = tempfile.mkstemp(prefix=f"run-{o.num}-", suffix=".json", dir=here)
    os.close(fd)
    outcome_file = Path(name)
    env = {k: v for k, v in os.environ.items() if k not in (SECRETS_ENV, FULL_ERROR_ENV)}
    if os.environ.get(FULL_ERROR_ENV) == "0":
        env.pop("HYDRA_FULL_ERROR", None)
    env[OUTCOME_ENV] = str(outcome_file)
    env.setdefault("PYTHONUNBUFFERED", "1")
    child = subprocess.Popen(
        [sys.executable, "-m", "pgvault.sweep"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    last_error: list[str] = []
    json_mode = o.format == "json"
    # Daemons: a process the child left behind that holds its pipes must not keep the
    # sweep from ending.
    readers = [
        threading.Thread(target=_relay, args=(child.stdout, o.label, 2 if json_mode else 1, None),
                         daemon=True),
        threading.Thread(target=_relay, args=(child.stderr, o.label, 2, last_error), daemon=True),
    ]  # fmt: skip
    for r in readers:
        r.start()
    ran: dict[str, Any] = {}
    try:
        assert child.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            request = {"args": args, "secrets": _needed(args, masking.slots())}
            child.stdin.write(json.dumps(request).encode() + b"\n")
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


def _needed(args: Sequence[str], secrets: list[str]) -> list[str]:
    """The secrets the child's arguments refer to; the others stay here ("" in their
    place, so the numbers hold)."""
    used = {int(m) for a in args for m in re.findall(r"\$\{" + masking.RESOLVER + r":(\d+)\}", a)}
    return [s if i in used else "" for i, s in enumerate(secrets)]


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


_outcome_path: str | None = None


def record(run: Any) -> None:
    """In a sweep's child: leave the ended run's outcome where its job reads it."""
    if _outcome_path:
        with contextlib.suppress(OSError):
            _write(Path(_outcome_path), asdict(run))


def child_main() -> None:
    """Read the job's request (one line of JSON: arguments, secrets), then run it. It
    ends as on SIGTERM, cleaning up, when the job closes stdin (its process died) or the
    sweep's process is gone (a launcher's worker may outlive it)."""
    global _outcome_path
    request = json.loads(sys.stdin.buffer.readline())
    # Its hooks must not inherit it: a pgvault run inside one would write there too.
    _outcome_path = os.environ.pop(OUTCOME_ENV, None)
    parent = os.environ.pop(PARENT_ENV, "")

    def end() -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    def watch_stdin() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        end()

    def watch_parent() -> None:
        while not parent_gone(parent):
            time.sleep(1.0)
        end()

    threading.Thread(target=watch_stdin, daemon=True).start()
    if parent:
        threading.Thread(target=watch_parent, daemon=True).start()
    from pgvault import cli

    sys.excepthook = cli._masked_excepthook
    cli.main(list(request["args"]), secrets=list(request.get("secrets") or []))


if __name__ == "__main__":
    # As pgvault.sweep, not __main__: record() (called from pgvault.commands) reads the
    # globals child_main sets.
    from pgvault import sweep

    sweep.child_main()
