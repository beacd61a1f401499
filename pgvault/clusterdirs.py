"""The directories of throwaway clusters, and what a killed pgvault leaves of them.

Each is named after the pid of the process that owns it, which holds a lock on a file in
it while the cluster lives. After a kill -9 nothing stops that cluster's server; the next
throwaway cluster in the same parent stops and removes it: only a real directory named so,
owned by us or the server's user, whose owner pid is gone and whose lock is free (a pid
alone may have been reused, or belong to another PID namespace).
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pgvault.store import alive

log = logging.getLogger(__name__)

PREFIX = "pgvault-cluster-"
# A cluster directory: the pid of the process that owns it, then mkdtemp's random part.
_OURS = re.compile(PREFIX + r"([1-9][0-9]{0,9})-[A-Za-z0-9_]{8}")
_LOCK = "owner.lock"
_YOUNG = 60.0  # seconds: a cluster dir this new without its lock may still be starting


def make(parent: Path) -> tuple[Path, int]:
    """A new cluster directory in parent and the fd of its owner lock, held until closed
    (never inherited: a server started from here must not keep it)."""
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))
    try:
        fd = os.open(root / _LOCK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except OSError:
        shutil.rmtree(root, ignore_errors=True)
        raise
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
    return root, fd


def reap(parent: Path, owners: set[int | None], stop: Callable[[Path], None]) -> list[Path]:
    """Stop (with stop(datadir)) and remove the clusters in parent whose owner died;
    owners: the uids such a directory may belong to. Return their directories."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    reaped = []
    for entry in entries:
        m = _OURS.fullmatch(entry.name)
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if m is None or not stat.S_ISDIR(st.st_mode) or st.st_uid not in owners:
            continue
        if alive(int(m[1])):
            continue
        root = Path(entry.path)
        try:
            fd = os.open(root / _LOCK, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            # Killed before it took the lock, or (pids are per namespace) another's cluster
            # that is just starting: only an old one is taken for an orphan.
            if time.time() - st.st_mtime < _YOUNG:
                continue
            fd = -1
        except OSError:
            continue
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # its owner lives on
        log.info("removing the orphaned throwaway cluster %s", root)
        try:
            datadir = root / "data"
            if not datadir.is_symlink():  # never stop what a link points to
                stop(datadir)
            shutil.rmtree(root, ignore_errors=True)
        finally:
            if fd >= 0:
                os.close(fd)
        reaped.append(root)
    return reaped


def postmaster(datadir: Path) -> int | None:
    """The pid of the running postmaster of datadir, from its pid file; None when there
    is none. Where /proc tells, only a process whose working directory is datadir counts
    (the postmaster's is): a pid file left behind must not make us signal a stranger."""
    try:
        fd = os.open(datadir / "postmaster.pid", os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as f:
            pid = int(f.readline())
        if pid <= 1:
            return None
        os.kill(pid, 0)
        if Path("/proc/self/cwd").exists() and os.readlink(f"/proc/{pid}/cwd") != os.path.realpath(
            datadir
        ):
            return None
    except (OSError, ValueError):
        return None
    return pid
