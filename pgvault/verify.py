"""`pgvault verify`: restore a set into a throwaway cluster (or a scratch database) with
restore's own code path, then compare what the database holds with the manifest.

The data path: set -> file checks -> throwaway cluster -> load_set -> pg_dump --data-only
of the restored database through CopyStats (rows and content per table) + facts ->
comparison with the manifest -> report -> a `-verify.json` record beside the set.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from psycopg import sql

from pgvault import catalog, clients, load, naming, pipeline
from pgvault.catalog import BackupSet
from pgvault.cluster import server_programs, throwaway
from pgvault.config import PgvaultConfig, Profile
from pgvault.connection import Conn, conn_from_url, connect
from pgvault.dumpstream import CopyStats
from pgvault.errors import ConfigError, NotFound, PgvaultError
from pgvault.facts import pgoptions, read_facts
from pgvault.listener import Listener
from pgvault.manifest import (
    HISTORY,
    Manifest,
    PastVerdict,
    TableEntry,
    VerifyRecord,
    read_verify_record,
)
from pgvault.profiles import Plan, skip_entries
from pgvault.profiles.standin import supabase_standin

VERIFIED: Literal["verified"] = "verified"
FAILED: Literal["failed"] = "failed"


@dataclass
class TableCheck:
    name: str
    rows: int | None  # in the restored database; None: the table is not there
    expected_rows: int | None  # in the manifest; None: the manifest does not know it
    content_ok: bool

    @property
    def ok(self) -> bool:
        return self.content_ok and self.rows == self.expected_rows


@dataclass
class VerifyResult:
    prefix: str
    tables: list[TableCheck] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    server_version: str = ""
    duration_s: float = 0.0
    restored: bool = True  # False: the restore failed; tables come from the data file
    profile: str = Profile.plain.value
    # What this server could not check (say, an extension it lacks); not a failure.
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.tables)

    def record(self) -> VerifyRecord:
        bad = [t.name for t in self.tables if not t.ok]
        return VerifyRecord(
            verdict=VERIFIED if self.ok else FAILED,
            checked_at=datetime.now(UTC),
            duration_s=round(self.duration_s, 3),
            server_version=self.server_version,
            tables=len(self.tables),
            rows=sum(t.rows or 0 for t in self.tables),
            problems=[*self.problems, *(f"table {n} differs" for n in bad)],
            not_checked=self.unchecked,
        )


def compare_tables(
    expected: Mapping[str, TableEntry], actual: dict[str, dict[str, Any]]
) -> list[TableCheck]:
    """Given the manifest's tables and the restored database's (rows, sha256 per table),
    return one check per table either side knows."""
    checks = []
    for name in sorted(set(expected) | set(actual)):
        want, got = expected.get(name), actual.get(name)
        checks.append(
            TableCheck(
                name,
                None if got is None else int(got["rows"]),
                None if want is None else want.rows,
                want is not None and got is not None and want.sha256 == got["sha256"],
            )
        )
    return checks


def compare_facts(manifest: Manifest, facts: dict[str, Any]) -> list[str]:
    """What the restored database's facts lack or change against the manifest's."""
    problems = []
    for name, value in sorted(manifest.sequences.items()):
        got = facts["sequences"].get(name, "missing")
        if got != value:
            problems.append(f"sequence {name} is {got}, the backup had {value}")
    for key, what in (("roles", "role"), ("indexes", "index"), ("constraints", "constraint")):
        missing = sorted(set(getattr(manifest, key)) - set(facts[key]))
        problems += [f"{what} {name} is missing" for name in missing]
    for name in manifest.matviews:
        if name not in facts["matviews"]:
            problems.append(f"materialized view {name} is not populated")
    want_lo = manifest.large_objects
    if facts["large_objects"] != want_lo:
        problems.append(f"{facts['large_objects']} large objects, the backup had {want_lo}")
    return problems


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


SCRATCH_DB = "pgvault_verify"

# The restore creates and loads every table in one transaction: at wal_level minimal that
# writes no WAL, and a throwaway cluster needs none.
_NO_WAL = {"wal_level": "minimal", "max_wal_senders": "0"}

# What makes a scratch database not empty: verify would wipe it.
_USER_OBJECTS = """SELECT
    (SELECT count(*) FROM pg_catalog.pg_namespace WHERE nspname NOT IN
        ('pg_catalog', 'information_schema', 'pg_toast', 'public')
        AND nspname !~ '^pg_(toast_)?temp_')
  + (SELECT count(*) FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public')
  + (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata)
  + (SELECT count(*) FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql')"""

_INSTALL_EXTENSION = (
    "install that extension on this machine, or use verify.target=URL of a scratch "
    "database on a server that has it"
)
# Failures of the restore that say nothing about the set: verify could not run.
_NOT_THE_SETS_FAULT = (
    ("extension control file", _INSTALL_EXTENSION),
    ('" is not available', _INSTALL_EXTENSION),
    ("No space left on device", "free space in $TMPDIR or point TMPDIR elsewhere"),
    ("could not connect", "check the scratch server"),
    ("server closed the connection", "check the scratch server's log"),
    ("terminating connection", "check the scratch server's log"),
    ("cannot read", "check that the set's files are still there"),
)  # fmt: skip


@dataclass
class Scratch:
    """An empty database to restore into: loaded as conn, read back as admin."""

    conn: Conn
    admin: Conn
    major: int
    psql: str
    unavailable: set[str] = field(default_factory=set)  # extensions the server lacks
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def scratch(cfg: PgvaultConfig, bset: BackupSet) -> Iterator[Scratch]:
    """Yield an empty database to restore into: in a throwaway cluster (stopped and
    removed afterwards, whatever happens) or the scratch database verify.target names
    (emptied afterwards). A Supabase set gets a Supabase-shaped throwaway cluster."""
    m = _manifest(bset)
    major = m.server_major
    plan = Plan.from_manifest(m)
    if plan.scope is not None and cfg.verify.target != "ephemeral":
        raise ConfigError(
            f"{bset.prefix} is a Supabase set, which verify restores only into a throwaway "
            "Supabase-shaped cluster",
            "leave verify.target at ephemeral on a machine with the PostgreSQL server programs",
        )
    if cfg.verify.target == "ephemeral":
        programs = server_programs(major, cfg.clients.bindir)
        psql = load.psql_for(
            programs.major, bset.dump_major, "a throwaway cluster", cfg.clients.bindir,
            bset.dump_version,
        )  # fmt: skip
        # Not the source's name: the cluster has a `postgres` database already.
        create = create_database_sql(SCRATCH_DB, m.encoding)
        if plan.scope is not None:
            with supabase_standin(
                programs, plan.scope, bset.files, psql, SCRATCH_DB, create,
                _NO_WAL,
            ) as stand_in:  # fmt: skip
                yield Scratch(
                    stand_in.conn, stand_in.admin, programs.major, psql,
                    stand_in.unavailable, stand_in.notes,
                )  # fmt: skip
            return
        with throwaway(programs, settings=_NO_WAL) as cluster:
            with connect(cluster.conn(), autocommit=True) as pg:
                pg.execute(create)
            conn = cluster.conn(SCRATCH_DB)
            yield Scratch(conn, conn, programs.major, psql)
        return
    conn = conn_from_url(cfg.verify.target, what="verify.target")
    with connect(conn, autocommit=True) as pg:
        server_major = pg.info.server_version // 10000
        row = pg.execute(_USER_OBJECTS).fetchone()
    if row and row[0]:
        raise ConfigError(
            f"verify.target {conn.dbname} at {conn.where} is not empty ({row[0]} objects); "
            "verify replaces everything in it",
            "point verify.target at an empty scratch database",
        )
    psql = load.psql_for(
        server_major, bset.dump_major, conn.where, cfg.clients.bindir, bset.dump_version
    )
    try:
        yield Scratch(conn, conn, server_major, psql)
    finally:
        with connect(conn, autocommit=True) as pg:
            pg.execute(load.WIPE_SQL)


def _manifest(bset: BackupSet) -> Manifest:
    assert bset.manifest is not None, "verify takes a complete set"
    return bset.manifest


def verify_set(
    cfg: PgvaultConfig, bset: BackupSet, progress: Listener | None = None
) -> VerifyResult:
    """Restore bset into an empty database and compare it with its manifest. Raises
    PgvaultError only when the check could not run; a bad set is a failed result."""
    result = VerifyResult(bset.prefix, profile=Plan.from_manifest(_manifest(bset)).profile)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Checksums are read while the cluster starts (hashing releases the GIL).
        checked = pool.submit(catalog.file_problems, bset, checksums=True)
        with scratch(cfg, bset) as target:
            result.problems += checked.result()
            _restore_and_compare(bset, target, result, progress)
    result.duration_s = time.monotonic() - started
    return result


def _restore_and_compare(
    bset: BackupSet, target: Scratch, result: VerifyResult, progress: Listener | None
) -> None:
    """Load bset into the target's empty database, then fill result with the comparison."""
    m = _manifest(bset)
    expected = m.tables
    plan = Plan.from_manifest(m)
    with connect(target.admin, autocommit=True) as pg:
        result.server_version = str(pg.info.parameter_status("server_version") or "")
    missing = sorted(target.unavailable)
    result.unchecked += [
        f"extension {name} is not available on this server: what uses it was not checked"
        for name in missing
    ] + target.notes
    keep = skip_entries(set(missing)) if missing else None
    try:
        load.load_set(
            bset, target.conn, target.psql, target.major, schema_keep=keep, progress=progress
        )
    except PgvaultError as e:
        if missing:
            raise PgvaultError(
                f"verify of {bset.prefix} could not run: {e.what}",
                f"it needs {', '.join(missing)}, which this server lacks; {_INSTALL_EXTENSION}",
            ) from None
        for marker, hint in _NOT_THE_SETS_FAULT:
            if marker in e.what:
                raise PgvaultError(
                    f"verify of {bset.prefix} could not run: {e.what}", hint
                ) from None
        result.problems.append(e.what)
        # Name the tables all the same, from what the data file holds.
        result.restored = False
        result.tables = compare_tables(expected, file_tables(bset))
        return
    stats = CopyStats()
    pg_dump = str(Path(target.psql).with_name("pg_dump"))
    # Large objects are counted in the facts; their bytes need not pass through here.
    # The same selection as the backup's data dump (a profile may leave schemas out).
    argv = [pg_dump, "--data-only", "-B", "--no-password", f"--dbname={target.admin.conninfo}",
            *plan.data_args()]  # fmt: skip
    env = target.admin.env()
    settings = m.output_settings
    if settings:
        env["PGOPTIONS"] = pgoptions(settings, env.get("PGOPTIONS", ""))
    pipeline.observe(argv, env, [stats])
    result.tables = compare_tables(expected, stats.result())
    with connect(target.admin, autocommit=True) as pg:
        facts = read_facts(pg, skip_schemas=plan.platform_schemas)
        result.problems += compare_facts(m, facts)


def file_tables(bset: BackupSet) -> dict[str, dict[str, Any]]:
    """Rows and content checksum per table as the set's data file holds them."""
    stats = CopyStats()
    decompress = clients.decompressor(bset.compression)
    with pipeline.stages() as running:
        for chunk in pipeline.file_chunks(
            bset.files["data"], os.environ, running, decompressor=decompress
        ):
            stats.feed(chunk)
    return stats.result()


def write_record(ui: Listener, directory: Path, result: VerifyResult) -> None:
    """Record the verdict beside the set (the earlier ones go into its history), unless
    the set went away meanwhile. A record that cannot be written is a warning: the
    verdict itself stands."""
    manifest = directory / naming.file_name(result.prefix, "manifest")
    try:
        with catalog.locked(directory, timeout=60, what="verify"):
            if manifest.exists():
                path = directory / naming.file_name(result.prefix, "verify")
                record = result.record()
                old = read_verify_record(path) if path.exists() else None
                if old is not None:
                    past = PastVerdict(
                        verdict=old.verdict, checked_at=old.checked_at, problems=old.problems
                    )
                    history = [past, *old.history][:HISTORY]
                    record = record.model_copy(update={"history": history})
                catalog.write_json_atomic(path, record.to_json())
    except (OSError, PgvaultError) as e:
        why = e.line() if isinstance(e, PgvaultError) else str(e.strerror)
        ui.warn(f"the verdict on {result.prefix} was not recorded: {why}")


def sets_to_verify(cfg: PgvaultConfig) -> list[BackupSet]:
    """prefix= names one set; all=true every complete set; else the newest complete set
    that is not a safety backup (the one a restore would be taken from)."""
    opts = cfg.verify
    if opts.prefix:
        found_dir, prefix = catalog.resolve_prefix(opts.prefix, cfg.dir)
        return [catalog.find_set(found_dir, prefix)]
    directory = catalog.backup_dir(cfg.dir, create=False)
    scanned = catalog.scan(directory)  # once: each set's manifest is read here
    if opts.all:
        chosen = [s.prefix for s in scanned if s.complete]
    else:
        newest = catalog.newest(scanned)
        chosen = [newest.prefix] if newest is not None else []
    if not chosen:
        raise NotFound(f"no complete backup set in {directory}", "run `pgvault backup` first")
    return [catalog.find_set(directory, p, scanned) for p in chosen]
