"""`pgvault restore`: check a set, confirm, take a safety backup, then replace the target
database with the set in one transaction, so any failure leaves it exactly as it was.

The data path: prefix -> set and manifest -> file checks -> target server and psql ->
summary and confirmation -> safety backup -> one psql stream: BEGIN, roles, wipe,
pre-data, data (triggers off), post-data, COMMIT.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgvault import catalog, clients, naming
from pgvault.config import Confirm, PgvaultConfig, Profile, TargetConfig
from pgvault.connection import Conn, conn_for_target, conn_from_url, connect
from pgvault.errors import (
    ConfigError,
    DatabaseMissing,
    IntegrityError,
    NotFound,
    PgvaultError,
    Refused,
)
from pgvault.load import LoadedSet, RestoreFailed, load_set, psql_for
from pgvault.profiles import Plan, supabase
from pgvault.ui import Reporter, mb


def resolve_prefix(prefix: str | None, dir_value: str | None) -> tuple[Path, str]:
    """Given prefix= (short, or an absolute path ending in a prefix) and dir=, return the
    set's directory and prefix. Rejects anything that is not a pgvault name."""
    if not prefix:
        raise ConfigError(
            "no backup set given",
            "pass prefix=backup-YYYY-MM-DD-HHMMSS; `pgvault list` shows them",
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


def find_set(
    directory: Path, prefix: str, scanned: list[catalog.BackupSet] | None = None
) -> LoadedSet:
    """Return the complete set prefix in directory (from scanned, a scan of it already
    made, if given), or say what is missing."""
    sets = catalog.scan(directory) if scanned is None else scanned
    bset = next((s for s in sets if s.prefix == prefix), None)
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
    kinds = [*naming.SQL_KINDS, naming.PLATFORM]
    files = {k: bset.files[k] for k in kinds if k in bset.manifest["files"]}
    return LoadedSet(prefix, directory, files, bset.manifest)


def file_problems(bset: LoadedSet) -> list[str]:
    """Compare each file's size and sha256 with the manifest; return what disagrees."""
    return catalog.file_problems(bset.prefix, bset.files, bset.manifest, checksums=True)


def restore_conn(cfg: PgvaultConfig) -> Conn:
    """The database to replace: restore.target (a URL, or a database name on the
    configured target's server), else the configured target."""
    other = cfg.restore.target
    if other and ("://" in other or "=" in other):
        return conn_from_url(other, what="restore.target")
    conn = conn_for_target(cfg.target)
    return conn.with_dbname(other) if other else conn


def _server(conn: Conn, create: bool, profile: str, ui: Reporter) -> tuple[int, str, bool]:
    """Return the target server's major version, version text, and whether the database
    exists. A missing database is an error unless it may be created; a set of a Supabase
    database needs a Supabase database to go into."""
    try:
        with connect(conn, autocommit=True) as pg:
            target_is_supabase = supabase.detect(pg)
            if profile == Profile.supabase.value and not target_is_supabase:
                raise Refused(
                    f"this set is of a Supabase database and {conn.dbname} at {conn.where} "
                    "is not one (no supabase_admin role or Supabase-owned auth schema)",
                    "restore it into a Supabase database, e.g. one `supabase start` made",
                )
            if profile == Profile.plain.value and target_is_supabase:
                ui.warn(
                    f"{conn.dbname} is a Supabase database and this set was made with the plain "
                    "profile: the restore replaces Supabase's schemas too and needs a superuser"
                )
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
    profile = Plan.from_manifest(m).profile
    ui.say(f"Profile: {profile}" + (
        " (the app's schemas, roles and rows; Supabase's own stay as they are)"
        if profile == Profile.supabase.value else ""))  # fmt: skip
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
    if sys.stdin is None or not sys.stdin.isatty():
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
    try:
        result = run_backup(sub, Reporter(quiet=True), apply_retention=False)
    except PgvaultError as e:
        raise PgvaultError(
            f"the safety backup of {conn.dbname} failed, nothing was restored: {e.what}",
            (f"{e.hint}, " if e.hint else "") + "or pass restore.safety_backup=false",
        ) from None
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
    clients.decompressor(bset.compression)  # a missing zstd/gzip fails here, not mid-way
    conn = restore_conn(cfg)
    profile = Plan.from_manifest(bset.manifest).profile
    server_major, server_version, exists = _server(conn, cfg.restore.create_database, profile, ui)
    psql = psql_for(
        server_major, bset.dump_major, conn.where, cfg.clients.bindir, bset.dump_version
    )
    _summary(ui, bset, conn, exists, cfg.restore.safety_backup)
    if not confirmed(cfg, ask):
        # Not a success: a script that goes on after `pgvault restore` must not think so.
        raise Refused("Restore cancelled.", "nothing was changed")
    started = time.monotonic()
    # No prune or backup meanwhile (the safety backup takes the lock again: re-entrant).
    with catalog.locked(directory, timeout=cfg.lock_timeout, what="restore"):
        if exists and cfg.restore.safety_backup:
            _safety_backup(cfg, ui, conn, directory)
        if not exists:
            _create_database(conn)
        try:
            load_set(bset, conn, psql, server_major, strict=not cfg.force)
        except BaseException as e:
            if not exists:
                dropped = _drop_database(ui, conn, server_major)
                if dropped and isinstance(e, RestoreFailed):
                    raise RestoreFailed(
                        f"restore failed, the new database {conn.dbname} was dropped again",
                        e.detail,
                        e.hint,
                    ) from None
            raise
    ui.ok(
        f"Restore completed successfully! {conn.dbname} at {conn.where} now holds {prefix} "
        f"(PostgreSQL {server_version}, {time.monotonic() - started:.1f} s)"
    )


def _create_database(conn: Conn) -> None:
    with connect(conn.with_dbname("postgres"), autocommit=True) as pg:
        try:
            pg.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(conn.dbname)))
        except psycopg.Error as e:
            raise PgvaultError(
                f"cannot create database {conn.dbname}: {_first_line(e)}",
                f"create it yourself, or restore as a role with CREATEDB (not {conn.user})",
            ) from None


def _drop_database(ui: Reporter, conn: Conn, server_major: int) -> bool:
    """Drop the database this restore created; say so when that fails."""
    # psql was just killed: its session may linger a moment, and nobody else has a reason
    # to be connected to a database created seconds ago.
    force = " WITH (FORCE)" if server_major >= 13 else ""
    stmt = sql.SQL("DROP DATABASE IF EXISTS {}" + force).format(sql.Identifier(conn.dbname))
    try:
        with connect(conn.with_dbname("postgres"), autocommit=True) as pg:
            pg.execute(stmt)
    except (PgvaultError, psycopg.Error) as e:
        what = e.line() if isinstance(e, PgvaultError) else _first_line(e)
        ui.warn(f"could not drop the new database {conn.dbname} again: {what}")
        return False
    return True


def _first_line(e: BaseException) -> str:
    return str(e).strip().partition("\n")[0] or type(e).__name__
