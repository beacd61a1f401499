"""`pgvault restore`: check a set, confirm, take a safety backup, then replace the target
database with the set in one transaction, so any failure leaves it exactly as it was.

The data path: prefix -> set and manifest -> file checks -> target server and psql ->
summary and confirmation -> safety backup -> one psql stream: BEGIN, roles, wipe,
pre-data, data (triggers off), post-data, COMMIT.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgvault import catalog, clients, naming, pipeline
from pgvault.config import Confirm, PgvaultConfig, TargetConfig
from pgvault.connection import Conn, conn_for_target, conn_from_url, connect
from pgvault.dumpstream import DataFilter, drop_lines
from pgvault.errors import (
    ClientProgramError,
    ConfigError,
    DatabaseMissing,
    IntegrityError,
    NotFound,
    PgvaultError,
    Refused,
)
from pgvault.ui import Reporter, mb

# Server versions before 17 reject this line, which pg_dump 17 and newer write.
_NEW_SETTINGS = (b"SET transaction_timeout = 0;",)

# Drops everything pg_dump would dump from the database (roles are cluster-wide and are
# only created or updated), then makes `public` as initdb does: pg_dump writes only how
# a database's public schema differs from that.
WIPE_SQL = """
DO $pgvault$
DECLARE r record;
BEGIN
    PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
    FOR r IN SELECT evtname FROM pg_catalog.pg_event_trigger LOOP
        EXECUTE format('DROP EVENT TRIGGER %I', r.evtname);
    END LOOP;
    FOR r IN SELECT pubname FROM pg_catalog.pg_publication LOOP
        EXECUTE format('DROP PUBLICATION %I', r.pubname);
    END LOOP;
    FOR r IN SELECT extname FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql' LOOP
        EXECUTE format('DROP EXTENSION IF EXISTS %I CASCADE', r.extname);
    END LOOP;
    FOR r IN SELECT nspname FROM pg_catalog.pg_namespace
        WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
            AND nspname !~ '^pg_(toast_)?temp_' LOOP
        EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', r.nspname);
    END LOOP;
    FOR r IN SELECT fdwname FROM pg_catalog.pg_foreign_data_wrapper LOOP
        EXECUTE format('DROP FOREIGN DATA WRAPPER IF EXISTS %I CASCADE', r.fdwname);
    END LOOP;
    FOR r IN SELECT format_type(castsource, NULL) AS s, format_type(casttarget, NULL) AS t
        FROM pg_catalog.pg_cast WHERE oid >= 16384 LOOP
        EXECUTE format('DROP CAST IF EXISTS (%s AS %s) CASCADE', r.s, r.t);
    END LOOP;
    IF current_setting('server_version_num')::int >= 150000 THEN
        CREATE SCHEMA public AUTHORIZATION pg_database_owner;
        GRANT USAGE ON SCHEMA public TO PUBLIC;
    ELSE
        CREATE SCHEMA public;
        EXECUTE format('ALTER SCHEMA public OWNER TO %I',
                       (SELECT rolname FROM pg_catalog.pg_authid WHERE oid = 10));
        GRANT ALL ON SCHEMA public TO PUBLIC;
    END IF;
    COMMENT ON SCHEMA public IS 'standard public schema';
END $pgvault$;
"""


@dataclass(frozen=True)
class LoadedSet:
    """A set ready to restore: its directory, files by kind and manifest."""

    prefix: str
    directory: Path
    files: dict[str, Path]
    manifest: dict[str, Any]

    @property
    def compression(self) -> str:
        return str(self.manifest.get("compression", "none"))

    @property
    def dump_major(self) -> int:
        """Major version of the pg_dump that wrote the set."""
        version = str(self.manifest.get("clients", {}).get("version", "0"))
        return int(version.split(".")[0] or 0)


def resolve_prefix(prefix: str | None, dir_value: str | None) -> tuple[Path, str]:
    """Given prefix= (short, or an absolute path ending in a prefix) and dir=, return the
    set's directory and prefix. Rejects anything that is not a pgvault name."""
    if not prefix:
        raise ConfigError(
            "no backup set given",
            "pass prefix=backup-YYYY-MM-DD-HHMMSS (`pgvault list` shows them)",
        )
    path = Path(prefix)
    if path.is_absolute():
        directory, name = path.parent, path.name
        if ".." in path.parts:
            raise ConfigError(f"prefix '{prefix}' contains '..'", "give the set's real path")
    else:
        directory, name = catalog.backup_dir(dir_value, create=False), prefix
    if not naming.is_prefix(name):
        raise ConfigError(
            f"'{name}' is not a backup set name",
            "use prefix=backup-YYYY-MM-DD-HHMMSS as `pgvault list` shows it",
        )
    return directory, name


def find_set(directory: Path, prefix: str) -> LoadedSet:
    """Return the complete set prefix in directory, or say what is missing."""
    bset = next((s for s in catalog.scan(directory) if s.prefix == prefix), None)
    if bset is None:
        raise NotFound(
            f"no backup set {prefix} in {directory}", f"`pgvault list dir={directory}` shows them"
        )
    if bset.manifest is None:
        why = bset.manifest_error or f"{naming.file_name(prefix, 'manifest')} is missing"
        raise NotFound(
            f"backup set {prefix} is incomplete: {why}",
            "it was interrupted or damaged; pick another set",
        )
    if bset.missing:
        raise NotFound(
            f"backup set {prefix} lacks {', '.join(bset.missing)}",
            "restore the missing files or pick another set",
        )
    files = {k: bset.files[k] for k in naming.SQL_KINDS}
    return LoadedSet(prefix, directory, files, bset.manifest)


def file_problems(bset: LoadedSet) -> list[str]:
    """Compare each file's size and sha256 with the manifest; return what disagrees."""
    problems = []
    for kind, path in bset.files.items():
        want = bset.manifest["files"][kind]
        size = path.stat().st_size
        if size != want["size"]:
            problems.append(f"{path.name} is {size} bytes, the manifest says {want['size']}")
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(pipeline.CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != want["sha256"]:
            problems.append(f"{path.name} does not match its sha256 in the manifest")
    return problems


def restore_conn(cfg: PgvaultConfig) -> Conn:
    """The database to replace: restore.target (a URL, or a database name on the
    configured target's server), else the configured target."""
    other = cfg.restore.target
    if other and ("://" in other or "=" in other):
        return conn_from_url(other, what="restore.target")
    conn = conn_for_target(cfg.target)
    return conn.with_dbname(other) if other else conn


def psql_for(server_major: int, dump_major: int, where: str, bindir: str | None) -> str:
    """psql that can talk to the server and read what the set's pg_dump wrote."""
    found = clients.available_programs(("psql",), bindir)
    chosen = clients.pick(max(server_major, dump_major), found)
    if chosen is not None:
        return chosen.path("psql")
    if dump_major > server_major:
        need = dump_major
        what = f"this set was written by pg_dump {dump_major}; restoring it needs psql {need}+"
    else:
        need = server_major
        what = f"no psql {need} or newer for the PostgreSQL {need} server at {where}"
    raise ClientProgramError(
        what, f"install postgresql-client-{need} (or brew install postgresql@{need})"
    )


def restore_parts(
    bset: LoadedSet, server_major: int
) -> Callable[[list[pipeline.Stage]], Iterator[bytes]]:
    """The one stream psql reads: the whole restore inside a single transaction, in the
    order pre-data, data, post-data, so indexes and constraints are built once."""
    drop = _NEW_SETTINGS if server_major < 17 else ()
    offset = int(bset.manifest["schema_post_data_offset"])
    decompress = None
    if bset.compression != "none":
        argv = clients.DECOMPRESSORS[bset.compression]
        decompress = [clients.tool_path(argv[0]), *argv[1:]]

    def sql_file(
        path: Path, running: list[pipeline.Stage], start: int = 0, stop: int | None = None
    ) -> Iterator[bytes]:
        transform = drop_lines(drop)
        for chunk in pipeline.file_chunks(path, {}, running, start=start, stop=stop):
            yield transform(chunk)
        yield transform(b"") + b"\n"

    def parts(running: list[pipeline.Stage]) -> Iterator[bytes]:
        yield b"BEGIN;\nSET LOCAL lock_timeout = '60s';\n"
        yield from sql_file(bset.files["roles"], running)
        yield WIPE_SQL.encode()
        yield from sql_file(bset.files["schema"], running, stop=offset)
        yield b"SET session_replication_role = replica;\n"
        data = DataFilter(drop)
        for chunk in pipeline.file_chunks(
            bset.files["data"], os.environ, running, decompressor=decompress
        ):
            yield data(chunk)
        yield data(b"")
        if data.open_copy is not None:
            # Never let psql read what follows as rows: stop before COMMIT.
            raise IntegrityError(
                f"{bset.files['data'].name} ends inside the data of {data.open_copy}",
                "the file is truncated; restore another set",
            )
        yield b"\n"
        yield b"SET session_replication_role = DEFAULT;\n"
        yield from sql_file(bset.files["schema"], running, start=offset)
        yield b"COMMIT;\n"

    return parts


def load_set(bset: LoadedSet, conn: Conn, psql: str, server_major: int) -> None:
    """Replace conn's database with the set, atomically: on any failure nothing changed."""
    argv = [psql, *clients.psql_args(conn.conninfo)]
    try:
        pipeline.stream_into(argv, conn.env(), restore_parts(bset, server_major))
    except ClientProgramError as e:
        raise PgvaultError(
            f"restore failed, {conn.dbname} is unchanged: {e.what.removeprefix('psql failed: ')}",
            "fix the cause and run the restore again",
        ) from None


def _server(conn: Conn, create: bool) -> tuple[int, str, bool]:
    """Return the target server's major version, version text, and whether the database
    exists. A missing database is an error unless it may be created."""
    try:
        with connect(conn, autocommit=True) as pg:
            return (*_version(pg), True)
    except DatabaseMissing as e:
        if not create:
            raise DatabaseMissing(
                e.what, "create it, or pass restore.create_database=true"
            ) from None
    with connect(conn.with_dbname("postgres"), autocommit=True) as pg:
        return (*_version(pg), False)


def _version(pg: Any) -> tuple[int, str]:
    row = pg.execute("SHOW server_version").fetchone()
    return int(pg.info.server_version) // 10000, str(row[0])


def _summary(ui: Reporter, bset: LoadedSet, conn: Conn, exists: bool, safety: bool) -> None:
    m = bset.manifest
    ui.say(f"Restoring from backup: {bset.prefix}")
    ui.say(f"Backup directory: {bset.directory}")
    ui.say("Files:")
    total = 0
    for kind, path in bset.files.items():
        size = int(m["files"][kind]["size"])
        total += size
        ui.say(f"  - {path.name} ({mb(size)})")
    ui.say(f"Total size: {mb(total)}")
    when = naming.parse_prefix(bset.prefix).astimezone()
    ui.say(f"Backup date: {when:%Y-%m-%d %H:%M:%S %Z}")
    ui.say(f"Source: target {m.get('target')} (database {m.get('database')}, "
           f"PostgreSQL {m.get('server_version')})")  # fmt: skip
    ui.say(f"Target: database {conn.dbname} at {conn.where}" + ("" if exists else " (new)"))
    ui.say("")
    ui.say("⚠️  WARNING: This will REPLACE the database above with the backup.")
    ui.say("   Everything in it now will be lost; roles in the backup are created or updated.")
    if safety and exists:
        ui.say("   A safety backup of it is taken first.")
    ui.say("")


def confirmed(cfg: PgvaultConfig, ask: Callable[[str], str] = input) -> bool:
    """Apply the confirm policy. Without a terminal it refuses rather than hang (cron)."""
    policy = cfg.restore.confirm
    if policy is Confirm.never or (policy is Confirm.tty and cfg.yes):
        return True
    if not sys.stdin.isatty():
        raise Refused(
            "restore needs a confirmation and there is no terminal to ask on",
            "pass yes=true to restore without asking"
            if policy is Confirm.tty
            else "restore.confirm=always: run it on a terminal",
        )
    try:
        answer = ask("Are you sure you want to proceed with the restore? (y/N) ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _safety_backup(cfg: PgvaultConfig, ui: Reporter, conn: Conn, directory: Path) -> str:
    from pgvault.backup import run_backup

    # The password rides along in memory only: conn_from_url takes it out again.
    info = conn.conninfo
    if conn.password is not None:
        info = make_conninfo(info, password=conn.password)
    target = TargetConfig(name=cfg.target.name, url=info or None)
    sub = replace(cfg, dir=str(directory), target=target, quiet=True)
    # No retention here: it could delete the very set being restored.
    result = run_backup(sub, Reporter(quiet=True), apply_retention=False)
    ui.ok(f"Safety backup of {conn.dbname}: {result.prefix} (in {directory})")
    return result.prefix


def run_restore(
    cfg: PgvaultConfig,
    ui: Reporter,
    *,
    env_name: str = "default",
    ask: Callable[[str], str] = input,
) -> None:
    """Given a config with prefix=, replace the target database with that set.

    Everything is checked before anything changes; the replace is one transaction."""
    if not cfg.restore.allowed:
        raise Refused(
            f"restores are not allowed in env '{env_name}'",
            "pass restore.allowed=true if you really mean to restore here",
        )
    directory, prefix = resolve_prefix(cfg.prefix, cfg.dir)
    bset = find_set(directory, prefix)
    problems = file_problems(bset)
    if problems and not cfg.force:
        raise IntegrityError(
            f"backup set {prefix} is damaged: {problems[0]}",
            "restore another set, or pass force=true to restore it anyway",
        )
    for problem in problems:
        ui.warn(f"{problem}; restoring anyway (force=true)")
    conn = restore_conn(cfg)
    server_major, server_version, exists = _server(conn, cfg.restore.create_database)
    psql = psql_for(server_major, bset.dump_major, conn.where, cfg.clients.bindir)
    _summary(ui, bset, conn, exists, cfg.restore.safety_backup)
    if not confirmed(cfg, ask):
        ui.say("Restore cancelled.")
        return
    started = time.monotonic()
    with catalog.locked(directory, timeout=cfg.lock_timeout, what="restore"):
        if exists and cfg.restore.safety_backup:
            _safety_backup(cfg, ui, conn, directory)
        if not exists:
            _create_database(conn)
        try:
            load_set(bset, conn, psql, server_major)
        except BaseException:
            if not exists:
                with contextlib.suppress(PgvaultError):
                    _drop_database(conn)
            raise
    ui.ok(
        f"Restore completed successfully! {conn.dbname} at {conn.where} now holds {prefix} "
        f"(PostgreSQL {server_version}, {time.monotonic() - started:.1f} s)"
    )


def _create_database(conn: Conn) -> None:
    with connect(conn.with_dbname("postgres"), autocommit=True) as pg:
        pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(conn.dbname)))


def _drop_database(conn: Conn) -> None:
    with connect(conn.with_dbname("postgres"), autocommit=True) as pg:
        pg.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(conn.dbname)))
