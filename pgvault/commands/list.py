"""`pgvault list`: the sets in dir, newest first, as text or JSON.

It only reads: no lock, nothing created. check=true also reads every file and exits 1
when a set needs a look, so cron and CI can act on it. remote=true lists remote.url's
sets (their manifests are read from a private temp dir; check=true streams each file).
"""

from __future__ import annotations

from pathlib import Path

from pgvault import catalog, listing
from pgvault.commands import Context, Outcome
from pgvault.config import OutputFormat, PgvaultConfig
from pgvault.errors import ConfigError, IntegrityError, NotFound
from pgvault.ui import Reporter


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    if cfg.list.remote:
        return run_remote(cfg, ui, ctx)
    directory = catalog.backup_dir(cfg.dir, create=False)
    if not directory.exists():
        raise NotFound(
            f"{directory} does not exist",
            "check dir= or BACKUP_DIR; the first backup creates it",
        )
    views = listing.view_directory(directory, check=cfg.list.check)
    return show(cfg, ui, ctx, directory, views)


def run_remote(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    import tempfile

    from pgvault import remote

    if not cfg.remote.url:
        raise ConfigError(
            "remote=true but no remote.url is configured",
            "set remote.url=s3://bucket/prefix (or file:///abs/path), or leave remote=true out",
        )
    rem = remote.open_remote(cfg.remote)
    with tempfile.TemporaryDirectory(prefix="pgvault-list-") as cache:
        views = remote.remote_sets(rem, Path(cache))
        if cfg.list.check:
            for s in views:
                if s.status == "complete" and (problem := remote.check_checksums(rem, s)):
                    s.status, s.problem = "damaged", problem
        # The renderers print the directory as given: here the remote's URL (a Path
        # would turn s3://b into s3:/b).
        return show(cfg, ui, ctx, rem.url, views)


def show(
    cfg: PgvaultConfig,
    ui: Reporter,
    ctx: Context,
    directory: Path | str,
    views: list[catalog.BackupSet],
) -> Outcome:
    """Print the sets as cfg.list asks; IntegrityError after check=true found a problem."""
    opts = cfg.list
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
