"""`pgvault restore`: check a set, show what will happen, confirm, take a safety backup,
then replace the target database in one transaction."""

from __future__ import annotations

import time

from pgvault import catalog, clients, naming
from pgvault.catalog import BackupSet
from pgvault.commands import Context, Outcome
from pgvault.config import PgvaultConfig, Profile
from pgvault.connection import Conn
from pgvault.errors import IntegrityError, Refused
from pgvault.load import psql_for
from pgvault.profiles import Plan
from pgvault.restore import (
    TargetState,
    confirmed,
    file_problems,
    inspect_target,
    replace_database,
    restore_conn,
    safety_backup,
)
from pgvault.ui import Reporter, mb


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    """Everything is checked before anything changes; the replace is one transaction."""
    opts = cfg.restore
    if not opts.allowed:
        raise Refused(
            f"restores are not allowed in env '{ctx.env}'",
            "pass restore.allowed=true if you really mean to restore here",
        )
    directory, prefix = catalog.resolve_prefix(opts.prefix, cfg.dir)
    bset = catalog.find_set(directory, prefix)
    problems = file_problems(bset)
    if problems and not opts.force:
        raise IntegrityError(
            f"backup set {prefix} is damaged: {problems[0]}",
            "restore another set, or pass force=true to restore it anyway",
        )
    for problem in problems:
        ui.warn(f"{problem}; restoring anyway (force=true)")
    clients.decompressor(bset.compression)  # a missing zstd/gzip fails here, not mid-way
    conn = restore_conn(cfg)
    assert bset.manifest is not None  # find_set gives a complete set
    profile = Plan.from_manifest(bset.manifest).profile
    state = inspect_target(conn, opts.create_database, profile)
    if state.warning:
        ui.warn(state.warning)
    psql = psql_for(state.major, bset.dump_major, conn.where, cfg.clients.bindir, bset.dump_version)
    summary(ui, bset, conn, state, opts.safety_backup)
    question = f"Replace database {conn.dbname} at {conn.where} with {prefix}? (y/N) "
    if not confirmed(cfg, question, ctx.ask):
        # Not a success: a script that goes on after `pgvault restore` must not think so.
        raise Refused("Restore cancelled.", "nothing was changed")
    started = time.monotonic()
    # No prune or backup meanwhile (the safety backup takes the lock again: re-entrant).
    with catalog.locked(directory, timeout=cfg.lock_timeout, what="restore"):
        if state.exists and opts.safety_backup:
            safety = safety_backup(cfg, conn, directory)
            ui.ok(f"Safety backup of {conn.dbname}: {safety} (in {directory})")
        replace_database(cfg, ui, bset, conn, psql, state)
    ui.ok(
        f"Restore completed successfully! {conn.dbname} at {conn.where} now holds {prefix} "
        f"(PostgreSQL {state.version}, {time.monotonic() - started:.1f} s)"
    )
    return Outcome(prefix, bset.size)


def summary(ui: Reporter, bset: BackupSet, conn: Conn, state: TargetState, safety: bool) -> None:
    m = bset.manifest
    assert m is not None
    ui.say(
        f"Restoring from backup: {bset.prefix}"
        + (" (a safety backup)" if m.kind == "safety" else "")
    )
    ui.say(f"Backup directory: {bset.directory}")
    ui.say("Files:")
    for entry in m.files.values():
        ui.say(f"  - {entry.name} ({mb(entry.size)})")
    ui.say(f"Total size: {mb(bset.size)}")
    when = naming.parse_prefix(bset.prefix).astimezone()
    ui.say(f"Backup date: {when:%Y-%m-%d %H:%M:%S %Z}")
    source = m.database
    where = f" at {m.server}" if m.server else ""
    ui.say(f"Source: database {source}{where} (target {m.target}, PostgreSQL {m.server_version})")
    ui.say(f"Target: database {conn.dbname} at {conn.where}" + ("" if state.exists else " (new)"))
    if source != conn.dbname:
        ui.say(f"   Note: the set is of database {source}; it goes into {conn.dbname}.")
    profile = Plan.from_manifest(m).profile
    ui.say(
        f"Profile: {profile}"
        + (
            " (the app's schemas, roles and rows; Supabase's own stay as they are)"
            if profile == Profile.supabase.value
            else ""
        )
    )
    ui.say("")
    ui.say(f"⚠️  WARNING: This will REPLACE database {conn.dbname} with the backup.")
    ui.say("   Everything in it now will be lost; roles in the backup are created or updated.")
    if safety and state.exists:
        ui.say("   A safety backup of it is taken first.")
    ui.say("")
