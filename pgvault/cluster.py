"""Throwaway PostgreSQL clusters: initdb into a temp dir, start, stop, remove.

Used by `pgvault verify`, `make demo` and the tests. As root the server programs run as
the `postgres` user (PostgreSQL refuses to run as root). A cluster is always stopped and
its directory removed when the context ends, whatever ended it.
"""

from __future__ import annotations

import contextlib
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

from pgvault import clients, execute
from pgvault.connection import Conn
from pgvault.errors import ClientProgramError, ServerError

FAST_SETTINGS = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "max_wal_size": "2GB",
    "checkpoint_timeout": "30min",
    "shared_buffers": "128MB",
    "maintenance_work_mem": "256MB",
    "max_connections": "30",
}


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
        return f"postgresql://{user or self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, argv: Sequence[str], *, timeout: float = 120) -> None:
        uid, gid = _run_as()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C.UTF-8"
        execute.run(
            argv,
            env=env,
            cwd=self.root,
            timeout=timeout,
            user=uid,
            group=gid,
            hint="check the PostgreSQL server installation",
            timeout_hint=f"see {self.logfile}",
        )

    def init(self, hba_first: Sequence[str] = (), settings: dict[str, str] | None = None) -> None:
        uid, gid = _run_as()
        for d in (self.root, self.socket_dir):
            d.mkdir(mode=0o700, exist_ok=True)
            if uid is not None and gid is not None:
                os.chown(d, uid, gid)
        self._run([
            self.programs.path("initdb"), "-D", str(self.datadir), "-U", self.superuser,
            "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        ])  # fmt: skip
        conf = {**FAST_SETTINGS, **(settings or {})}
        conf.update({
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "logging_collector": "off",
        })  # fmt: skip
        with open(self.datadir / "postgresql.conf", "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        hba = self.datadir / "pg_hba.conf"
        lines = [*hba_first, "local all all trust", "host all all 127.0.0.1/32 trust"]
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
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return
        with contextlib.suppress(ClientProgramError):
            self._run([
                self.programs.path("pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                "-w", "-t", "30", "stop",
            ], timeout=40)  # fmt: skip
        if pidfile.exists():
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int(pidfile.read_text().splitlines()[0])
                os.kill(pid, signal.SIGKILL)
                for _ in range(100):
                    os.kill(pid, 0)
                    time.sleep(0.05)


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
    return clients.find_programs(
        min_major, "a throwaway cluster", clients.SERVER_PROGRAMS, configured
    )


@contextlib.contextmanager
def throwaway(
    programs: clients.Programs,
    *,
    hba_first: Sequence[str] = (),
    settings: dict[str, str] | None = None,
    parent: str | None = None,
    superuser: str = "postgres",
) -> Iterator[Cluster]:
    """A started cluster in a new temp dir; stopped and removed afterwards, always."""
    _check_reachable(Path(parent or tempfile.gettempdir()))
    root = Path(tempfile.mkdtemp(prefix="pgvault-cluster-", dir=parent))
    cluster = Cluster(root, free_port(), programs, superuser)
    try:
        cluster.init(hba_first, settings)
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
