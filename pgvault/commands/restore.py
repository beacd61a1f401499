"""`pgvault restore`: check a set, show what will happen, confirm, take a safety backup,
then replace the target database in one transaction."""

from __future__ import annotations

import time

from pgvault import naming
from pgvault.commands import Context, Outcome
from pgvault.config import PgvaultConfig, Profile
from pgvault.errors import Refused
from pgvault.profiles import Plan
from pgvault.restore import RestorePlan, apply_restore, confirmed, plan_restore
from pgvault.ui import Reporter, mb


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    """Everything is checked before anything changes; the replace is one transaction."""
    plan = plan_restore(cfg, ctx.env)
    for problem in plan.problems:
        ui.warn(f"{problem}; restoring anyway (force=true)")
    if plan.state.warning:
        ui.warn(plan.state.warning)
    summary(ui, plan, cfg.restore.safety_backup)
    conn, prefix = plan.conn, plan.bset.prefix
    question = f"Replace database {conn.dbname} at {conn.where} with {prefix}? (y/N) "
    if not confirmed(cfg, question, ctx.ask):
        # Not a success: a script that goes on after `pgvault restore` must not think so.
        raise Refused("Restore cancelled.", "nothing was changed")
    started = time.monotonic()

    def safety_taken(safety: str) -> None:
        ui.ok(f"Safety backup of {conn.dbname}: {safety} (in {plan.bset.directory})")

    apply_restore(cfg, plan, ui, safety_taken)
    ui.ok(
        f"Restore completed successfully! {conn.dbname} at {conn.where} now holds {prefix} "
        f"(PostgreSQL {plan.state.version}, {time.monotonic() - started:.1f} s)"
    )
    return Outcome(prefix, plan.bset.size)


def summary(ui: Reporter, plan: RestorePlan, safety: bool) -> None:
    bset, conn, state = plan.bset, plan.conn, plan.state
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
    ui.say("")
