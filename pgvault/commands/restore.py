"""`pgvault restore`: check a set, show what will happen, confirm, take a safety backup,
then replace the target database in one transaction.

A set from the remote (remote=true, a remote URL as prefix, or a set name dir lacks) is
first staged and checked by pgvault.fetch, then restored like a local one; its safety
backup goes into dir as always."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from pgvault import catalog, fetch, naming
from pgvault.commands import Context, Outcome
from pgvault.config import PgvaultConfig, Profile
from pgvault.errors import ConfigError, Refused
from pgvault.profiles import Plan
from pgvault.restore import RestorePlan, apply_restore, confirmed, plan_restore
from pgvault.ui import Reporter, mb


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    """Everything is checked before anything changes; the replace is one transaction."""
    opts = cfg.restore
    if not fetch.wanted(cfg, opts.prefix, opts.remote, ui):
        return restore(cfg, ui, ctx)
    if not opts.allowed:
        plan_restore(cfg, ctx.env)  # refuses at once, before any download
    safety_dir = safety_dir_for(cfg) if opts.safety_backup else None
    with fetch.fetching(cfg, ui, opts.prefix, allow_damaged=opts.force) as got:
        staged = str(got.bset.directory / got.bset.prefix)
        local = replace(cfg, restore=replace(opts, prefix=staged))
        return restore(local, ui, ctx, origin=got.where, safety_dir=safety_dir)


def safety_dir_for(cfg: PgvaultConfig) -> Path:
    """Where a restore from the remote puts its safety backup: dir, checked before the
    download rather than found missing after it."""
    if not cfg.dir:
        raise ConfigError(
            "a restore from the remote takes its safety backup into dir, and no dir is set",
            "pass dir=/abs/path (or export BACKUP_DIR), or restore.safety_backup=false",
        )
    return catalog.backup_dir(cfg.dir, create=False)


def restore(
    cfg: PgvaultConfig,
    ui: Reporter,
    ctx: Context,
    *,
    origin: str | None = None,
    safety_dir: Path | None = None,
) -> Outcome:
    """Restore the set cfg.restore.prefix names. origin: the remote set it is a staged
    copy of (then safety_dir, not the staging dir, receives the safety backup)."""
    plan = plan_restore(cfg, ctx.env)
    for problem in plan.problems:
        ui.warn(f"{problem}; restoring anyway (force=true)")
    if plan.state.warning:
        ui.warn(plan.state.warning)
    summary(ui, plan, cfg.restore.safety_backup, origin)
    storage_summary(ui, cfg, plan)
    conn, prefix = plan.conn, plan.bset.prefix
    question = f"Replace database {conn.dbname} at {conn.where} with {prefix}? (y/N) "
    if not confirmed(cfg, question, ctx.ask):
        # Not a success: a script that goes on after `pgvault restore` must not think so.
        raise Refused("Restore cancelled.", "nothing was changed")
    started = time.monotonic()

    def safety_taken(safety: str) -> None:
        ui.ok(f"Safety backup of {conn.dbname}: {safety} (in {plan.bset.directory})")

    if safety_dir is not None and plan.state.exists:
        # apply_restore locks the set's directory and takes the safety backup into it:
        # for a staged copy that is dir, never the staging dir removed afterwards. The
        # files keep their staged paths, and nothing else reads the directory.
        catalog.backup_dir(cfg.dir, create=True)
        plan = replace(plan, bset=replace(plan.bset, directory=safety_dir))
    apply_restore(cfg, plan, ui, safety_taken)
    ui.ok(
        f"Restore completed successfully! {conn.dbname} at {conn.where} now holds {prefix} "
        f"(PostgreSQL {plan.state.version}, {time.monotonic() - started:.1f} s)"
    )
    return Outcome(prefix, plan.bset.size)


def summary(ui: Reporter, plan: RestorePlan, safety: bool, origin: str | None = None) -> None:
    bset, conn, state = plan.bset, plan.conn, plan.state
    m = bset.manifest
    assert m is not None
    ui.say(
        f"Restoring from backup: {bset.prefix}"
        + (" (a safety backup)" if m.kind == "safety" else "")
    )
    if origin is None:
        ui.say(f"Backup directory: {bset.directory}")
    else:
        ui.say(f"From the remote: {origin} (checked, staged in {bset.directory})")
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
    if source != conn.dbname or (m.server is not None and m.server != conn.where):
        origin = f"{source} at {m.server}" if m.server else source
        ui.say(
            f"   Note: the set is of database {origin}; it goes into {conn.dbname} at {conn.where}."
        )
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


def storage_summary(ui: Reporter, cfg: PgvaultConfig, plan: RestorePlan) -> None:
    """What the restore does to Supabase Storage, said before it asks: it overwrites and
    deletes objects outside the database's transaction."""
    m = plan.bset.manifest
    att = m.attachments if m is not None else None
    if att is not None and plan.storage:
        buckets = ", ".join(att.buckets) or "none"
        size = mb(sum(o.size for o in att.objects))
        ui.say(
            f"⚠️  Supabase Storage at {cfg.target.storage.endpoint} is changed too: buckets "
            f"{buckets} get the set's {len(att.objects)} objects ({size})."
        )
        ui.say("   Objects not in the set are DELETED from those buckets; other buckets stay.")
        if cfg.restore.safety_backup and plan.state.exists:
            ui.say(
                "   The safety backup copies the objects in those buckets first (and in the "
                "buckets of the database's storage.buckets rows)."
            )
        else:
            ui.say("   No safety backup copies the objects there now.")
    elif att is not None:
        from pgvault import attachments

        ui.say(
            attachments.skipped(cfg, plan.bset)
            or "Storage objects not put back (restore.attachments=false)."
        )
    ui.say("")
