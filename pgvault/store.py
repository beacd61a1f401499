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
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pgvault import naming
from pgvault.errors import LockBusy, PgvaultError

LOCK_NAME = ".pgvault.lock"


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
        fsync_dir(self.directory)

    def lock(self, *, timeout: float = 0.0, what: str = "backup") -> AbstractContextManager[None]:
        return locked(self.directory, timeout=timeout, what=what)

    def is_locked(self) -> bool:
        return is_locked(self.directory)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to path via a temporary file, fsync and rename: all or nothing."""
    tmp = path.with_name(path.name + naming.PARTIAL_SUFFIX)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
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

    Re-entrant within one process."""
    key = directory.resolve()
    if key in _HELD:
        yield
        return
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise PgvaultError(
            f"cannot lock {directory}: {e.strerror}",
            f"a {what} needs write access to the backup directory",
        ) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    raise LockBusy(
                        f"another pgvault {holder or 'run'} is using {directory}",
                        "wait for it to finish, or pass lock_timeout=SECONDS to wait",
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{what} pid {os.getpid()}\n".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)


def is_locked(directory: Path) -> bool:
    """True while some pgvault process holds the directory's lock."""
    path = directory / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""
