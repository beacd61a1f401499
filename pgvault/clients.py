"""Finding the PostgreSQL programs pgvault runs, by major version, and building their argv.

Argument builders are pure functions so tests can pin the exact argv (no password ever
appears in it: libpq reads it from the environment).
"""

from __future__ import annotations

import contextlib
import functools
import glob
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pgvault import execute
from pgvault.errors import ClientProgramError, ServerError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+((\d+)(?:\.\d+)*)")
CLIENT_PROGRAMS = ("pg_dump", "pg_dumpall", "psql")
SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")


def parse_version(text: str) -> tuple[int, str]:
    """Given `prog --version` output, return (major, full version); ValueError otherwise."""
    m = _VERSION_RE.search(text)
    if m is None:
        raise ValueError(f"no PostgreSQL version in {text!r}")
    return int(m.group(2)), m.group(1)


@functools.lru_cache(maxsize=64)
def program_version(path: str) -> tuple[int, str]:
    """Return (major, version) of a PostgreSQL program by asking it."""
    try:
        return parse_version(execute.run([path, "--version"], timeout=30).stdout)
    except ClientProgramError as e:
        why = e.what
    except ValueError as e:
        why = str(e)
    raise ClientProgramError(
        f"cannot run {path} --version: {why}", "check the PostgreSQL installation"
    )


def candidate_bindirs(configured: str | None) -> list[Path]:
    """Directories that may hold PostgreSQL programs, most specific first."""
    if configured:
        return [Path(configured)]
    dirs: list[Path] = []
    patterns = (
        "/usr/lib/postgresql/*/bin",
        "/usr/pgsql-*/bin",
        "/opt/homebrew/opt/postgresql@*/bin",
        "/usr/local/opt/postgresql@*/bin",
    )
    for pattern in patterns:
        dirs.extend(Path(p) for p in glob.glob(pattern))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(ClientProgramError):
            out = execute.run([pg_config, "--bindir"], timeout=30, check=False).stdout.strip()
            if out:
                dirs.append(Path(out))
    dirs.extend(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        key = d.resolve() if d.exists() else d
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


@dataclass(frozen=True)
class Programs:
    """A directory of PostgreSQL programs of one major version."""

    bindir: Path
    major: int
    version: str

    def path(self, program: str) -> str:
        return str(self.bindir / program)


def pick(server_major: int, available: list[Programs]) -> Programs | None:
    """Pick the programs for a server: its own major version if present, else the
    oldest newer one (a newer pg_dump reads older servers; an older one cannot)."""
    usable = [p for p in available if p.major >= server_major]
    if not usable:
        return None
    return min(usable, key=lambda p: (p.major, -len(p.version)))


def available_programs(programs: tuple[str, ...], configured: str | None) -> list[Programs]:
    """Every candidate directory that has all the given programs, with its version."""
    found = []
    for d in candidate_bindirs(configured):
        if all(os.access(d / prog, os.X_OK) for prog in programs):
            major, version = program_version(str(d / programs[0]))
            found.append(Programs(d, major, version))
    return found


def find_programs(
    server_major: int, server_where: str, programs: tuple[str, ...], configured: str | None
) -> Programs:
    """Return programs whose major version is at least the server's, or fail saying what
    to install, before anything is written."""
    found = available_programs(programs, configured)
    chosen = pick(server_major, found)
    if chosen is not None:
        return chosen
    names = "/".join(programs)
    if found:
        have = ", ".join(sorted({p.version for p in found}))
        raise ServerError(
            f"{names} {have} cannot handle the PostgreSQL {server_major} server at {server_where}",
            f"install the version {server_major} client programs, e.g. "
            f"`apt-get install postgresql-client-{server_major}` or "
            f"`brew install postgresql@{server_major}`, or set clients.bindir",
        )
    where = f"in {configured}" if configured else "on this machine"
    raise ClientProgramError(
        f"no {names} found {where}",
        f"install the PostgreSQL {server_major} client programs "
        f"with `apt-get install postgresql-client-{server_major}`, or set clients.bindir",
    )


# --- argv builders -----------------------------------------------------------------------


def pg_dumpall_roles_args(conninfo: str, *, passwords: bool = True) -> list[str]:
    """passwords=False for a role that may not read pg_authid (not a superuser, as
    Supabase's `postgres`): pg_dumpall then reads pg_roles and leaves passwords out."""
    extra = [] if passwords else ["--no-role-passwords"]
    return ["--roles-only", *extra, "--no-password", f"--dbname={conninfo}"]


def pg_dump_schema_args(conninfo: str, snapshot: str, section: str, lock_wait_ms: int) -> list[str]:
    """pre-data or post-data: the schema file holds both, in that order, so a restore
    can load definitions, then data, then indexes, constraints and triggers. Large
    objects (-B here) travel whole in the data file, as with --schema-only. A table
    another session holds locked makes pg_dump give up after lock_wait_ms."""
    return [
        f"--section={section}",
        "-B",
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={lock_wait_ms}",
        "--no-password",
        f"--dbname={conninfo}",
    ]


def pg_dump_data_args(conninfo: str, snapshot: str, lock_wait_ms: int) -> list[str]:
    return [
        "--data-only",
        f"--snapshot={snapshot}",
        f"--lock-wait-timeout={lock_wait_ms}",
        "--no-password",
        f"--dbname={conninfo}",
    ]


def psql_args(conninfo: str, *extra: str) -> list[str]:
    """VERBOSITY=verbose: an error names its SQLSTATE, which tells a bad set from a
    resource failure more surely than the message's words."""
    return [
        "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose", "--no-password",
        f"--dbname={conninfo}", *extra,
    ]  # fmt: skip


COMPRESSORS = {"gzip": ["gzip", "-c", "-6"], "zstd": ["zstd", "-q", "-c", "-3", "-T0"]}
DECOMPRESSORS = {"gzip": ["gzip", "-d", "-c"], "zstd": ["zstd", "-q", "-d", "-c"]}


def tool_path(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ClientProgramError(
            f"{name} is not installed", f"install it with `apt-get install {name}`, or pick another"
        )
    return path


def decompressor(compression: str) -> list[str] | None:
    """argv (without the file) that decompresses a data file, or None when plain."""
    if compression == "none":
        return None
    argv = DECOMPRESSORS[compression]
    return [tool_path(argv[0]), *argv[1:]]
