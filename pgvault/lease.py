"""One writer at a time on a remote: a lease object, written only if absent (or only over
a stale one, as it was read), kept fresh while the run lasts, and given back at the end.

The local directory's lock keeps two runs on one machine apart; two machines that write
to one remote (an overlapping CronJob, a retried Job on another node) share nothing
but the remote. On S3 the writes are conditional (If-None-Match: *, If-Match: ETag), so
of two runs that race for a free or stale lease exactly one wins. A lease is stale once
it has expired (remote.lease_ttl after its last renewal; a holder renews it every third
of that), or at once when its holder ran on this machine and is gone: a killed run
blocks its remote's other writers for one lease_ttl at most.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
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


class Leasable(Protocol):
    url: str

    def lease_read(self) -> tuple[bytes, str] | None:
        """The lease object's bytes and a tag that changes with every write; None: none."""
        ...

    def lease_write(self, data: bytes, tag: str | None) -> bool:
        """Write the lease only if there is none (tag None) or it still has tag; False
        when another write came first."""
        ...

    def lease_delete(self) -> None: ...


class Lease:
    def __init__(self, remote: Leasable, ttl: float, what: str) -> None:
        self.remote, self.ttl, self.what = remote, ttl, what
        self.token = uuid.uuid4().hex
        self.tag: str | None = None
        self._lock = threading.Lock()  # the heartbeat and the run renew it

    def body(self) -> bytes:
        return json.dumps({
            "token": self.token,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "what": self.what,
            "expires": time.time() + self.ttl,
        }).encode()  # fmt: skip

    def take(self) -> None:
        """Take the lease: LockBusy when another live run holds it."""
        for _ in range(3):  # a lease given back or taken over while we looked
            if self.remote.lease_write(self.body(), None):
                self.tag = self._current_tag()
                return
            found = self.remote.lease_read()
            if found is None:
                continue
            info = _parse(found[0])
            if not stale(info):
                raise busy(self.remote.url, info)
            if self.remote.lease_write(self.body(), found[1]):
                self.tag = self._current_tag()
                return
        found = self.remote.lease_read()
        raise busy(self.remote.url, _parse(found[0]) if found else {})

    def renew(self) -> None:
        """Push the expiry out again; LockBusy if another run took the lease over."""
        with self._lock:
            if self.tag is None or not self.remote.lease_write(self.body(), self.tag):
                found = self.remote.lease_read()
                raise busy(self.remote.url, _parse(found[0]) if found else {})
            self.tag = self._current_tag()

    def give_back(self) -> None:
        with self._lock:
            found = self.remote.lease_read()
            if found is not None and _parse(found[0]).get("token") == self.token:
                self.remote.lease_delete()

    def _current_tag(self) -> str | None:
        found = self.remote.lease_read()
        return found[1] if found is not None else None


@contextlib.contextmanager
def held(remote: Leasable, *, ttl: float, what: str) -> Iterator[Lease]:
    """Hold remote's lease for the block, renewed every ttl/3; LockBusy when another run
    holds it. Within a block that holds it already (a backup's own upload), it is
    renewed once more and held on."""
    if remote.url in _HELD:
        _HELD[remote.url].renew()
        yield _HELD[remote.url]
        return
    lease = Lease(remote, ttl, what)
    lease.take()
    _HELD[remote.url] = lease
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(ttl / 3):
            with contextlib.suppress(Exception):  # a failed renewal: the next one tries
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


def stale(info: dict[str, Any]) -> bool:
    """Expired, or held by a run of this machine that is gone. An unreadable lease (no
    expiry) is someone else's object: never stale."""
    expires = info.get("expires")
    if not isinstance(expires, int | float):
        return False
    if expires < time.time():
        return True
    pid = info.get("pid")
    return (
        info.get("host") == socket.gethostname() and isinstance(pid, int) and not (store.alive(pid))
    )


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


def write_file(path: Path, data: bytes, tag: str | None) -> bool:
    """A new lease: O_EXCL. Over a stale one: under flock on the file read, which must
    still be the one at the name and still have tag, then a rename over it."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    if tag is None:
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fsync(f.fileno())
        return True
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        old = store.open_regular(path)
    except FileNotFoundError:
        return False
    with old:
        fcntl.flock(old.fileno(), fcntl.LOCK_EX)
        now = read_file(path)
        if now is None or now[1] != tag or os.stat(path).st_ino != os.fstat(old.fileno()).st_ino:
            return False
        with os.fdopen(os.open(tmp, flags, 0o600), "wb") as out:
            out.write(data)
            os.fsync(out.fileno())
        os.replace(tmp, path)
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
    until = (
        datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if isinstance(expires, int | float) else "never: it is not pgvault's"
    )  # fmt: skip
    return LockBusy(
        f"{url} is in use: {info.get('what', 'a run')} on {holder} holds its lease",
        f"wait for that run to end; if it died, its lease expires at {until}, "
        f"or delete {NAME} from the remote",
    )
