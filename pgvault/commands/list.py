"""`pgvault list`: the sets in dir, newest first, as text or JSON.

It only reads: no lock, nothing created. check=true also reads every file and exits 1
when a set needs a look, so cron and CI can act on it.
"""

from __future__ import annotations

from pgvault import catalog, listing
from pgvault.commands import Context, Outcome
from pgvault.config import OutputFormat, PgvaultConfig
from pgvault.errors import IntegrityError, NotFound
from pgvault.ui import Reporter


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    directory = catalog.backup_dir(cfg.dir, create=False)
    if not directory.exists():
        raise NotFound(
            f"{directory} does not exist",
            "check dir= or BACKUP_DIR; the first backup creates it",
        )
    opts = cfg.list
    views = listing.view_directory(directory, check=opts.check)
    now = ctx.clock()
    if opts.format is OutputFormat.json:
        emit(ui, listing.render_json(directory, views, now, opts.check))
    elif not views:
        emit(ui, f"No backups found in {directory}.")
    else:
        emit(ui, listing.render_text(directory, views, now, opts.check))
    bad = [v.prefix for v in views if v.status in ("incomplete", "damaged")]
    if opts.check and bad:
        raise IntegrityError(
            f"{len(bad)} set(s) need a look: {', '.join(bad[:3])}"
            + (" ..." if len(bad) > 3 else ""),
            "see the list above; `pgvault prune` keeps them for you to check",
        )
    return Outcome(size_bytes=sum(f.size for v in views for f in v.on_disk))


def emit(ui: Reporter, text: str) -> None:
    """Print a command's answer as it is: not chatter, so quiet does not hide it; and
    written straight to the console's file, as rich takes ~0.3 s to lay out 1,000 sets."""
    ui.out.file.write(text + "\n")
    ui.out.file.flush()
