"""Which sets to keep and which to delete, and why; then deleting them safely.

decide() is pure. Its promises: the newest complete set is always kept; a set that is
incomplete, damaged or unparseable is never deleted by age; only pgvault's own files
are ever deleted, manifest first, so an interrupted prune leaves an incomplete set.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from pgvault import catalog, naming
from pgvault.config import RetentionConfig
from pgvault.ui import Reporter


@dataclass(frozen=True)
class Decision:
    prefix: str
    keep: bool
    reason: str


@dataclass
class PruneResult:
    decisions: list[Decision]
    deleted_sets: list[str] = field(default_factory=list)
    deleted_files: int = 0


def decide(
    sets: list[catalog.BackupSet],
    policy: RetentionConfig,
    now: datetime,
    protect: str | None = None,
) -> list[Decision]:
    """Given the sets of a directory, a policy and the time, return one decision per set."""
    complete = sorted((s for s in sets if s.complete), key=lambda s: s.prefix, reverse=True)
    newest = complete[0].prefix if complete else None
    out = []
    for s in sorted(sets, key=lambda s: s.prefix, reverse=True):
        when = s.time
        if s.prefix == protect:
            out.append(Decision(s.prefix, True, "just written"))
        elif when is None:
            out.append(Decision(s.prefix, True, "unparseable name: left for you to check"))
        elif not s.complete:
            out.append(Decision(s.prefix, True, "incomplete: left for you to check"))
        elif s.prefix == newest:
            out.append(Decision(s.prefix, True, "newest complete set"))
        elif policy.days > 0 and now - when < timedelta(days=policy.days):
            out.append(Decision(s.prefix, True, f"younger than {policy.days} days"))
        else:
            out.append(Decision(s.prefix, False, f"older than {policy.days} days"))
    return out


def delete_set(bset: catalog.BackupSet) -> int:
    """Delete a set's files, manifest first: a half-deleted set then reads as incomplete."""
    order = ["manifest", "data", "schema", "roles", "verify"]
    paths: list[Path] = [bset.files[k] for k in order if k in bset.files]
    paths += [p for k, p in bset.files.items() if k not in order] + bset.partial
    count = 0
    for i, p in enumerate(paths):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            count += 1
        if i == 0:
            catalog.fsync_dir(p.parent)
    return count


def prune(
    directory: Path,
    policy: RetentionConfig,
    *,
    now: datetime,
    protect: str | None = None,
    dry_run: bool = False,
) -> PruneResult:
    """Apply policy to directory. The caller holds the directory's lock."""
    sets = catalog.scan(directory)
    by_prefix = {s.prefix: s for s in sets}
    decisions = decide(sets, policy, now, protect)
    result = PruneResult(decisions)
    if dry_run:
        return result
    for d in decisions:
        if not d.keep and naming.is_prefix(d.prefix):
            result.deleted_files += delete_set(by_prefix[d.prefix])
            result.deleted_sets.append(d.prefix)
    return result


def report(ui: Reporter, result: PruneResult) -> None:
    if result.deleted_sets:
        ui.ok(
            f"Cleaned up {len(result.deleted_sets)} old backup set(s) "
            f"({result.deleted_files} files)"
        )
    else:
        ui.ok("No old backups to clean up")
