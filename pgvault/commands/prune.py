"""`pgvault prune`: apply the retention policy now, or with dry_run=true show each set's fate.

The policy applies to each source database's sets apart (retention.decide_by_source);
incomplete=true also deletes incomplete sets untouched for over a day."""

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
    opts = cfg.prune

    def apply() -> retention.PruneResult:
        return retention.prune(
            directory, cfg.retention, now=ctx.clock(), dry_run=opts.dry_run, check=opts.check,
            incomplete=opts.incomplete,
        )  # fmt: skip

    try:
        if opts.dry_run:  # reads only, like list: no lock, so it works on a read-only dir
            result = apply()
        else:
            with catalog.locked(directory, timeout=cfg.lock_timeout, what="prune"):
                result = apply()
    except OSError as e:
        raise PgvaultError(
            f"cannot prune {directory}: {e.strerror}", "check the directory's permissions"
        ) from e
    policy = policy_text(cfg.retention) + ("; incomplete=true" if opts.incomplete else "")
    if opts.dry_run:
        ui.say(f"Retention in {directory} ({policy}), dry run:")
    for line in decision_lines(result):
        ui.say(line)
    report(ui, result)
    if not opts.incomplete and any(
        d.flagged and "incomplete" in d.reason for d in result.decisions
    ):
        ui.say("(incomplete=true deletes incomplete sets untouched for over a day)")
    return Outcome()


def decision_lines(result: retention.PruneResult) -> list[str]:
    """One line per set and why: every set in a dry run, the deleted ones otherwise;
    under a heading per source when the directory holds more than one."""
    groups: dict[str, list[retention.Decision]] = {}
    for d in result.decisions:  # newest first: the source of the newest set leads
        groups.setdefault(d.source, []).append(d)
    indent = "    " if len(groups) > 1 else "  "
    lines = []
    for source, decisions in groups.items():
        shown = [d for d in decisions if result.dry_run or not d.keep]
        if shown and len(groups) > 1:
            lines.append(f"  {source}:")
        for d in shown:
            verb = ("keep" if d.keep else "delete") if result.dry_run else "deleted"
            lines.append(f"{indent}{verb:7} {d.prefix}  {d.reason}")
    return lines


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
    of = f" for {result.scope}" if result.scope else ""  # a backup prunes its source only
    if result.deleted_incomplete:
        of += f", {len(result.deleted_incomplete)} of them incomplete"
    if result.dry_run:
        ui.ok(f"Dry run: would clean up {n} old backup set(s) ({files} files){of}; deleted nothing")
    elif n:
        ui.ok(f"Cleaned up {n} old backup set(s) ({files} files){of}")
    else:
        ui.ok(f"No old backups to clean up{of}")
