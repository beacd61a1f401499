"""Which sets to keep and which to delete, and why; then deleting them safely.

Retention holds per source database (sources.Source, from each set's manifest): a
directory may hold the sets of several databases (a --multirun over targets), and one
database's sets must never count against another's. decide_by_source() applies decide()
to each source's sets apart; a backup's retention (protect=) touches only the sets of the
source it just wrote, never another's nor one whose source cannot be told.

decide() is pure. Its promises, whatever the sets, the clock and the policy:
- the newest complete set is kept, and so is the newest complete set that is neither
  damaged nor dated in the future, and the newest complete set a verify passed;
- a set that is incomplete, damaged or unparseable is never deleted: it is kept and
  flagged, so the caller reports it (unless it is a stale incomplete set and the caller
  asked for those to go: prune incomplete=true);
- a set dated in the future (the clock is behind) is kept, and rules are computed
  without it, so a clock set back cannot make a current set look surplus;
- a policy that keeps more in every field keeps a superset (monotonicity).
Only pgvault's own files are ever deleted, a whole set at a time, manifest first, so an
interrupted prune leaves a set that reads as incomplete, never one that looks complete.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

from pgvault import catalog, naming, sources
from pgvault.config import RetentionConfig
from pgvault.errors import ConfigError, PgvaultError
from pgvault.store import LocalStore, Store

VERDICTS = ("verified", "failed")
# prune incomplete=true: how old a set without a manifest must be, by name and by mtime.
STALE_AFTER = timedelta(days=1)

# keep_* rule -> the UTC bucket a time falls in (restic's buckets; weeks are ISO weeks).
BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar())[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


@dataclass(frozen=True)
class Decision:
    """One set's fate: keep or not, the rule(s) that decided it, and whether someone
    should look at it (kept because something is wrong with it)."""

    prefix: str
    keep: bool
    reason: str
    flagged: bool = False
    source: str = ""  # sources.label of the set's source (decide_by_source)


@dataclass
class PruneResult:
    """What prune decided and deleted; in a dry run, deleted_* is what it would delete."""

    decisions: list[Decision]
    deleted_sets: list[str] = field(default_factory=list)
    deleted_files: int = 0
    dry_run: bool = False
    # A backup's retention: the label of the one source it pruned.
    scope: str | None = None
    # Of deleted_sets, the stale incomplete ones (incomplete=true).
    deleted_incomplete: list[str] = field(default_factory=list)


def check_policy(policy: RetentionConfig) -> None:
    """Refuse a policy that cannot be meant: a negative count, or every rule off (which
    would delete all but the newest set; keep_last=1 says that on purpose)."""
    counts = {"days": policy.days, **{f"keep_{n}": getattr(policy, f"keep_{n}") for n in
              ("last", *BUCKETS)}}  # fmt: skip
    negative = [k for k, v in counts.items() if v < 0]
    if negative:
        raise ConfigError(
            f"retention.{negative[0]} is {counts[negative[0]]}", "use 0 or more (0: rule off)"
        )
    if not any(counts.values()):
        raise ConfigError(
            "the retention policy keeps nothing: every rule is 0",
            "set retention.days or a keep_* rule (keep_last=1 keeps only the newest set)",
        )


# -- What retention needs to know about a set beyond its files' names ----------------


def verification_status(bset: catalog.BackupSet) -> str:
    """Given a set, return "verified" or "failed" from its verify record, else "never".

    A missing, unreadable or garbled record reads as "never": no verdict can be trusted
    from it, and listing must not fail because of it.
    """
    record = bset.verification()
    return record.verdict if record is not None else "never"


def damage(bset: catalog.BackupSet, *, check: bool = False) -> str | None:
    """Given a set with a manifest, return the first way its files disagree with it
    (an unreadable manifest, a size, or with check a sha256), or None."""
    if bset.manifest_error is not None:
        return bset.manifest_error
    if bset.manifest is None:
        return None
    problems = catalog.file_problems(bset, checksums=check)
    return problems[0] if problems else None


def incomplete_reason(bset: catalog.BackupSet) -> str:
    """What an incomplete set lacks, in a few words: "missing data.sql.zst, manifest.json"."""
    if bset.time is None:
        return "its name holds no valid date"
    rest = [k for k in bset.files if k != "verify"]
    if not rest and bset.partial:
        return "only .partial files: an interrupted backup"
    if not rest and "verify" in bset.files:
        return "only a verify record is left"
    missing = ", ".join(name.removeprefix(bset.prefix + "-") for name in bset.missing)
    text = f"missing {missing}" if missing else "no readable manifest"
    if bset.partial:
        text += f"; {len(bset.partial)} .partial file(s) left by an interrupted run"
    return text


# -- The decision --------------------------------------------------------------------


def decide(
    sets: list[catalog.BackupSet],
    policy: RetentionConfig,
    now: datetime,
    protect: str | None = None,
    *,
    damaged: Mapping[str, str] | None = None,
    verified: Collection[str] = (),
    stale: Mapping[str, str] | None = None,
) -> list[Decision]:
    """Given one source's sets, a policy, the time, the prefix just written (protect),
    what is damaged (prefix -> why), which prefixes a verify passed and which incomplete
    sets are to go (stale: prefix -> why), return one decision per set, newest first.
    Reads nothing but its arguments."""
    damaged, stale = damaged or {}, stale or {}
    ordered = sorted(sets, key=lambda s: s.prefix, reverse=True)
    complete = [s for s in ordered if s.complete]
    # The sets the rules count: complete, intact, and not from the future. Every other
    # set is kept whatever the policy, which keeps the rules monotone.
    pool = [s for s in complete if s.prefix not in damaged and s.time is not None and s.time <= now]
    reasons: dict[str, list[str]] = {s.prefix: [] for s in ordered}

    def keep(s: catalog.BackupSet, why: str) -> None:
        reasons[s.prefix].append(why)

    if complete:
        keep(complete[0], "newest complete set")
    if pool and pool[0] is not complete[0]:
        keep(pool[0], "newest intact set")
    for s in complete:
        if s.prefix in verified:
            keep(s, "newest verified set")
            break
    _apply_rules(pool, policy, now, keep)

    out = []
    for s in ordered:
        why = reasons[s.prefix]
        flag = _flag(s, damaged)
        if s.prefix == protect:
            out.append(Decision(s.prefix, True, ", ".join(["just written", *why])))
        elif flag is not None and s.prefix in stale and _leftover(s):
            out.append(Decision(s.prefix, False, f"{flag}, {stale[s.prefix]}"))
        elif flag is not None:
            out.append(Decision(s.prefix, True, f"{flag}: left for you to check", flagged=True))
        elif s.time is not None and s.time > now:
            out.append(Decision(s.prefix, True, "dated in the future (is the clock behind?)"))
        elif why:
            out.append(Decision(s.prefix, True, ", ".join(why)))
        else:
            out.append(Decision(s.prefix, False, _why_not(policy)))
    return out


def decide_by_source(
    sets: list[catalog.BackupSet],
    policy: RetentionConfig,
    now: datetime,
    protect: str | None = None,
    *,
    damaged: Mapping[str, str] | None = None,
    verified: Collection[str] = (),
    stale: Mapping[str, str] | None = None,
) -> list[Decision]:
    """decide() for each source's sets apart (sets without a readable manifest form a
    group of their own), so every source keeps its newest complete, intact and verified
    set. With protect (a backup's retention), only the sets of the source of the set just
    written are decided; every other set is left alone. One decision per set, newest
    first, each naming its source."""
    groups: dict[sources.Source | None, list[catalog.BackupSet]] = {}
    for s in sets:
        groups.setdefault(s.source, []).append(s)
    just = next((s for s in sets if s.prefix == protect), None)
    scope = just.source if just is not None else None
    out: list[Decision] = []
    for source, group in groups.items():
        if protect is not None and (source is None or not source.known or source != scope):
            decided = [_left_alone(s, damaged or {}, protect) for s in group]
        else:
            decided = decide(
                group, policy, now, protect, damaged=damaged, verified=verified, stale=stale
            )
        out += [replace(d, source=sources.label(source)) for d in decided]
    return sorted(out, key=lambda d: d.prefix, reverse=True)


def _left_alone(s: catalog.BackupSet, damaged: Mapping[str, str], protect: str) -> Decision:
    """A backup's retention on a set of another source: kept, and flagged as ever when
    something is wrong with it."""
    if s.prefix == protect:  # only when the new set's own source cannot be told
        return Decision(s.prefix, True, "just written")
    flag = _flag(s, damaged)
    if flag is not None:
        return Decision(s.prefix, True, f"{flag}: left for you to check", flagged=True)
    return Decision(s.prefix, True, "another source's set: pruned with its own backups")


def stale_incomplete(
    sets: list[catalog.BackupSet], now: datetime, *, locked: bool
) -> dict[str, str]:
    """The incomplete sets prune incomplete=true deletes (prefix -> why): no manifest at
    all (a backup killed before it, or a prune interrupted), dated more than a day ago by
    the name and by every file's mtime. Never one that may be in progress (locked: a
    pgvault process holds the directory), nor one beside a second data file (the user's
    copy, see catalog.scan), nor one whose manifest is there but unreadable (damaged)."""
    out = {}
    for i, s in enumerate(sorted(sets, key=lambda s: s.prefix, reverse=True)):
        paths, when = s.all_paths(), s.time
        if (
            when is None
            or not _leftover(s)
            or s.extras
            or not paths
            or now - when < STALE_AFTER
            or catalog.in_progress(s, locked=locked, newest=i == 0)
        ):
            continue
        try:
            touched = max(p.lstat().st_mtime for p in paths)
        except OSError:  # gone or unreadable meanwhile: leave it for the next prune
            continue
        if now.timestamp() - touched >= STALE_AFTER.total_seconds():
            out[s.prefix] = "untouched for over a day: deleted by incomplete=true"
    return out


def _leftover(s: catalog.BackupSet) -> bool:
    """A set prune incomplete=true may delete: no manifest, readable or not, and a name
    that holds a date."""
    return "manifest" not in s.files and s.manifest_error is None and s.time is not None


def _apply_rules(
    pool: list[catalog.BackupSet],
    policy: RetentionConfig,
    now: datetime,
    keep: Callable[[catalog.BackupSet, str], None],
) -> None:
    """Apply days, keep_last and the keep_* buckets to pool (newest first), restic's way:
    a bucket rule keeps the newest set of each of its N newest buckets that have sets,
    and, while it still has counts left, the oldest set too (the longest history)."""
    if policy.days > 0:
        for s in pool:
            assert s.time is not None
            if now - s.time < timedelta(days=policy.days):
                keep(s, f"younger than {policy.days} days")
    for s in pool[: max(policy.keep_last, 0)]:
        keep(s, f"keep_last {policy.keep_last}")
    for name, bucket in BUCKETS.items():
        left = getattr(policy, f"keep_{name}")
        last: tuple[int, ...] | None = None
        for i, s in enumerate(pool):
            if left <= 0:
                break
            assert s.time is not None
            key = bucket(s.time)
            if key != last or i == len(pool) - 1:
                keep(s, f"{name} {_bucket_label(name, s.time)}")
                last = key
                left -= 1


def _bucket_label(name: str, t: datetime) -> str:
    if name == "weekly":
        year, week, _ = t.isocalendar()
        return f"{year}-W{week:02d}"
    return t.strftime({"daily": "%Y-%m-%d", "monthly": "%Y-%m", "yearly": "%Y"}[name])


def _flag(s: catalog.BackupSet, damaged: Mapping[str, str]) -> str | None:
    """Why a set must not be deleted by a rule, or None when it is sound."""
    if s.time is None:
        return f"unparseable ({incomplete_reason(s)})"
    if s.manifest_error is not None:
        return f"damaged ({s.manifest_error})"
    if not s.complete:
        return f"incomplete ({incomplete_reason(s)})"
    if s.prefix in damaged:
        return f"damaged ({damaged[s.prefix]})"
    return None


def _why_not(policy: RetentionConfig) -> str:
    parts = [f"older than {policy.days} days"] if policy.days > 0 else []
    rules = [f"keep_{n}" for n in ("last", *BUCKETS) if getattr(policy, f"keep_{n}") > 0]
    if rules:
        parts.append(f"not kept by {', '.join(rules)}")
    return "; ".join(parts) or "no rule keeps it"


# -- Deleting ------------------------------------------------------------------------


def deletion_order(bset: catalog.BackupSet) -> list[Path]:
    """Every file of a set, in the order to delete them: the manifest first, so that
    from the first unlink on the set reads as incomplete; the verify record last."""
    order = ["manifest", "data", "schema", "roles"]
    paths = [bset.files[k] for k in order if k in bset.files]
    paths += [p for k, p in sorted(bset.files.items()) if k not in (*order, "verify")]
    paths += bset.partial
    if "verify" in bset.files:
        paths.append(bset.files["verify"])
    return paths


def delete_set(bset: catalog.BackupSet, store: Store | None = None) -> int:
    """Delete a set's files in deletion_order from its store (by default the directory
    it was scanned from); return how many were deleted."""
    where: Store = store or LocalStore(bset.directory)
    count = 0
    for i, p in enumerate(deletion_order(bset)):
        try:
            where.delete(p.name)
            count += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            raise PgvaultError(
                f"cannot delete {p}: {e.strerror}; {bset.prefix} now reads as incomplete",
                "fix the directory's permissions and run `pgvault prune` again",
            ) from None
        if i == 0:
            # The manifest's removal must reach the disk before any data file's does.
            where.sync()
    return count


def prune(
    directory: Path,
    policy: RetentionConfig,
    *,
    now: datetime,
    protect: str | None = None,
    dry_run: bool = False,
    check: bool = False,
    incomplete: bool = False,
) -> PruneResult:
    """Apply policy to each source's sets in directory (check: compare checksums too;
    incomplete: delete stale incomplete sets too). protect: the set a backup just wrote;
    then only its source's sets are pruned. The caller holds the directory's lock unless
    dry_run. Returns the decisions and what was deleted."""
    sets = catalog.scan(directory)
    by_prefix = {s.prefix: s for s in sets}
    damaged = {s.prefix: why for s in sets if s.complete and (why := damage(s, check=check))}
    verified = {s.prefix for s in sets if verification_status(s) == "verified"}
    stale: dict[str, str] = {}
    if incomplete:
        # Under our own lock no backup runs; a dry run takes none, so it asks.
        stale = stale_incomplete(sets, now, locked=dry_run and catalog.is_locked(directory))
    decisions = decide_by_source(
        sets, policy, now, protect, damaged=damaged, verified=verified, stale=stale
    )
    result = PruneResult(decisions, dry_run=dry_run)
    if protect is not None and protect in by_prefix:
        result.scope = sources.label(by_prefix[protect].source)
    for d in decisions:
        if d.keep or not naming.is_prefix(d.prefix):
            continue
        bset = by_prefix[d.prefix]
        result.deleted_files += len(deletion_order(bset)) if dry_run else delete_set(bset)
        result.deleted_sets.append(d.prefix)
        if d.prefix in stale:
            result.deleted_incomplete.append(d.prefix)
    return result
