"""`pgvault prune`: apply the retention policy now, or with dry_run=true show each set's fate."""

from __future__ import annotations

from pgvault import catalog, retention
from pgvault.commands import Context, Outcome
from pgvault.config import PgvaultConfig, RetentionConfig
from pgvault.errors import NotFound, PgvaultError
from pgvault.ui import Reporter


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    directory = catalog.backup_dir(cfg.dir, create=False)
    retention.check_policy(cfg.retention)
    if not directory.exists():
        raise NotFound(f"{directory} does not exist", "check dir= or BACKUP_DIR")
    dry_run, check = cfg.prune.dry_run, cfg.prune.check
    try:
        if dry_run:  # reads only, like list: no lock, so it works on a read-only dir
            result = retention.prune(
                directory, cfg.retention, now=ctx.clock(), dry_run=True, check=check
            )
        else:
            with catalog.locked(directory, timeout=cfg.lock_timeout, what="prune"):
                result = retention.prune(directory, cfg.retention, now=ctx.clock(), check=check)
    except OSError as e:
        raise PgvaultError(
            f"cannot prune {directory}: {e.strerror}", "check the directory's permissions"
        ) from e
    if dry_run:
        ui.say(f"Retention in {directory} ({policy_text(cfg.retention)}), dry run:")
        for d in result.decisions:
            ui.say(f"  {'keep' if d.keep else 'delete':6}  {d.prefix}  {d.reason}")
    else:
        for prefix in result.deleted_sets:
            ui.say(f"  deleted {prefix}")
    report(ui, result)
    return Outcome()


def policy_text(r: RetentionConfig) -> str:
    """The policy's switched-on rules: "days=7, keep_last=3"."""
    names = ("days", "keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
    rules = [f"{n}={getattr(r, n)}" for n in names if getattr(r, n) > 0]
    return ", ".join(rules) or "no rules: only the newest sets are kept"


def report(ui: Reporter, result: retention.PruneResult) -> None:
    """Say what was cleaned up, and warn about every set kept because it needs a look."""
    for d in result.decisions:
        if d.flagged and not result.dry_run:  # a dry run shows every decision anyway
            ui.warn(f"{d.prefix} is {d.reason}")
    n, files = len(result.deleted_sets), result.deleted_files
    if result.dry_run:
        ui.ok(f"Dry run: would clean up {n} old backup set(s) ({files} files); deleted nothing")
    elif n:
        ui.ok(f"Cleaned up {n} old backup set(s) ({files} files)")
    else:
        ui.ok("No old backups to clean up")
