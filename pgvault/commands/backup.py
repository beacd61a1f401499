"""`pgvault backup`: write a set, apply retention, optionally verify it; report."""

from __future__ import annotations

from dataclasses import replace

from pgvault import naming
from pgvault.backup import BackupResult, take_backup
from pgvault.commands import Context, Outcome, prune
from pgvault.config import PgvaultConfig
from pgvault.ui import Reporter, mb


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    result = take_backup(cfg, ui, env_name=ctx.env, clock=ctx.clock)
    report(ui, result)
    verified = None
    if cfg.backup.verify:  # a mismatch raises VerifyMismatch: the run ends verified=False
        from pgvault.commands import verify

        one = replace(cfg.verify, prefix=str(result.directory / result.prefix), all=False)
        verified = verify.run(replace(cfg, verify=one), ui, ctx).verified
    manifest = result.set.manifest
    rows = sum(t.rows for t in manifest.tables.values()) if manifest is not None else None
    return Outcome(result.prefix, result.set.size, rows=rows, verified=verified)


def report(ui: Reporter, result: BackupResult) -> None:
    ui.ok("Backup completed successfully!")
    ui.say("Files created:")
    bset = result.set
    assert bset.manifest is not None
    for kind, entry in bset.manifest.files.items():
        note = " (Supabase's own schema, for verify)" if kind == naming.PLATFORM else ""
        ui.say(f"  - {entry.name} ({mb(entry.size)}){note}")
    ui.say(f"Total size: {mb(bset.size)}")
    ui.say(f"Location: {result.directory}")
    if result.pruned is not None:
        prune.report(ui, result.pruned)
