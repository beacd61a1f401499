"""A client program writing a set file itself, with pgvault reading close behind it.

A plain data file (no compressor, no encryption) needs no bytes of pgvault's in between:
pg_dump writes straight into the `.partial` file and pgvault reads each part back from the
page cache for the checksums and row counts. Through a pipe, pgvault would read every
byte and write it again, which costs about as much CPU as pg_dump itself does; on a
two-core machine that CPU comes out of pg_dump's and the server's (`make bench`).

What the pipe gave for free is made explicit: a program that fails to write (full disk,
file size limit) is reported as the write error it met, and a tether kills the program
when pgvault dies first (kill -9), as a closed pipe would have stopped it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from pgvault import store
from pgvault.errors import ClientProgramError
from pgvault.execute import Stage, stages
from pgvault.pipeline import CHUNK, FileStats, Observer

# How long the reader waits for the program to write more, once it has caught up.
_POLL_SECONDS = 0.01
# Why a file cannot grow: what a program that failed to write it ran into.
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS)
_PROBE = 64 << 10


class Tether:
    """Kills pid should this process die before disarm() (kill -9, the out-of-memory
    killer): a `sh` waits on a pipe that only this process holds open. Disarm it before
    reaping pid, so that the pid it would kill is never one the system gave out again."""

    def __init__(self, pid: int) -> None:
        read_end, self._write_end = os.pipe()  # both close-on-exec: no other child holds it
        try:
            self._proc = subprocess.Popen(
                ["/bin/sh", "-c", 'read -r _; kill -9 "$1" 2>/dev/null', "sh", str(pid)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={"PATH": "/usr/bin:/bin"},
            )
        except BaseException:
            os.close(self._write_end)
            raise
        finally:
            os.close(read_end)

    def disarm(self) -> None:
        try:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGKILL)
            self._proc.wait()
        finally:  # interrupted half-way, it fires now, while pid is not yet reaped
            os.close(self._write_end)


def _has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether proc has exited, without reaping it (its pid stays taken until check())."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return proc.poll() is not None


@contextlib.contextmanager
def _exit_waiter(proc: subprocess.Popen[bytes]) -> Iterator[Callable[[], None]]:
    """A wait for more output: until proc exits or _POLL_SECONDS pass. With a pidfd
    (Linux) the exit ends it at once, so a short dump costs no idle polling."""
    pidfd = None
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(proc.pid)
    if pidfd is None:
        yield lambda: time.sleep(_POLL_SECONDS)
        return
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)

    def wait() -> None:
        poller.poll(_POLL_SECONDS * 1000)

    try:
        yield wait
    finally:
        os.close(pidfd)


def write_failure(returncode: int | None, fd: int, dest: Path) -> OSError | None:
    """The write error behind a program's failure to write into fd (the file dest), as
    the OSError pgvault would have met writing it itself; None when it failed for another
    reason. Asked of the file system, not read from the program's message, whose words
    depend on its version and language: _PROBE more bytes must fit at the end of the file
    (more than the slack in its last block, so a full disk cannot pass)."""
    if returncode == -signal.SIGXFSZ:  # the file size limit: the program never saw EFBIG
        return OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(dest))
    try:
        size = os.fstat(fd).st_size
        os.posix_fallocate(fd, size, _PROBE)
        os.ftruncate(fd, size)
    except OSError as e:
        if e.errno in _WRITE_ERRNOS:
            return OSError(e.errno, os.strerror(e.errno), str(dest))
    return None


def dump_to_file(
    argv: Sequence[str],
    env: Mapping[str, str],
    dest: Path,
    *,
    observers: Sequence[Observer] = (),
    progress: Callable[[int], None] | None = None,
    trailer: bytes = b"",
) -> FileStats:
    """Run argv with its stdout going into a new file dest (store.new_file), feeding
    the observers every byte it writes, then trailer after it. The sha256 and size are
    those of the bytes read back from dest. On failure the program is killed, dest
    removed, and the error raised: an OSError when the program could not write."""
    digest, size = hashlib.sha256(), 0
    # One buffer for every read: no allocation per chunk. Observers see it only for the
    # time of their feed() (CopyStats copies what it keeps).
    buffer = bytearray(CHUNK)

    def take(chunk: bytes | bytearray) -> None:
        nonlocal size
        for obs in observers:
            obs.feed(chunk)
        digest.update(chunk)
        size += len(chunk)

    with store.new_file(dest, readable=True) as fd:
        with stages() as running:
            stage = Stage(argv, env, stdout=fd)
            running.append(stage)
            tether = Tether(stage.proc.pid)
            try:
                with _exit_waiter(stage.proc) as wait:
                    while True:
                        exited = _has_exited(stage.proc)
                        got = os.preadv(fd, [buffer], size)
                        if got:
                            take(buffer if got == CHUNK else bytes(memoryview(buffer)[:got]))
                            if progress is not None:
                                progress(size)
                        elif exited:
                            break
                        else:
                            wait()
            finally:
                tether.disarm()
            try:
                stage.check()
            except ClientProgramError:
                failed = write_failure(stage.proc.returncode, fd, dest)
                if failed is None:
                    raise
                raise failed from None
        if trailer:
            view, at = memoryview(trailer), size
            while view:
                written = os.pwrite(fd, view, at)
                view, at = view[written:], at + written
            take(trailer)
    return FileStats(digest.hexdigest(), size, (0,))
