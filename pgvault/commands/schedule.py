"""`pgvault schedule`: print the daily backup's scheduler entry for this machine;
install=true installs it, uninstall=true removes it (pgvault.schedule does the work)."""

from __future__ import annotations

from pgvault import schedule
from pgvault.commands import Context, Outcome
from pgvault.config import PgvaultConfig
from pgvault.ui import Reporter


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    schedule.execute(cfg, ui, ctx.env, target_group=ctx.target_group, overrides=ctx.overrides)
    return Outcome()
