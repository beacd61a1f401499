"""One writer at a time on a remote: a lease object, written only if absent (or only over
a stale one, as it was read), kept fresh while the run lasts, and given back at the end.

The local directory's lock keeps two runs on one machine apart; two machines that write
to one remote (an overlapping CronJob, a retried Job on another node) share nothing
but the remote. On S3 the writes are conditional (If-None-Match: *, If-Match: ETag), so
of two runs that race for a free or stale lease exactly one wins. A lease is stale once
it has expired (remote.lease_ttl after its last renewal; its holder renews it every third
of that), or at once when its holder ran on this very machine (same boot and pid
namespace) and is gone. Giving it back writes it expired, under the same condition, so a
late give-back can never remove a lease another run has taken since. A holder that could
not renew for a whole lease_ttl counts its lease as lost and stops before its next write.
Expiry is the writer's wall clock: the machines are assumed to keep time (NTP).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pgvault import store
from pgvault.errors import LockBusy

NAME = "pgvault-lease.json"
_HELD: dict[str, Lease] = {}  # url -> the lease this process holds there (re-entrant)
_MINE: set[str] = set()  # the tokens of the leases this process has taken, until given back


class Leasable(Protocol):
    url: str

    def lease_read(self) -> tuple[bytes, str] | None:
        """The lease object's bytes and a tag that changes with every write; None: none."""
        ...

    def lease_write(self, data: bytes, tag: str | None) -> str | None:
        """Write the lease only if there is none (tag None) or it still has tag; return
        its new tag, or None when another write came first."""
        ...


def machine() -> str:
    """This machine as a lease names it: host, boot and pid namespace (containers on one
    host may share a name, never a pid namespace)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        ns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return f"{socket.gethostname()}:?"
    return f"{socket.gethostname()}:{boot}:{ns}"


class Lease:
    def __init__(self, remote: Leasable, ttl: float, what: str) -> None:
        self.remote, self.ttl, self.what = remote, ttl, what
        self.token = uuid.uuid4().hex
        self.tag: str | None = None
        self.valid_until = 0.0  # monotonic: past it, unrenewed, the lease may be another's
        self.lost: LockBusy | None = None
        self._lock = threading.Lock()  # the heartbeat and the run renew it

    def body(self, ttl: float | None = None) -> bytes:
        return json.dumps({
            "token": self.token,
            "host": socket.gethostname(),
            "machine": machine(),
            "pid": os.getpid(),
            "what": self.what,
            "expires": time.time() + (self.ttl if ttl is None else ttl),
        }).encode()  # fmt: skip

    def take(self, wait: float = 0.0) -> None:
        """Take the lease, waiting up to wait seconds for a live holder to give it back;
        LockBusy when it does not."""
        deadline = time.monotonic() + wait
        while True:
            info = self._try()
            if info is None:
                return
            if time.monotonic() >= deadline:
                raise busy(self.remote.url, info)
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))

    def _try(self) -> dict[str, Any] | None:
        """One attempt: None when taken, else what the holder's lease says."""
        for _ in range(3):  # a lease that vanished or changed while we looked: once more
            started = time.monotonic()
            if self._written(self.remote.lease_write(self.body(), None), started):
                return None
            found = self.remote.lease_read()
            if found is None:
                continue
            info = _parse(found[0])
            # Ours (a write whose answer was lost) is written again, for its expiry.
            if (info.get("token") == self.token or stale(info)) and self._written(
                self.remote.lease_write(self.body(), found[1]), started
            ):
                return None
        found = self.remote.lease_read()
        return _parse(found[0]) if found else {}

    def _written(self, tag: str | None, started: float) -> bool:
        if tag is None:
            return False
        self.tag, self.valid_until = tag, started + self.ttl
        _MINE.add(self.token)
        return True

    def renew(self) -> None:
        """Push the expiry out again; LockBusy if another run took the lease over."""
        with self._lock:
            started = time.monotonic()
            if self.tag is not None and self._written(
                self.remote.lease_write(self.body(), self.tag), started
            ):
                return
            found = self.remote.lease_read()  # a write that landed but whose answer did not
            info = _parse(found[0]) if found else {}
            if (
                found is not None
                and info.get("token") == self.token
                and self._written(self.remote.lease_write(self.body(), found[1]), started)
            ):
                return
            self.lost = busy(self.remote.url, info)
            raise self.lost

    def check(self) -> None:
        """Before a write under the lease: LockBusy once it is (or may be) lost."""
        # A margin of a third: a write that starts now must end before the expiry.
        if self.lost is None and time.monotonic() > self.valid_until - self.ttl / 3:
            with contextlib.suppress(Exception):
                self.renew()
            if self.lost is None and time.monotonic() > self.valid_until - self.ttl / 3:
                self.lost = LockBusy(
                    f"the lease on {self.remote.url} could not be renewed for "
                    f"{self.ttl:g} s: another run may hold it now",
                    "check the remote's connection, then run again",
                )
        if self.lost is not None:
            raise self.lost

    def give_back(self) -> None:
        with self._lock:
            if self.tag is not None:
                self.remote.lease_write(self.body(ttl=-1.0), self.tag)
            _MINE.discard(self.token)


@contextlib.contextmanager
def held(remote: Leasable, *, ttl: float, what: str, wait: float = 0.0) -> Iterator[Lease]:
    """Hold remote's lease for the block, renewed every ttl/3; LockBusy when another run
    holds it after wait seconds. Within a block that holds it already (a backup's own
    upload), it is checked and held on."""
    if remote.url in _HELD:
        _HELD[remote.url].check()
        yield _HELD[remote.url]
        return
    lease = Lease(remote, ttl, what)
    lease.take(wait)
    _HELD[remote.url] = lease
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(ttl / 3):
            with contextlib.suppress(Exception):  # check() tells the run, in time
                lease.renew()

    beat = threading.Thread(target=heartbeat, name="pgvault-lease", daemon=True)
    beat.start()
    try:
        yield lease
    finally:
        done.set()
        beat.join()
        del _HELD[remote.url]
        with contextlib.suppress(Exception):  # it goes stale anyway
            lease.give_back()


def check(url: str) -> None:
    """Before a write to url: LockBusy if this process's lease there is lost."""
    if url in _HELD:
        _HELD[url].check()


def stale(info: dict[str, Any]) -> bool:
    """Expired, or held by a run of this machine that is gone. An unreadable lease (no
    expiry) is someone else's object: never stale."""
    expires = info.get("expires")
    if not isinstance(expires, int | float):
        return False
    if expires < time.time():
        return True
    pid = info.get("pid")
    if info.get("machine") != machine() or not isinstance(pid, int):
        return False
    if pid == os.getpid():  # this process's, left by a write whose answer was lost
        return info.get("token") not in _MINE
    return not store.alive(pid)


# -- A lease as a file (FileRemote) -----------------------------------------------------


def read_file(path: Path) -> tuple[bytes, str] | None:
    """The lease file's bytes, and a tag of its inode, mtime and content."""
    try:
        with store.open_regular(path) as f:
            data = f.read(65536)
            st = os.fstat(f.fileno())
    except FileNotFoundError:
        return None
    return data, f"{st.st_ino}:{st.st_mtime_ns}:{hashlib.sha256(data).hexdigest()}"


def write_file(path: Path, data: bytes, tag: str | None) -> str | None:
    """A new lease: written whole under a name of its own, then linked into place (the
    link fails if one is there). Over another: under flock on the file read, which must
    still be the one at the name and still have tag, then renamed over it."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with os.fdopen(os.open(tmp, flags, 0o600), "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if tag is None:
            try:
                os.link(tmp, path)
            except FileExistsError:
                return None
            except OSError as e:  # no hard links there (FAT, some FUSE or SMB mounts)
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                if not _create(path, data):
                    return None
        else:
            try:
                # Read-write: an exclusive flock over NFS is a POSIX lock, which needs it.
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EINVAL, "not a regular file", str(path))
                fcntl.flock(fd, fcntl.LOCK_EX)
                now = read_file(path)
                if now is None or now[1] != tag or os.stat(path).st_ino != st.st_ino:
                    return None
                os.replace(tmp, path)
            finally:
                os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    found = read_file(path)
    return found[1] if found is not None else None


def _create(path: Path, data: bytes) -> bool:
    """O_EXCL, for a file system without hard links: a crash between the create and the
    write leaves an empty lease, which busy() names for removal."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


def _parse(data: bytes) -> dict[str, Any]:
    try:
        info = json.loads(data)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def busy(url: str, info: dict[str, Any]) -> LockBusy:
    holder = f"{info.get('host', '?')} pid {info.get('pid', '?')}" if info else "another run"
    expires = info.get("expires")
    until = "never: it is not pgvault's"
    if isinstance(expires, int | float):
        try:
            until = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        except (ValueError, OverflowError, OSError):
            until = "an unreadable time"
    return LockBusy(
        f"{url} is in use: {info.get('what', 'a run')} on {holder} holds its lease",
        f"wait for that run to end; if it died, its lease expires at {until}, "
        f"or delete {NAME} from the remote",
    )
