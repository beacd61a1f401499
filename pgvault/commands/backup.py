"""`pgvault backup`: write a set, apply retention, optionally verify it, upload it
(remote.url with remote.upload); report."""

from __future__ import annotations

import contextlib
from dataclasses import replace

from pgvault import naming
from pgvault.backup import BackupResult, take_backup
from pgvault.commands import Context, Outcome, prune
from pgvault.config import PgvaultConfig
from pgvault.errors import PgvaultError
from pgvault.ui import Reporter, mb


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    upload = bool(cfg.remote.url) and cfg.remote.upload
    if cfg.remote.url:
        from pgvault import offsite, remote

        # Uploaded now or by a later push: the roles file goes off-site as it is.
        offsite.warn_unencrypted(cfg, ui)
        if upload:  # a bad remote.url or policy is refused before the backup starts
            remote.open_remote(cfg.remote)
            offsite.remote_policy(cfg)
    with contextlib.ExitStack() as stack:
        if upload and cfg.remote.lease:  # one run at a time per remote, on any machine
            from pgvault import lease
            from pgvault.s3 import RemoteError

            where = remote.open_remote(cfg.remote)
            held = lease.held(where, ttl=cfg.remote.lease_ttl, what="backup", wait=cfg.lock_timeout)
            # A remote that cannot be reached must not cost the local set: the upload
            # then fails with its own line (and takes the lease itself if it can).
            with contextlib.suppress(RemoteError):
                stack.enter_context(held)
        result = take_backup(cfg, ui, env_name=ctx.env, clock=ctx.clock)
        report(ui, result)
        verified = None
        if cfg.backup.verify:  # a mismatch raises VerifyMismatch: the run ends verified=False
            from pgvault.commands import verify

            one = replace(cfg.verify, prefix=str(result.directory / result.prefix), all=False)
            verified = verify.run(replace(cfg, verify=one), ui, ctx).verified
        if upload:
            upload_sets(cfg, ui, ctx, result)
    manifest = result.set.manifest
    rows = sum(t.rows for t in manifest.tables.values()) if manifest is not None else None
    return Outcome(result.prefix, result.set.size, rows=rows, verified=verified)


def upload_sets(cfg: PgvaultConfig, ui: Reporter, ctx: Context, result: BackupResult) -> None:
    """Push the new set (and any an earlier upload missed). A failure leaves the local
    sets as they are, and ends the run with an error worded after what failed: the new
    set, or only an older one."""
    from pgvault import offsite
    from pgvault.commands import push
    from pgvault.s3 import RemoteError

    pushed = offsite.PushResult()
    try:
        offsite.push(cfg, ui, result.directory, now=ctx.clock(), result=pushed)
    except PgvaultError as e:
        new = result.prefix
        if pushed.uploaded:
            push.report(ui, pushed)
        if new in pushed.uploaded:  # only an older set (or the remote's clean-up) failed
            raise type(e)(f"{new} was uploaded to {pushed.url}, but: {e.what}", e.hint) from None
        cause = pushed.failed.get(new, e)
        hint = cause.hint
        if not isinstance(cause, offsite.NameTaken):  # pushing again would not help
            again = "the local set is intact: `pgvault push` uploads it"
            hint = f"{hint}; {again}" if hint else again
        raise RemoteError(
            f"{new} was written to {result.directory} but not uploaded: {cause.what}", hint
        ) from None
    push.report(ui, pushed)


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
