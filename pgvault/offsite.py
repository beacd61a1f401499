"""Off-site copies: `push` uploads every complete local set the remote lacks, then applies
the remote's own retention policy to each source's sets there.

The remote is listed first; then, with the local directory locked, the sets to upload
are chosen and their files opened; the lock is let go before the upload (a nightly
backup must not fail because a long push is running), which reads from the open
descriptors: retention may delete a file meanwhile, its bytes stay readable.
A set goes up file by file, each hashed as it is sent and kept remotely only when that is
the manifest's sha256 (remote.py), then confirmed by size in a fresh listing and by the
sha256 the remote holds for it; its manifest goes last, so a set counts as off-site only
once whole. An upload cut short leaves no manifest: the set reads as incomplete there and
the next push completes it.

Names are the sets' times, so two machines pushing to one prefix can pick the same name.
A local set counts as off-site only when the remote's manifest is byte for byte its own;
a different manifest under its name is another set, never overwritten (that set fails,
the others still go up). A name with files but no manifest remotely is an upload cut
short, ours or someone's: it is completed (overwritten) by whoever holds the set.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from pgvault import catalog, lease, masking, naming, remote, retention, runstate
from pgvault import offsite_upload as sending
from pgvault.catalog import BackupSet
from pgvault.config import PgvaultConfig, RemoteRetentionConfig, RetentionConfig
from pgvault.errors import ConfigError, IntegrityError, PgvaultError
from pgvault.listener import Listener
from pgvault.offsite_upload import NameTaken as NameTaken

# Sets whose files are held open at once (about five descriptors each); more sets go up
# in further rounds, each opening its files under the lock again.
BATCH = 64
LEFTOVER = "an upload cut short over a day ago, of a set no longer in the local directory"
_DAY = retention.STALE_AFTER.total_seconds()


def merged_policy(local: RetentionConfig, own: RemoteRetentionConfig) -> RetentionConfig:
    """The remote's policy: each key of remote.retention that is set, else the local
    retention's value."""
    values = {}
    for f in fields(RetentionConfig):
        mine = getattr(own, f.name)
        values[f.name] = getattr(local, f.name) if mine is None else mine
    return RetentionConfig(**values)


def remote_policy(cfg: PgvaultConfig) -> RetentionConfig:
    policy = merged_policy(cfg.retention, cfg.remote.retention)
    try:
        retention.check_policy(policy)
    except ConfigError as e:
        raise ConfigError(
            f"the remote's policy: {e.what}", e.hint + "; remote.retention.* overrides it"
        ) from None
    return policy


@dataclass
class PushResult:
    url: str = ""
    dry_run: bool = False
    uploaded: list[str] = field(default_factory=list)
    uploaded_bytes: int = 0
    uploaded_files: int = 0
    already: int = 0  # local sets complete on the remote (the same manifest) before
    # Local sets not uploaded because the remote's policy would delete them at once.
    skipped: list[str] = field(default_factory=list)
    # Local sets that could not go up (the others still did): prefix -> why.
    failed: dict[str, PgvaultError] = field(default_factory=dict)
    decisions: list[retention.Decision] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    deleted_files: int = 0
    # The configured target's newest complete set on the remote, after the run.
    newest: BackupSet | None = None


_warned = False


def warn_unencrypted(cfg: PgvaultConfig, ui: Listener) -> None:
    """Once per run: the roles file holds password hashes, and goes off-site as it is."""
    global _warned
    if _warned or cfg.encryption.recipients or not cfg.remote.url:
        return
    _warned = True
    ui.warn(
        "sets go to the remote unencrypted: their roles file holds the roles' password "
        "hashes (set encryption.recipients=[age1...] to encrypt them)"
    )


@contextlib.contextmanager
def _cache() -> Iterator[Path]:
    """A private directory (0700) for the remote's manifests, gone afterwards."""
    with tempfile.TemporaryDirectory(prefix="pgvault-remote-") as tmp:
        yield Path(tmp)


def push(
    cfg: PgvaultConfig,
    ui: Listener,
    directory: Path,
    *,
    now: datetime | None = None,
    result: PushResult | None = None,
) -> PushResult:
    """Upload the complete sets of directory the remote lacks (newest first), then apply
    the remote's policy (cfg.push.prune). result, when given, is filled in as the run
    goes (callers see what went up before an error). Records the outcome in the state
    file, whatever ends the run (not in a dry run). Raises when an upload fails, or at
    the end when a set could not go up: the local sets are untouched."""
    rem = remote.open_remote(cfg.remote)
    policy = remote_policy(cfg)
    now = now or datetime.now(UTC)
    warn_unencrypted(cfg, ui)
    result = result if result is not None else PushResult()
    result.url, result.dry_run = rem.url, cfg.push.dry_run
    if result.dry_run:
        with _cache() as cache:
            _run(cfg, ui, rem, directory, cache, policy, now, result)
        return result
    try:
        # Held already when a backup uploads its set: renewed for the upload then.
        held = (
            lease.held(rem, ttl=cfg.remote.lease_ttl, what="push", wait=cfg.lock_timeout)
            if cfg.remote.lease else contextlib.nullcontext()
        )  # fmt: skip
        with held, _cache() as cache:
            _run(cfg, ui, rem, directory, cache, policy, now, result)
        if result.failed:
            raise _failure(result.failed)
    except BaseException as e:  # Ctrl-C, SIGTERM and bugs too: never a stale "success"
        _record(directory, cfg, rem.url, result.newest, error=_describe(e))
        raise
    _record(directory, cfg, rem.url, result.newest)
    return result


def _describe(e: BaseException) -> str:
    if isinstance(e, PgvaultError):
        return masking.mask(e.line())
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (Ctrl-C or SIGTERM)"
    return masking.mask(f"{type(e).__name__}: {e}")


def _failure(failed: dict[str, PgvaultError]) -> PgvaultError:
    (prefix, first), *more = failed.items()
    if not more:
        return type(first)(f"{prefix} was not uploaded: {first.what}", first.hint)
    names = ", ".join(list(failed)[:3]) + (", ..." if len(failed) > 3 else "")
    return type(first)(
        f"{len(failed)} sets were not uploaded ({names}): see the warnings above",
        first.hint,
    )


def _fail(ui: Listener, result: PushResult, prefix: str, e: PgvaultError) -> None:
    result.failed[prefix] = e
    ui.warn(f"{prefix} not uploaded: {e.line()}")


@dataclass
class Plan:
    up: list[BackupSet]  # to upload, newest first
    matched: list[BackupSet]  # whole on the remote with the same manifest
    manifest_sha256: dict[str, str]  # prefix -> the local manifest's sha256
    held: set[str]  # every prefix the local directory holds, complete or not
    decisions: list[retention.Decision]  # the remote's policy as if up were up
    leftovers: dict[str, str]  # incomplete remote sets to delete: prefix -> why


def _run(
    cfg: PgvaultConfig,
    ui: Listener,
    rem: remote.Remote,
    directory: Path,
    cache: Path,
    policy: RetentionConfig,
    now: datetime,
    result: PushResult,
) -> None:
    before = sending.scan(rem, cache)  # the network first: the lock is held only briefly

    def fail(prefix: str, e: PgvaultError) -> None:
        _fail(ui, result, prefix, e)

    def done(o: sending.Opened, sent: int) -> None:
        result.uploaded.append(o.bset.prefix)
        result.uploaded_files += sent
        result.uploaded_bytes += o.bset.size

    lock: AbstractContextManager[None] = (
        contextlib.nullcontext()  # reads only, like prune's
        if result.dry_run
        else catalog.locked(directory, timeout=cfg.lock_timeout, what="push")
    )
    with contextlib.ExitStack() as held:
        with lock:
            local = catalog.scan(directory)
            plan = _plan(cfg, ui, before, local, cache, policy, now, result)
            if result.dry_run:
                _dry(cfg, plan, result)
                return
            opened = sending.open_sets(ui, held, plan.up[:BATCH], plan.manifest_sha256, fail)
            records = sending.open_records(held, plan.matched, cache, before.sizes)
        sending.upload(ui, rem, opened, before.sizes, fail, done)
        sending.send_records(rem, records)
    for start in range(BATCH, len(plan.up), BATCH):
        with contextlib.ExitStack() as held:
            with catalog.locked(directory, timeout=cfg.lock_timeout, what="push"):
                opened = sending.open_sets(
                    ui, held, plan.up[start : start + BATCH], plan.manifest_sha256, fail
                )
            sending.upload(ui, rem, opened, before.sizes, fail, done)
    after = sending.scan(rem, cache)
    sets = after.sets
    result.newest = newest_of_target(cfg, sets)  # what the record says if the prune fails
    if cfg.push.prune:
        by_prefix = {s.prefix: s for s in sets}
        leftovers = _leftovers(sets, plan.held, now, after.modified)
        result.decisions = [retention.Decision(p, False, why) for p, why in leftovers.items()]
        sets = [s for s in sets if s.prefix not in leftovers]
        result.decisions += _decide(sets, policy, now)
        for d in result.decisions:
            if not d.keep and naming.is_prefix(d.prefix):  # decide keeps the others; twice sure
                lease.check(rem.url)
                result.deleted_files += retention.delete_set(by_prefix[d.prefix], after.store)
                result.deleted.append(d.prefix)
    gone = set(result.deleted)
    result.newest = newest_of_target(cfg, [s for s in sets if s.prefix not in gone])


def _plan(
    cfg: PgvaultConfig,
    ui: Listener,
    before: sending.Scan,
    local: list[BackupSet],
    cache: Path,
    policy: RetentionConfig,
    now: datetime,
    result: PushResult,
) -> Plan:
    complete, shas = [], {}
    for s in local:
        if s.complete:
            try:
                shas[s.prefix] = sending.local_sha256(s.files["manifest"])
            except IntegrityError as e:  # unreadable (EACCES, EIO): that set fails
                _fail(ui, result, s.prefix, e)
                continue
            complete.append(s)
    theirs = {s.prefix: s for s in before.sets}
    matched, candidates = [], []
    for s in complete:
        name = s.files["manifest"].name
        if name not in before.sizes:  # nothing there, or an upload cut short: ours to do
            candidates.append(s)
        elif sending.cached_sha256(cache / name) != shas[s.prefix]:
            _fail(ui, result, s.prefix, sending.NameTaken(
                f"the remote already holds another set named {s.prefix} (from another "
                "machine or directory?)", "give each backup directory its own remote.url prefix",
            ))  # fmt: skip
        elif theirs[s.prefix].status == "complete":
            matched.append(s)
        else:  # our manifest, but a file missing or cut: completed
            candidates.append(s)
    result.already = len(matched)
    held = {s.prefix for s in local}
    going = {c.prefix for c in candidates}
    planned = [s for s in before.sets if s.prefix not in going]
    leftovers = _leftovers(planned, held, now, before.modified) if cfg.push.prune else {}
    planned = [s for s in planned if s.prefix not in leftovers]
    # Decide as if they were up already: the remote's policy keeps or drops them the
    # same way after the upload, so no set goes up only to be deleted by this very run
    # (and again by every push after it).
    decisions = _decide([*planned, *candidates], policy, now)
    keep = {d.prefix for d in decisions if d.keep}
    up = [s for s in candidates if s.prefix in keep or not cfg.push.prune]
    result.skipped = [s.prefix for s in candidates if s not in up]
    return Plan(up, matched, shas, held, decisions, leftovers)


def _dry(cfg: PgvaultConfig, plan: Plan, result: PushResult) -> None:
    result.uploaded = [s.prefix for s in plan.up]
    result.uploaded_bytes = sum(s.size for s in plan.up)
    result.uploaded_files = sum(len(_files(s)) for s in plan.up)
    if cfg.push.prune:
        gone = [retention.Decision(p, False, why) for p, why in plan.leftovers.items()]
        result.decisions = gone + plan.decisions
        result.deleted = [d.prefix for d in result.decisions if not d.keep]


def _leftovers(
    sets: list[BackupSet], held: set[str], now: datetime, modified: dict[str, float | None]
) -> dict[str, str]:
    """Remote sets an upload cut short that nothing will complete: no manifest there (none
    at all, not an unreadable one), named more than a day ago, not in the local directory
    any more, and every object of it last written more than a day ago (modified: name ->
    when, None unknown). That last rule, like local prune's mtimes, spares a set another
    push is sending right now: push uploads without the local lock, from descriptors
    opened before a local prune deleted the set. Never a set beside a file that is not
    its own (catalog.scan)."""
    out = {}
    for s in sets:
        when, names = s.time, [p.name for p in s.all_paths()]
        if (
            when is not None
            and naming.is_prefix(s.prefix)
            and "manifest" not in s.files
            and s.manifest_error is None
            and not s.extras
            and s.prefix not in held
            and now - when > retention.STALE_AFTER
            and names
            and all(_old(modified.get(n), now) for n in names)
        ):
            out[s.prefix] = LEFTOVER
    return out


def _old(modified: float | None, now: datetime) -> bool:
    return modified is not None and now.timestamp() - modified > _DAY


def _decide(
    sets: list[BackupSet], policy: RetentionConfig, now: datetime
) -> list[retention.Decision]:
    verified = {s.prefix for s in sets if retention.verification_status(s) == "verified"}
    return retention.decide_by_source(sets, policy, now, verified=verified)


def _files(s: BackupSet) -> list[str]:
    assert s.manifest is not None
    return [e.name for e in s.manifest.files.values()]


def newest_of_target(cfg: PgvaultConfig, sets: list[BackupSet]) -> BackupSet | None:
    from pgvault import status

    mine = status.of_target(cfg, sets)
    return mine[0] if mine else None


def _record(
    directory: Path, cfg: PgvaultConfig, url: str, newest: BackupSet | None, *, error: str = ""
) -> None:
    """The outcome for `pgvault status` (which must not need the network). Best effort:
    a directory the run cannot write to is the run's own error to report. A failed run's
    entry keeps the newest off-site set recorded before unless this run found one."""
    last: dict[str, object] = {"status": "failure" if error else "success",
                               "at": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    if error:
        last["error"] = error
    entry: dict[str, object] = {"url": url, "last_upload": last}
    if newest is not None or not error:
        entry["newest"] = {"prefix": newest.prefix, "size_bytes": newest.size} if newest else None
    with contextlib.suppress(OSError, PgvaultError):
        runstate.record_offsite(directory, cfg.target.name, entry)
