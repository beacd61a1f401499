"""Which database a set came from, as its manifest tells: retention, "newest" and
"latest" hold per source, never across the sets of different databases in one directory
(a `--multirun` over targets writes several into one)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pgvault.errors import PgvaultError

if TYPE_CHECKING:
    from pgvault.config import TargetConfig
    from pgvault.manifest import Manifest

UNKNOWN = "unknown source (no readable manifest)"


@dataclass(frozen=True, order=True)
class Source:
    """A source database. server is host:port as the backup reached it; machine is the
    host pgvault ran on, kept only when server is that machine's own (a socket or
    loopback): "localhost:5432" seen from two machines sharing a directory is two
    databases. A set without server (format 1) is told by its target's name and database
    only; known is False for it, and no backup's retention ever touches it."""

    database: str
    server: str | None = None
    machine: str | None = None
    target: str | None = None

    @property
    def known(self) -> bool:
        return self.server is not None

    @property
    def label(self) -> str:
        """ "crm at 127.0.0.1:5432", "crm at /run/postgresql:5432 on db1"."""
        if self.server is None:
            return f"{self.database} of target {self.target} (server not recorded)"
        return f"{self.database} at {self.server}" + (f" on {self.machine}" if self.machine else "")


def label(source: Source | None) -> str:
    return source.label if source is not None else UNKNOWN


def at(server: str, database: str, machine: str) -> Source:
    """The Source of database at server (host:port) as reached from machine."""
    host = server.rsplit(":", 1)[0].strip("[]")
    local = host.startswith(("/", "@")) or host in ("", "localhost", "::1")
    return Source(database, server, machine if local or host.startswith("127.") else None)


def of_manifest(m: Manifest | None) -> Source | None:
    """The Source a manifest names; None without one (the source cannot be told)."""
    if m is None:
        return None
    if m.server is None:
        return Source(m.database, target=m.target)
    return at(m.server, m.database, m.host)


def of_target(target: TargetConfig) -> Source | None:
    """The Source the configured target's backups are of; None when its settings cannot
    be read (the command that needs them says why)."""
    from pgvault.connection import conn_for_target  # psycopg: only when asked

    try:
        conn = conn_for_target(target)
    except PgvaultError:
        return None
    return at(conn.where, conn.dbname, socket.gethostname())
