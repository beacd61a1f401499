"""Every child process pgvault starts: short programs run to the end, and streaming stages.

Dump bytes pass through Python on purpose (sha256 of each file, COPY row counts, SQL filters,
progress), so pipelines are popen() stages pumped by pgvault.pipeline, never plumbum's `|`/`>`.
plumbum builds the stage commands; run() uses subprocess because plumbum merges every env into
its import-time copy of os.environ, which would bring back variables we remove (cluster's PG*).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from plumbum import local

from pgvault.connection import mask_secrets
from pgvault.errors import ClientProgramError

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
_PIPE_SIZE = 1 << 20

log = logging.getLogger(__name__)
# plumbum logs each argv unmasked at DEBUG; ours below is the same line, masked.
logging.getLogger("plumbum.local").addFilter(lambda record: record.msg != "Running %r")


def shown(argv: Sequence[str]) -> str:
    """Given an argv, return it as one shell-quoted line with any password masked."""
    return shlex.join(mask_secrets(str(a)) for a in argv)


@dataclass(frozen=True)
class Result:
    """What a finished short program left: its exit status and its output as text."""

    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = 60.0,
    check: bool = True,
    user: int | None = None,
    group: int | None = None,
    hint: str = "check the PostgreSQL installation",
    timeout_hint: str | None = None,
) -> Result:
    """Run a short program to the end with its output captured, and return the Result.

    env is the child's whole environment (None: ours). user/group switch to those ids
    (root only) and drop root's supplementary groups. Unless check is False, an exit
    status other than 0 raises ClientProgramError naming the program and the last line it
    wrote to stderr (stdout if stderr is empty). A program that cannot start, or is still
    running after timeout seconds (it is killed), raises ClientProgramError whatever check.
    """
    argv = [str(a) for a in argv]
    name = Path(argv[0]).name
    log.debug("running %s", shown(argv))
    ids: dict[str, Any] = {}
    if user is not None or group is not None:
        ids = {"user": user, "group": group, "extra_groups": []}
    try:
        res = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=timeout,
            env=None if env is None else dict(env),
            cwd=cwd,
            check=False,
            **ids,
        )
    except subprocess.TimeoutExpired:
        raise ClientProgramError(
            f"{name} timed out after {timeout:g} s", timeout_hint or hint
        ) from None
    except OSError as e:
        raise ClientProgramError(f"cannot start {name}: {e.strerror}", hint) from None
    if check and res.returncode != 0:
        lines = [ln.strip() for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
        detail = mask_secrets(lines[-1]) if lines else f"exit status {res.returncode}"
        if res.returncode < 0:
            detail = ended_by(-res.returncode) + (f": {detail}" if lines else "")
        raise ClientProgramError(f"{name} failed: {detail}", hint)
    return Result(res.returncode, res.stdout, res.stderr)


# --- streaming stages ----------------------------------------------------------------------


def command(argv: Sequence[str]) -> object:
    """A plumbum command for argv (the program first)."""
    return local[argv[0]][list(argv[1:])]


def widen(pipe: IO[bytes] | None) -> None:
    """Fewer, larger reads: a 1 MiB pipe instead of 64 KiB (Linux only; harmless elsewhere)."""
    if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


class Stage:
    """One running process of a pipeline, with its stderr captured to a temporary file
    (a chatty stage can never deadlock a pipe); check() raises unless it exited 0."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        stdin: int | IO[bytes] | None = None,
        stdout: int | IO[bytes] | None = PIPE,
    ) -> None:
        self.name = Path(argv[0]).name
        self.argv = list(argv)
        self.errfile = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        log.debug("starting %s", shown(self.argv))
        try:
            self.proc: subprocess.Popen[bytes] = command(argv).popen(  # type: ignore[attr-defined]
                stdin=stdin, stdout=stdout, stderr=self.errfile, env=dict(env)
            )
        except OSError as e:
            self.errfile.close()
            raise ClientProgramError(
                f"cannot start {self.name}: {e.strerror}", "check the PostgreSQL installation"
            ) from None
        widen(self.proc.stdout)

    def stderr_text(self) -> str:
        self.errfile.seek(0)
        return mask_secrets(self.errfile.read().decode("utf-8", "replace"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def check(self) -> None:
        """Wait for the stage and raise ClientProgramError unless it exited 0."""
        code = self.proc.wait()
        if code != 0:
            raise stage_failure(self.name, code, self.stderr_text())

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self.errfile.close()


def stage_failure(name: str, code: int, stderr: str) -> ClientProgramError:
    """The error for a stage that exited with code, naming its first error line.

    A stage's stderr is captured, never shown: the line says what it said, or when it
    said nothing, how it ended.
    """
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # The first error line says what went wrong; later ones are usually consequences.
    # psql's verbose LOCATION lines name C functions ("DropErrorMsgNonExistent", after a
    # mere NOTICE): they are never the error itself.
    errors = [
        ln for ln in lines
        if ("error" in ln.lower() or "fatal" in ln.lower()) and not ln.startswith("LOCATION:")
    ]  # fmt: skip
    said = (errors or lines or [""])[0]
    if code < 0:
        detail = ended_by(-code) + (f": {said}" if said else "")
        return ClientProgramError(f"{name} failed: {detail}", _SIGNAL_HINTS.get(-code, _KILLED))
    if said:
        return ClientProgramError(f"{name} failed: {said}", "nothing was kept")
    return ClientProgramError(
        f"{name} failed: exit status {code}, with no message", "nothing was kept"
    )


_KILLED = "it was stopped from outside pgvault; nothing was kept"
_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGKILL: "killed from outside pgvault (the out-of-memory killer?); nothing was kept",
    signal.SIGPIPE: "what it wrote into stopped reading; nothing was kept",
}


def ended_by(signum: int) -> str:
    """'killed by signal 9 (SIGKILL)'."""
    try:
        return f"killed by signal {signum} ({signal.Signals(signum).name})"
    except ValueError:
        return f"killed by signal {signum}"


@contextlib.contextmanager
def stages() -> Iterator[list[Stage]]:
    """Hold the running stages of a pipeline; on any exception kill them all."""
    running: list[Stage] = []
    try:
        yield running
    except BaseException:
        for st in running:
            st.kill()
        raise
    finally:
        for st in running:
            st.close()


def run_text(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """Run a program as one stage (no timeout), check it, and return its stdout as text.

    Unlike run(), a failure names the first error line of stderr: psql follows its ERROR
    with LINE and caret lines, so the last line would say nothing.
    """
    with stages() as running:
        st = Stage(argv, env if env is not None else os.environ)
        running.append(st)
        out, _ = st.proc.communicate()
        st.check()
        return out.decode("utf-8", "replace")
