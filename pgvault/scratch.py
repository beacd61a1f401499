"""Where verify restores a set: an empty database in a private throwaway cluster (a
Supabase-shaped one for a Supabase set), or the scratch database verify.target names,
which is refused unless it holds nothing at all. And which failures there say nothing
about the set (a missing extension, no space or memory, a server gone): verify could not
run, and records no verdict.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import psycopg
from psycopg import sql

from pgvault import load
from pgvault.catalog import BackupSet
from pgvault.cluster import NO_MEMORY, NO_SPACE, no_space, server_programs, throwaway
from pgvault.config import PgvaultConfig
from pgvault.connection import Conn, conn_from_url, connect, needs_ssl
from pgvault.errors import ConfigError, PgvaultError, ServerError
from pgvault.profiles import Plan
from pgvault.profiles.standin import supabase_standin

SCRATCH_DB = "pgvault_verify"

# The restore creates and loads every table in one transaction: at wal_level minimal that
# writes no WAL, and a throwaway cluster needs none.
THROWAWAY_SETTINGS = {"wal_level": "minimal", "max_wal_senders": "0"}

# Every object made in the database after initdb (oid >= FirstNormalObjectId), except
# the parts of another: extension members, array and row types, a view's rule, a
# constraint's index... The `public` schema and plpgsql are initdb's (a wipe remakes
# public). Large objects are described through pg_largeobject, as pg_depend names them.
USER_OBJECTS = """
WITH o(classid, objid) AS (
    SELECT 'pg_namespace'::regclass, oid FROM pg_catalog.pg_namespace
        WHERE oid >= 16384 AND nspname <> 'public' AND nspname !~ '^pg_(toast_)?temp_'
    UNION ALL SELECT 'pg_class'::regclass, oid FROM pg_catalog.pg_class
        WHERE oid >= 16384 AND relpersistence <> 't'
            AND relnamespace <> 'pg_toast'::pg_catalog.regnamespace
    UNION ALL SELECT 'pg_extension'::regclass, oid FROM pg_catalog.pg_extension
        WHERE oid >= 16384 AND extname <> 'plpgsql'
    UNION ALL SELECT 'pg_language'::regclass, oid FROM pg_catalog.pg_language
        WHERE oid >= 16384 AND lanname <> 'plpgsql'
    UNION ALL SELECT 'pg_largeobject'::regclass, oid FROM pg_catalog.pg_largeobject_metadata
    UNION ALL SELECT 'pg_subscription'::regclass, oid FROM pg_catalog.pg_subscription
        WHERE subdbid = (SELECT oid FROM pg_catalog.pg_database
                         WHERE datname = pg_catalog.current_database())
    {more}
)
SELECT count(*), (pg_catalog.array_agg(pg_catalog.pg_describe_object(classid, objid, 0)
                                       ORDER BY classid, objid))[1:3]
FROM o WHERE NOT EXISTS (
    SELECT FROM pg_catalog.pg_depend d
    WHERE d.classid = o.classid AND d.objid = o.objid AND d.deptype IN ('e', 'i'))
""".format(
    more="\n    ".join(
        f"UNION ALL SELECT '{c}'::regclass, oid FROM pg_catalog.{c} WHERE oid >= 16384"
        for c in (
            "pg_proc", "pg_type", "pg_operator", "pg_opclass", "pg_opfamily", "pg_collation",
            "pg_conversion", "pg_ts_config", "pg_ts_dict", "pg_ts_parser", "pg_ts_template",
            "pg_cast", "pg_foreign_data_wrapper", "pg_foreign_server", "pg_event_trigger",
            "pg_publication", "pg_am", "pg_transform", "pg_policy", "pg_statistic_ext",
            "pg_default_acl",
        )
    )
)  # fmt: skip

INSTALL_EXTENSION = (
    "install that extension on this machine, or use verify.target=URL of a scratch "
    "database on a server that has it"
)
_SERVER_GONE = (
    "server closed the connection", "terminating connection", "connection to server",
    "no connection to the server", "the database system is", "could not connect",
    "killed by signal",
)  # fmt: skip
_NO_SLOTS = ("too many clients", "too many connections", "remaining connection slots")
_SYSTEM = ("Too many open files", "out of file descriptors", "Read-only file system",
           "Input/output error")  # fmt: skip
# Someone else's session, or the scratch server's own limits, stopped a statement.
_BUSY = ("canceling statement due to", "deadlock detected")
# psql runs with VERBOSITY=verbose, so a server error carries its SQLSTATE. Only these say
# nothing about the set: resources (53), operator intervention (57), system errors (58,
# missing extension files among them), connections (08), what this server does not support
# (0A: an extension it lacks), a lock not available, deadlock.
# Any other code decides against the set, whatever its text quotes from the set.
_SQLSTATE = re.compile(r"\b(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):")
_NOT_THE_SETS = ("53", "57", "58", "08", "0A", "55P03", "40P01")


@dataclass
class Scratch:
    """An empty database to restore into: loaded as conn, read back as admin."""

    conn: Conn
    admin: Conn
    major: int
    psql: str
    unavailable: set[str] = field(default_factory=set)  # extensions the server lacks
    notes: list[str] = field(default_factory=list)
    # Where a throwaway cluster keeps its files; None: the scratch database verify.target.
    tmpdir: Path | None = None

    def could_not_run(self, what: str) -> tuple[str, str] | None:
        return could_not_run(what, self.tmpdir, self.conn.where)


def could_not_run(what: str, tmpdir: Path | None, where: str) -> tuple[str, str] | None:
    """Given a failure's text, return (why, hint) when it says nothing about the set: an
    extension the server lacks, no space or memory, no connection slot, a server (or psql)
    that went away, a set file gone. None: it may be the set's fault. Quoted parts of the
    text (values and names from the set) are not read. tmpdir: where the throwaway
    cluster is (None: the scratch server at where)."""
    code = _SQLSTATE.search(what)
    if code is not None and not code[1].startswith(_NOT_THE_SETS):
        return None  # the server named an error of the data or the schema: the set's
    text = re.sub(r'"[^"\n]*"', '""', what)
    if "extension control file" in text or '" is not available' in text:
        return what, INSTALL_EXTENSION
    if any(m in text for m in (*NO_SPACE, "could not write")):
        if tmpdir is not None:
            e = no_space(tmpdir)
            return e.what, e.hint
        return f"the scratch server at {where} ran out of space: {what}", "free space there"
    if "out of shared memory" in text:  # the lock table: a set with very many tables
        hint = (
            "raise max_locks_per_transaction on the scratch server" if tmpdir is None
            else "use verify.target=URL of a scratch database on a server with a larger "
            "max_locks_per_transaction (verify's own cluster has 1024)"
        )  # fmt: skip
        return f"the server cannot lock that many tables at once: {what}", hint
    if any(m in text for m in NO_MEMORY):
        return f"out of memory: {what}", "free memory (or /dev/shm) and run verify again"
    if any(m in text for m in _NO_SLOTS):
        return f"no free connection: {what}", "run verify again when fewer clients are on"
    if any(m in text for m in _SYSTEM):
        return what, "check the machine's disk and limits, and run verify again"
    if any(m in text for m in _SERVER_GONE):
        return f"the server stopped: {what}", "check free memory and space, and run verify again"
    if any(m in text for m in _BUSY):
        return f"the scratch database was busy: {what}", "run verify again when it is idle"
    if "cannot read" in text:
        return what, "check that the set's files are still there"
    return None


def create_database_sql(name: str, encoding: str) -> sql.Composed:
    """CREATE DATABASE in the source's encoding: pg_dump writes COPY in the database's
    encoding, so a re-dump of a UTF8 copy of a LATIN1 database would read differently.
    The C locale goes with every encoding."""
    stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if encoding.upper() in ("UTF8", "UTF-8"):
        return stmt
    return sql.SQL("{} TEMPLATE template0 ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C'").format(
        stmt, sql.Literal(encoding)
    )


@contextlib.contextmanager
def scratch(cfg: PgvaultConfig, bset: BackupSet) -> Iterator[Scratch]:
    """Yield an empty database to restore into: in a private throwaway cluster (stopped
    and removed afterwards, whatever happens) or the scratch database verify.target names
    (emptied afterwards). A Supabase set gets a Supabase-shaped throwaway cluster."""
    m = bset.manifest
    assert m is not None, "verify takes a complete set"
    plan = Plan.from_manifest(m)
    if plan.scope is not None and cfg.verify.target != "ephemeral":
        raise ConfigError(
            f"{bset.prefix} is a Supabase set, which verify restores only into a throwaway "
            "Supabase-shaped cluster",
            "leave verify.target at ephemeral on a machine with the PostgreSQL server programs",
        )
    if cfg.verify.target != "ephemeral":
        with _scratch_target(cfg, bset) as target:
            yield target
        return
    programs = server_programs(m.server_major, cfg.clients.bindir)
    psql = load.psql_for(
        programs.major, bset.dump_major, "a throwaway cluster", cfg.clients.bindir,
        bset.dump_version,
    )  # fmt: skip
    # Not the source's name: the cluster has a `postgres` database already.
    create = create_database_sql(SCRATCH_DB, m.encoding)
    tmpdir = Path(tempfile.gettempdir())
    if plan.scope is not None:
        with (
            _setup_failure(tmpdir, bset.prefix),
            supabase_standin(
                programs, plan.scope, bset.files, psql, SCRATCH_DB, create, THROWAWAY_SETTINGS
            ) as stand_in,
        ):
            yield Scratch(
                stand_in.conn, stand_in.admin, programs.major, psql,
                stand_in.unavailable, stand_in.notes, tmpdir,
            )  # fmt: skip
        return
    with throwaway(programs, settings=THROWAWAY_SETTINGS, tcp=False) as cluster:
        with _setup_failure(tmpdir, bset.prefix), connect(cluster.conn(), autocommit=True) as pg:
            pg.execute(create)
        conn = cluster.conn(SCRATCH_DB)
        yield Scratch(conn, conn, programs.major, psql, tmpdir=tmpdir)


@contextlib.contextmanager
def _setup_failure(tmpdir: Path, prefix: str) -> Iterator[None]:
    """Making the scratch database failed (say, no space for it): verify could not run."""
    try:
        yield
    except psycopg.Error as e:
        what = first_line(e)
        why, hint = could_not_run(what, tmpdir, "") or (what, "fix the cause and verify again")
        raise ServerError(f"verify of {prefix} could not run: {why}", hint) from None


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@contextlib.contextmanager
def _scratch_target(cfg: PgvaultConfig, bset: BackupSet) -> Iterator[Scratch]:
    """The scratch database verify.target names, if it holds no object at all; it is
    emptied again afterwards."""
    conn = conn_from_url(cfg.verify.target, what="verify.target")
    try:
        with connect(conn, autocommit=True) as pg:
            server_major = pg.info.server_version // 10000
            superuser = pg.info.parameter_status("is_superuser") == "on"
            user = pg.info.user
            row = pg.execute(USER_OBJECTS).fetchone()
    except psycopg.Error as e:
        raise ServerError(
            f"cannot read what verify.target {conn.dbname} at {conn.where} holds: {first_line(e)}",
            "check verify.target",
        ) from None
    if not superuser:
        # A set's roles file always alters the bootstrap superuser: the load would fail,
        # and the set be called damaged.
        raise ConfigError(
            f"verify.target connects to {conn.dbname} at {conn.where} as {user}, who is "
            "not a superuser, and restoring a set's roles takes one",
            "use a superuser in verify.target, or leave it at ephemeral",
        )
    count, names = cast("tuple[int, list[str] | None]", row or (0, None))
    if count:
        shown = names or []
        more = f" and {count - len(shown)} more" if count > len(shown) else ""
        raise ConfigError(
            f"verify.target {conn.dbname} at {conn.where} is not empty: it holds "
            f"{', '.join(shown)}{more}; verify would replace everything in it",
            "point verify.target at a new, empty database (CREATE DATABASE ...)",
        )
    psql = load.psql_for(
        server_major, bset.dump_major, conn.where, cfg.clients.bindir, bset.dump_version,
        ssl=needs_ssl(conn),
    )  # fmt: skip
    try:
        yield Scratch(conn, conn, server_major, psql)
    except BaseException:
        # The error that stopped verify is the one to report, not one of emptying.
        with contextlib.suppress(PgvaultError):
            _empty(conn)
        raise
    _empty(conn)


def _empty(conn: Conn) -> None:
    try:
        with connect(conn, autocommit=True) as pg:
            pg.execute(load.WIPE_SQL)
    except psycopg.Error as e:
        raise ServerError(
            f"verify.target {conn.dbname} at {conn.where} could not be emptied again: "
            f"{first_line(e)}",
            "empty it by hand (DROP DATABASE and CREATE DATABASE)",
        ) from None
