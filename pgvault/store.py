"""Where sets live: the store interface the catalog reads through, and the local
directory that implements it today (object storage comes next).

A store lists file names, hands out a local path to read, writes small files
atomically, deletes, and holds a lock that makes its user the only writer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pgvault import naming
from pgvault.errors import LockBusy, PgvaultError

LOCK_NAME = ".pgvault.lock"
# How every file in a backup directory is opened: a symlink planted at one of our names is
# an error, never followed (a root pgvault would write or read its target).
_NEVER_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class Store(Protocol):
    @property
    def directory(self) -> Path:
        """Where its files can be read (a remote store would download them here)."""
        ...

    def names(self) -> list[str]:
        """The names of the regular files it holds (no links, no directories)."""
        ...

    def delete(self, name: str) -> None:
        """Remove a file; FileNotFoundError when it is gone already."""
        ...

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        """Write a small JSON file all or nothing."""
        ...

    def sync(self) -> None:
        """Make the deletions and renames so far durable before going on."""
        ...

    def lock(self, *, timeout: float, what: str) -> AbstractContextManager[None]: ...

    def is_locked(self) -> bool: ...


@dataclass(frozen=True)
class LocalStore:
    """A directory on this machine."""

    directory: Path

    def names(self) -> list[str]:
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        return [e.name for e in entries if e.is_file(follow_symlinks=False)]

    def delete(self, name: str) -> None:
        (self.directory / name).unlink()

    def write_json(self, name: str, data: dict[str, Any]) -> None:
        write_json_atomic(self.directory / name, data)

    def sync(self) -> None:
        try:
            fsync_dir(self.directory)
        except OSError as e:
            raise PgvaultError(
                f"cannot sync {self.directory}: {e.strerror}", "check the disk and run again"
            ) from None

    def lock(self, *, timeout: float = 0.0, what: str = "backup") -> AbstractContextManager[None]:
        return locked(self.directory, timeout=timeout, what=what)

    def is_locked(self) -> bool:
        return is_locked(self.directory)


def create_new(path: Path, *, readable: bool = False) -> int:
    """Create the file path for writing (mode 0600), and reading too when readable, and
    return its descriptor.

    Nothing already at the name is ever opened: O_EXCL with O_NOFOLLOW refuses a planted
    symlink instead of writing through it (we may run as root). A `.partial` name holds
    only what a killed run left, so whatever is there is removed first (unlink removes a
    symlink itself, never its target): call it only while holding the directory's lock."""
    if path.name.endswith(naming.PARTIAL_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    mode = os.O_RDWR if readable else os.O_WRONLY
    return os.open(path, mode | os.O_CREAT | os.O_EXCL | _NEVER_FOLLOW, 0o600)


@contextlib.contextmanager
def new_file(path: Path, *, readable: bool = False) -> Iterator[int]:
    """create_new(path) for the block, then fsync'ed and closed; when the block fails,
    closed and removed (a half-written file never stays)."""
    fd = create_new(path, readable=readable)
    try:
        yield fd
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


def open_regular(path: Path) -> BinaryIO:
    """Open a set's file for reading: never through a symlink, and only a regular file
    (a fifo planted there would block the read forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to path via a new temporary file, fsync and rename: all or nothing.
    OSError when the disk refuses (callers say which write it was)."""
    tmp = path.with_name(path.name + naming.PARTIAL_SUFFIX)
    fd = create_new(tmp)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        # rename() replaces whatever is at path, a symlink included, and never follows it.
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Directories whose lock this process holds: a restore keeps its directory locked while
# its safety backup takes the lock again, and flock() would refuse a second descriptor.
_HELD: set[Path] = set()


@contextlib.contextmanager
def locked(directory: Path, *, timeout: float = 0.0, what: str = "backup") -> Iterator[None]:
    """Hold the directory's exclusive lock (one writer at a time), waiting up to timeout.

    Re-entrant within one process. Only the holder writes the lock file (its own line,
    right after taking the lock) and empties it on release, so a waiter reads the holder."""
    key = directory.resolve()
    if key in _HELD:
        yield
        return
    fd = _open_lock(directory, what)
    try:
        _acquire(fd, directory, timeout)
        # Best effort: on a full disk the lock holds all the same (prune is how one frees
        # space); a waiter then names no holder.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{what} pid {os.getpid()}\n".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)


def _open_lock(directory: Path, what: str) -> int:
    """Open the directory's lock file, creating it if need be. It lasts between runs, so
    anything could have been put at its name: only a regular file with no other link is
    used; a symlink, fifo, device or hard link to another file is refused, never opened
    for writing."""
    path = directory / LOCK_NAME
    refused = f"remove it: pgvault makes its own {LOCK_NAME}"
    with contextlib.suppress(FileNotFoundError):
        if why := _not_plain(os.lstat(path)):
            raise PgvaultError(f"cannot lock {directory}: {path} {why}", refused)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | _NEVER_FOLLOW, 0o600)
    except OSError as e:
        why = "is a symbolic link" if e.errno == errno.ELOOP else None
        if why:  # put there since the lstat above
            raise PgvaultError(f"cannot lock {directory}: {path} {why}", refused) from None
        raise PgvaultError(f"cannot lock {directory}: {e.strerror}", _hint(e, what)) from None
    if why := _not_plain(os.fstat(fd)):
        os.close(fd)
        raise PgvaultError(f"cannot lock {directory}: {path} {why}", refused)
    return fd


def _not_plain(st: os.stat_result) -> str | None:
    """Why a lock file so described must not be used, or None when it may."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_nlink != 1:
        return "has other hard links"
    return None


def _hint(e: OSError, what: str) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space on its file system"
    return f"a {what} needs write access to the backup directory"


def _poll_flock(fd: int, timeout: float, pause: float) -> bool:
    """Take an exclusive flock on fd, trying until timeout: False when another process
    still holds it; OSError when the file system cannot lock at all."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)


def _acquire(fd: int, directory: Path, timeout: float) -> None:
    try:
        taken = _poll_flock(fd, timeout, 0.2)
    except OSError as e:
        raise PgvaultError(
            f"cannot lock {directory}: {e.strerror}",
            "put the backup directory on a file system that supports flock()",
        ) from None
    if not taken:
        raise LockBusy(
            f"another pgvault {_holder(fd)} is using {directory}",
            "wait for it to finish, or pass lock_timeout=SECONDS to wait",
        )


@contextlib.contextmanager
def flock_dir(directory: Path, *, timeout: float) -> Iterator[None]:
    """Hold an flock on the directory itself for a short read-modify-replace of a file in
    it (the state file, a metrics file): no lock file of its own, and apart from the
    writers' lock, which a backup holds for its whole run. OSError when it cannot lock;
    LockBusy when another process holds it for longer than timeout."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not _poll_flock(fd, timeout, 0.05):
            raise LockBusy(
                f"another pgvault kept {directory} locked for {timeout:g} s",
                "this run's record there was not written; look for a hung pgvault",
            )
        yield
    finally:
        os.close(fd)


def is_locked(directory: Path) -> bool:
    """True while some pgvault process holds the directory's lock."""
    path = directory / LOCK_NAME
    try:
        if _not_plain(os.lstat(path)):
            return False  # no pgvault run can hold a lock through it
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NEVER_FOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


_HOLDER_RE = re.compile(r"[a-z]+ pid ([0-9]{1,7})")


def _holder(fd: int) -> str:
    """What holds the lock, as its line in the lock file says ("backup pid 123"), else
    "run". The line is believed only while its pid lives: a new holder may not have
    written its own yet (it is read again for a moment), or the last one was killed."""
    for _ in range(20):
        try:
            text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        except OSError:
            return "run"
        m = _HOLDER_RE.fullmatch(text)
        if m and alive(int(m[1])):
            return text
        time.sleep(0.05)
    return "run"


def alive(pid: int) -> bool:
    """Whether process pid runs (a zombie, killed and not yet waited for, does not)."""
    if pid <= 0:
        return False  # kill(0) would ask about our own process group
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        pass  # it exists, as another user's
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc here: it exists
    return stat_line.rpartition(")")[2].split()[:1] != ["Z"]
