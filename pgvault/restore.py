"""`pgvault restore`: check a set, confirm, take a safety backup, then replace the target
database with the set in one transaction, so any failure leaves it exactly as it was.

The data path: prefix -> set and manifest -> file checks -> target server and psql ->
summary and confirmation -> safety backup -> one psql stream: BEGIN, roles, wipe,
pre-data, data (triggers off), post-data, COMMIT.
"""

from __future__ import annotations

import errno
import hashlib
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgvault import catalog, clients, encryption, locks
from pgvault.catalog import BackupSet
from pgvault.config import Confirm, PgvaultConfig, Profile, TargetConfig
from pgvault.connection import Conn, conn_for_target, conn_from_url, connect, needs_ssl
from pgvault.errors import (
    DatabaseMissing,
    IntegrityError,
    PgvaultError,
    Refused,
)
from pgvault.listener import Listener, Silent
from pgvault.load import RestoreFailed, load_set, psql_for
from pgvault.profiles import Plan, supabase


def file_problems(bset: BackupSet) -> list[str]:
    """Compare each file's size and sha256 with the manifest; return what disagrees."""
    return catalog.file_problems(bset, checksums=True)


@dataclass(frozen=True)
class RestorePlan:
    """Everything a restore checked before it asks: the set, the database it replaces,
    and the psql that will load it. problems: damage that force=true lets through.
    storage: whether the set's Supabase Storage objects are put back (target.storage)."""

    bset: BackupSet
    conn: Conn
    state: TargetState
    psql: str
    problems: list[str]
    storage: bool = False


class StorageNotRestored(PgvaultError):
    """Putting the set's Storage objects back failed after the database was replaced."""


def plan_restore(cfg: PgvaultConfig, env_name: str) -> RestorePlan:
    """Check everything that can be checked before anything changes: the policy, the
    set and its files, the compressor, the target server and the client programs."""
    opts = cfg.restore
    if not opts.allowed:
        raise Refused(
            f"restores are not allowed in env '{env_name}'",
            "pass restore.allowed=true if you really mean to restore here",
        )
    directory, prefix = catalog.resolve_prefix(opts.prefix, cfg.dir, cfg.target)
    bset = catalog.find_set(directory, prefix)
    problems = file_problems(bset)
    if problems and not opts.force:
        raise IntegrityError(
            f"backup set {prefix} is damaged: {problems[0]}",
            "restore another set, or pass force=true to restore it anyway",
        )
    clients.decompressor(bset.compression)  # a missing zstd/gzip fails here, not mid-way
    # A missing or wrong key, before the target is even looked at.
    encryption.check_set(bset, cfg.encryption.identity)
    storage = False
    if bset.manifest is not None and bset.manifest.attachments is not None:
        from pgvault import attachments

        storage = attachments.put_back(cfg, bset)
        attachments.check_restore(cfg, bset)  # Storage answers, before the database changes
    conn = restore_conn(cfg)
    assert bset.manifest is not None  # find_set gives a complete set
    state = inspect_target(conn, opts.create_database, Plan.from_manifest(bset.manifest).profile)
    psql = psql_for(
        state.major, bset.dump_major, conn.where, cfg.clients.bindir, bset.dump_version,
        ssl=needs_ssl(conn),
    )  # fmt: skip
    return RestorePlan(bset, conn, state, psql, problems, storage)


def apply_restore(
    cfg: PgvaultConfig, plan: RestorePlan, ui: Listener, on_safety: Callable[[str], None]
) -> None:
    """Under the directory's lock (no prune or backup meanwhile), take the safety backup
    (on_safety hears its prefix), then replace the database in one transaction, then put
    the set's Storage objects back when plan.storage (the safety backup copied the live
    ones first: when that copy fails, nothing changes)."""
    directory = plan.bset.directory
    # The safety backup takes the lock again: it is re-entrant within this process.
    with catalog.locked(directory, timeout=cfg.lock_timeout, what="restore"):
        safety = None
        if plan.state.exists and cfg.restore.safety_backup:
            m = plan.bset.manifest
            sealed = list(m.encryption.recipients) if m and m.encryption else []
            rewritten = m.attachments.buckets if m and m.attachments and plan.storage else []
            safety = safety_backup(
                cfg, plan.conn, directory, sealed, storage=plan.storage, buckets=rewritten
            )
            on_safety(safety)
        replace_database(cfg, ui, plan.bset, plan.conn, plan.psql, plan.state)
        if plan.storage:
            _put_storage_back(cfg, plan, ui, safety)


def _put_storage_back(
    cfg: PgvaultConfig, plan: RestorePlan, ui: Listener, safety: str | None
) -> None:
    """Put the set's Storage objects back, after the database was replaced: a failure is
    one line that says so, where Storage's objects as they were are, and how to finish."""
    from pgvault import attachments

    try:
        attachments.restore_part(cfg, plan.bset, ui, cfg.encryption.identity)
    except (OSError, tarfile.TarError, EOFError, PgvaultError) as e:
        damaged = isinstance(e, (tarfile.TarError, EOFError, IntegrityError))
        if isinstance(e, PgvaultError):
            why = e.what
        elif damaged:  # let through by force=true
            why = f"the attachments part of {plan.bset.prefix} is not a readable tar: {e}"
        else:
            why = f"{type(e).__name__}: {e}"
        if damaged:
            hint = "the set's attachments part is damaged: run the restore again with another set"
        elif isinstance(e, PgvaultError) and e.hint:
            hint = f"{e.hint}; then run the restore again"
        elif isinstance(e, OSError) and e.errno == errno.ENOSPC:
            hint = "set TMPDIR to a disk with room, then run the restore again"
        else:
            hint = "run the restore again"
        before = (
            f"the safety backup {safety} in {plan.bset.directory} holds Storage's objects as "
            "they were"
            if safety
            else "no safety backup holds Storage's objects as they were"
        )
        raise StorageNotRestored(
            f"{plan.conn.dbname} at {plan.conn.where} was restored from {plan.bset.prefix}, "
            f"but putting its Supabase Storage objects back failed, so Storage may be only "
            f"partly restored: {why}; {before}",
            f"{hint} to finish it",
        ) from None


def restore_conn(cfg: PgvaultConfig) -> Conn:
    """The database to replace: restore.target (a URL, or a database name on the
    configured target's server), else the configured target."""
    other = cfg.restore.target
    if other and ("://" in other or "=" in other):
        return conn_from_url(other, what="restore.target")
    conn = conn_for_target(cfg.target)
    return conn.with_dbname(other) if other else conn


@dataclass(frozen=True)
class TargetState:
    """The database a restore replaces, as found before anything changes."""

    major: int
    version: str
    exists: bool
    warning: str | None = None  # a plain set going into a Supabase database


def inspect_target(conn: Conn, create: bool, profile: str) -> TargetState:
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
            warning = None
            if profile == Profile.plain.value and target_is_supabase:
                warning = (
                    f"{conn.dbname} is a Supabase database and this set was made with the plain "
                    "profile: the restore replaces Supabase's schemas too and needs a superuser"
                )
            return TargetState(*_version(pg), True, warning)
    except DatabaseMissing as e:
        if not create:
            raise DatabaseMissing(
                e.what, "create it, or pass restore.create_database=true"
            ) from None
    with connect(conn.with_dbname("postgres"), autocommit=True) as pg:
        return TargetState(*_version(pg), False)


def _version(pg: Any) -> tuple[int, str]:
    row = pg.execute("SHOW server_version").fetchone()
    return int(pg.info.server_version) // 10000, str(row[0])


def confirmed(cfg: PgvaultConfig, question: str, ask: Callable[[str], str] = input) -> bool:
    """Apply the confirm policy. Without a terminal it refuses rather than hang (cron)."""
    policy = cfg.restore.confirm
    if policy is Confirm.never or (policy is Confirm.tty and cfg.restore.yes):
        return True
    if sys.stdin is None or not sys.stdin.isatty():
        raise Refused(
            "restore needs a confirmation and there is no terminal to ask on",
            "pass yes=true to restore without asking"
            if policy is Confirm.tty
            else "restore.confirm=always: run it on a terminal",
        )
    try:
        answer = ask(question)
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def safety_backup(
    cfg: PgvaultConfig,
    conn: Conn,
    directory: Path,
    recipients: list[str] | None = None,
    *,
    storage: bool = False,
    buckets: Sequence[str] = (),
) -> str:
    """Back up the database about to be replaced into directory; return its prefix. It is
    encrypted to encryption.recipients, else to recipients (the restored set's: whoever
    restores an encrypted set holds a key that opens its safety backup too). storage: the
    restore will overwrite and delete objects in target.storage, so the safety backup
    copies them too (backup.attachments=true): those of the database's storage.buckets
    rows and of buckets, the restored set's (which the restore rewrites whatever the
    database about to be replaced lists)."""
    from pgvault.backup import take_backup

    # The password rides along in memory only: conn_from_url takes it out again.
    info = conn.conninfo
    if conn.password is not None:
        info = make_conninfo(info, password=conn.password)
    target = TargetConfig(name=cfg.target.name, url=info or None)
    if storage:
        target = replace(target, storage=cfg.target.storage)
    # Storage's objects exactly when the restore changes them (a backup.attachments=true
    # of the configured target must not make a scratch restore copy the live buckets).
    options = replace(cfg.backup, attachments=storage)
    sub = replace(cfg, dir=str(directory), target=target, backup=options, quiet=True)
    if recipients and not cfg.encryption.recipients:
        sub = replace(sub, encryption=replace(cfg.encryption, recipients=recipients))
    # No retention here: it could delete the very set being restored.
    try:
        result = take_backup(
            sub, Silent(), apply_retention=False, kind="safety", buckets=buckets if storage else ()
        )
    except PgvaultError as e:
        raise PgvaultError(
            f"the safety backup of {conn.dbname} failed, nothing was restored: {e.what}",
            (f"{e.hint}, " if e.hint else "") + "or pass restore.safety_backup=false",
        ) from None
    return result.prefix


def replace_database(
    cfg: PgvaultConfig, ui: Listener, bset: BackupSet, conn: Conn, psql: str, state: TargetState
) -> None:
    """Replace conn's database with bset in one transaction. A database this creates is
    loaded under a partial name and renamed when complete, so a restore killed midway
    never leaves an empty or half-made database under the name asked for."""
    wait_ms = locks.milliseconds(cfg.restore.table_lock_timeout)
    if state.exists:
        try:
            load_set(
                bset, conn, psql, state.major, strict=not cfg.restore.force, progress=ui,
                lock_timeout_ms=wait_ms, identity=cfg.encryption.identity,
            )  # fmt: skip
        except RestoreFailed as e:
            if not locks.is_lock_timeout(e.detail):
                raise
            gave_up = locks.gave_up(
                f"restore failed, {conn.dbname} is unchanged: it",
                cfg.restore.table_lock_timeout,
                locks.held_by_others(conn),
                "restore.table_lock_timeout",
            )
            raise gave_up from None
        return
    partial = conn.with_dbname(partial_name(conn.dbname))
    _drop_leftover(partial, conn.dbname)
    _create_database(partial, conn)
    try:
        load_set(
            bset, partial, psql, state.major, strict=not cfg.restore.force, progress=ui,
            identity=cfg.encryption.identity,
        )  # fmt: skip
        _rename_database(partial, conn)
    except BaseException as e:
        dropped = _drop_database(ui, partial, state.major)
        if dropped and isinstance(e, RestoreFailed):
            raise RestoreFailed(
                f"restore failed, the new database {conn.dbname} was dropped again",
                e.detail,
                e.hint,
            ) from None
        raise


def partial_name(dbname: str) -> str:
    """The name a new database is loaded under: recognisably pgvault's and the target's,
    unique per target name, within PostgreSQL's 63 bytes."""
    digest = hashlib.sha256(dbname.encode()).hexdigest()[:8]
    head = dbname.encode()[:36].decode("utf-8", "ignore")
    return f"{head}.pgvault-partial-{digest}"


def _marker(dbname: str) -> str:
    return f"pgvault: partial restore into {dbname}"


def _create_database(partial: Conn, final: Conn) -> None:
    """Create the partial database, marked as pgvault's so a later run may remove it."""
    name = sql.Identifier(partial.dbname)
    with connect(final.with_dbname("postgres"), autocommit=True) as pg:
        try:
            pg.execute(sql.SQL("CREATE DATABASE {}").format(name))
            pg.execute(
                sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    name, sql.Literal(_marker(final.dbname))
                )
            )
        except psycopg.Error as e:
            raise PgvaultError(
                f"cannot create database {final.dbname}: {_first_line(e)}",
                f"create it yourself, or restore as a role with CREATEDB (not {final.user})",
            ) from None


def _rename_database(partial: Conn, final: Conn) -> None:
    """Give the loaded database its name and drop the mark, both or neither."""
    with connect(final.with_dbname("postgres")) as pg:
        try:
            pg.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(partial.dbname), sql.Identifier(final.dbname)
                )
            )
            pg.execute(
                sql.SQL("COMMENT ON DATABASE {} IS NULL").format(sql.Identifier(final.dbname))
            )
            pg.commit()
        except psycopg.Error as e:
            raise PgvaultError(
                f"the restored database could not be renamed to {final.dbname}: {_first_line(e)}",
                "check that nobody created that database meanwhile, then restore again",
            ) from None


def _drop_leftover(partial: Conn, dbname: str) -> None:
    """Remove what a killed restore into dbname left: the partial database, when it
    carries pgvault's mark, or holds nothing at all (killed before the mark was set). A
    restore still loading into it keeps it (the drop fails)."""
    with connect(partial.with_dbname("postgres"), autocommit=True) as pg:
        row = pg.execute(
            "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_catalog.pg_database"
            " WHERE datname = %s",
            (partial.dbname,),
        ).fetchone()
        if row is None:
            return
        if row[0] != _marker(dbname) and not _holds_nothing(partial):
            raise Refused(
                f"a database named {partial.dbname} exists and is not pgvault's",
                "rename or drop it; pgvault loads a new database under that name first",
            )
        try:
            pg.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(partial.dbname)))
        except psycopg.Error as e:
            raise Refused(
                f"another restore into {dbname} seems to be running: {_first_line(e)}",
                "wait for it to finish",
            ) from None


def _holds_nothing(conn: Conn) -> bool:
    from pgvault.scratch import USER_OBJECTS

    with connect(conn, autocommit=True) as pg:
        row = pg.execute(USER_OBJECTS).fetchone()
    return row is not None and row[0] == 0


def _drop_database(ui: Listener, conn: Conn, server_major: int) -> bool:
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
