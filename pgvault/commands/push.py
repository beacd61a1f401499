"""`pgvault push`: upload the complete sets remote.url lacks, manifest last, then apply
the remote's retention policy (remote.retention, each key defaulting to retention's).
dry_run=true shows what it would upload and delete."""

from __future__ import annotations

from pgvault import catalog, offsite, remote
from pgvault.commands import Context, Outcome
from pgvault.config import PgvaultConfig
from pgvault.errors import NotFound, PgvaultError
from pgvault.ui import Reporter, mb


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    directory = catalog.backup_dir(cfg.dir, create=False)
    remote.open_remote(cfg.remote)  # bad config: refused before anything is looked at
    offsite.remote_policy(cfg)
    if not directory.exists():
        raise NotFound(f"{directory} does not exist", "check dir= or BACKUP_DIR; no backup ran")
    result = offsite.PushResult()
    try:
        offsite.push(cfg, ui, directory, now=ctx.clock(), result=result)
    except PgvaultError:
        if result.uploaded:  # what did go up before the error
            report(ui, result)
        raise
    report(ui, result)
    newest = result.newest
    return Outcome(
        prefix=newest.prefix if newest is not None else None,
        size_bytes=result.uploaded_bytes,
    )


def report(ui: Reporter, result: offsite.PushResult) -> None:
    url = result.url
    n, size = len(result.uploaded), mb(result.uploaded_bytes)
    if result.dry_run:
        ui.say(f"Push to {url}, dry run:")
        for prefix in result.uploaded:
            ui.say(f"  upload  {prefix}")
        for prefix in result.skipped:
            ui.say(f"  skip    {prefix}  the remote's policy would delete it at once")
        for d in result.decisions:
            verb = "keep" if d.keep else "delete"
            ui.say(f"  {verb:7} {d.prefix}  {d.reason}")
        ui.ok(
            f"Dry run: would upload {n} set(s) ({size}) and delete {len(result.deleted)} "
            "on the remote; changed nothing"
        )
        return
    there = f"; {result.already} already there" if result.already else ""
    if n:
        ui.ok(f"Uploaded {n} set(s) ({size}) to {url}{there}")
    else:
        ui.ok(f"Nothing to upload to {url}{there}")
    if result.skipped:
        ui.say(f"Not uploaded (the remote's policy would delete them): {', '.join(result.skipped)}")
    for d in result.decisions:
        if not d.keep:
            ui.say(f"  deleted {d.prefix} from the remote  {d.reason}")
        elif d.flagged:
            ui.say(f"  kept    {d.prefix} on the remote  {d.reason}")
    if result.deleted:
        ui.ok(
            f"Cleaned up {len(result.deleted)} old set(s) ({result.deleted_files} files) on {url}"
        )
