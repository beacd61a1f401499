"""`pgvault list` and `pgvault prune`: what a backup directory holds, and retention on demand.

list only reads: it takes no lock and creates nothing, and it reads no backup file's
contents unless check=true (checksums); sizes come from stat and are always compared
with the manifest. Every set is shown, whatever is wrong with it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pgvault import catalog, naming, retention
from pgvault.config import OutputFormat, PgvaultConfig
from pgvault.errors import PgvaultError
from pgvault.ui import Reporter, mb

Clock = Callable[[], datetime]

STATUSES = ("complete", "incomplete", "damaged", "in progress")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class FileView:
    name: str
    kind: str
    size: int
    partial: bool


@dataclass(frozen=True)
class SetView:
    """One set as `pgvault list` shows it. status is one of STATUSES; problem says what
    is wrong when it is not complete; verification is verified, failed or never."""

    prefix: str
    time: datetime | None
    size: int
    compression: str | None
    status: str
    problem: str | None
    verification: str
    verification_checked_at: str | None
    files: tuple[FileView, ...]


def inspect(bset: catalog.BackupSet, *, check: bool, locked: bool, newest: bool) -> SetView:
    """Given a scanned set, whether to compare checksums, whether a pgvault process holds
    the directory's lock and whether this is the newest set, return how to show it."""
    files = _file_views(bset)
    problem: str | None = None
    if bset.complete:
        problem = retention.damage(bset, check=check)
        status = "damaged" if problem else "complete"
    elif locked and (bset.partial or (newest and bset.manifest is None)):
        # A running backup writes .partial files, renames them, then writes the
        # manifest; in between, its set is the newest one and has no manifest yet.
        status = "in progress"
    elif bset.manifest_error is not None and bset.files["manifest"].exists():
        status, problem = "damaged", bset.manifest_error
    elif bset.manifest_error is not None:  # gone while we read it: a prune at work
        status, problem = "incomplete", "missing manifest.json"
    else:
        status, problem = "incomplete", retention.incomplete_reason(bset)
    record = retention.read_verification(bset)
    checked_at = record.get("checked_at") if record else None
    return SetView(
        prefix=bset.prefix,
        time=bset.time,
        size=sum(f.size for f in files),
        compression=_compression(bset),
        status=status,
        problem=problem,
        verification=str(record["verdict"]) if record else "never",
        verification_checked_at=checked_at if isinstance(checked_at, str) else None,
        files=files,
    )


def _file_views(bset: catalog.BackupSet) -> tuple[FileView, ...]:
    out = []
    for path in sorted(bset.all_paths()):
        parsed = naming.parse_file_name(path.name)
        with contextlib.suppress(FileNotFoundError):  # a concurrent prune removed it
            size = path.stat().st_size
            kind = parsed.kind if parsed else "?"
            out.append(FileView(path.name, kind, size, path in bset.partial))
    return tuple(out)


def _compression(bset: catalog.BackupSet) -> str | None:
    if bset.manifest is not None and isinstance(bset.manifest.get("compression"), str):
        return str(bset.manifest["compression"])
    for path in bset.all_paths():
        parsed = naming.parse_file_name(path.name)
        if parsed is not None and parsed.kind == "data":
            return parsed.compression
    return None


def view_directory(directory: Path, *, check: bool) -> list[SetView]:
    """Every set in directory, newest first, as `pgvault list` shows it."""
    try:
        sets = catalog.scan(directory)
    except OSError as e:
        raise PgvaultError(f"cannot read {directory}: {e.strerror}", "check its permissions") from e
    locked = bool(sets) and catalog.is_locked(directory)
    return [inspect(s, check=check, locked=locked, newest=(i == 0)) for i, s in enumerate(sets)]


# -- Rendering -----------------------------------------------------------------------


def age_text(seconds: float) -> str:
    """A short age: "42m", "3h 5m", "12d 4h"; "in 2h 0m" for a time in the future."""
    s = int(abs(seconds))
    if s < 3600:
        text = f"{s // 60}m"
    elif s < 86400:
        text = f"{s // 3600}h {s % 3600 // 60}m"
    else:
        text = f"{s // 86400}d {s % 86400 // 3600}h"
    return f"in {text}" if seconds < 0 else text


def local_time_text(when: datetime) -> str:
    """when in the user's local time zone (TZ), with the zone's name."""
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def utc_text(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def render_text(directory: Path, views: list[SetView], now: datetime, check: bool) -> str:
    """The table `pgvault list` prints: a header, one line per set, a summary."""
    header = ("PREFIX", "TIME", "AGE", "SIZE", "COMPRESSION", "STATUS", "VERIFIED")
    rows = [header]
    for v in views:
        rows.append(
            (
                v.prefix,
                local_time_text(v.time) if v.time else "?",
                age_text((now - v.time).total_seconds()) if v.time else "?",
                mb(v.size),
                v.compression or "?",
                v.status,
                v.verification,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"Backups in {directory}, newest first:"]
    problems: list[str | None] = [None, *(v.problem for v in views)]
    for row, problem in zip(rows, problems, strict=True):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        if problem:
            line += f"  {problem}"
        lines.append(line.rstrip())
    bad = sum(v.status in ("incomplete", "damaged") for v in views)
    summary = f"{len(views)} set(s), {mb(sum(v.size for v in views))}"
    if bad:
        summary += f"; {bad} need(s) a look"
    if not check:
        summary += "; sizes checked, checksums not (check=true reads every file)"
    lines.append(summary)
    return "\n".join(lines)


def render_json(directory: Path, views: list[SetView], now: datetime, check: bool) -> str:
    """The document `pgvault list format=json` prints: exact bytes, UTC times."""
    doc: dict[str, Any] = {
        "directory": str(directory),
        "now": utc_text(now),
        "checksums_checked": check,
        "sets": [
            {
                "prefix": v.prefix,
                "time": utc_text(v.time) if v.time else None,
                "age_seconds": int((now - v.time).total_seconds()) if v.time else None,
                "size_bytes": v.size,
                "compression": v.compression,
                "status": v.status,
                "problem": v.problem,
                "verification": v.verification,
                "verification_checked_at": v.verification_checked_at,
                "files": [
                    {"name": f.name, "kind": f.kind, "size_bytes": f.size, "partial": f.partial}
                    for f in v.files
                ],
            }
            for v in views
        ],
    }
    return json.dumps(doc, indent=2)


def _emit(ui: Reporter, text: str) -> None:
    """Print a command's answer as it is: not chatter, so quiet does not hide it; and
    written straight to the console's file, as rich takes ~0.3 s to lay out 1,000 sets."""
    ui.out.file.write(text + "\n")
    ui.out.file.flush()


# -- Commands ------------------------------------------------------------------------


def run_list(cfg: PgvaultConfig, ui: Reporter, *, clock: Clock = utc_now) -> list[SetView]:
    """Given a config (dir, format, check), print the directory's sets; return them.
    A missing directory holds no backups: that is an answer, not an error."""
    directory = catalog.backup_dir(cfg.dir, create=False)
    views = view_directory(directory, check=cfg.check)
    now = clock()
    if cfg.format is OutputFormat.json:
        _emit(ui, render_json(directory, views, now, cfg.check))
    elif not views:
        _emit(ui, f"No backups found in {directory}.")
    else:
        _emit(ui, render_text(directory, views, now, cfg.check))
    return views


def run_prune(
    cfg: PgvaultConfig, ui: Reporter, *, clock: Clock = utc_now
) -> retention.PruneResult | None:
    """Given a config (dir, retention, dry_run, check), apply retention to the directory
    under its lock, or with dry_run=true only show each set's fate. Returns the result,
    or None when the directory does not exist."""
    directory = catalog.backup_dir(cfg.dir, create=False)
    retention.check_policy(cfg.retention)
    if not directory.exists():
        ui.say(f"No backups found in {directory}.")
        return None
    try:
        if cfg.dry_run:  # reads only, like list: no lock, so it works on a read-only dir
            result = _prune(cfg, directory, clock)
        else:
            with catalog.locked(directory, timeout=cfg.lock_timeout, what="prune"):
                result = _prune(cfg, directory, clock)
    except OSError as e:
        raise PgvaultError(
            f"cannot prune {directory}: {e.strerror}", "check the directory's permissions"
        ) from e
    if cfg.dry_run:
        ui.say(f"Retention in {directory} ({policy_text(cfg)}), dry run:")
        for d in result.decisions:
            ui.say(f"  {'keep' if d.keep else 'delete':6}  {d.prefix}  {d.reason}")
    else:
        for prefix in result.deleted_sets:
            ui.say(f"  deleted {prefix}")
    retention.report(ui, result)
    return result


def _prune(cfg: PgvaultConfig, directory: Path, clock: Clock) -> retention.PruneResult:
    return retention.prune(
        directory, cfg.retention, now=clock(), dry_run=cfg.dry_run, check=cfg.check
    )


def policy_text(cfg: PgvaultConfig) -> str:
    """The policy's switched-on rules: "days=7, keep_last=3"."""
    r = cfg.retention
    names = ("days", "keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
    rules = [f"{n}={getattr(r, n)}" for n in names if getattr(r, n) > 0]
    return ", ".join(rules) or "no rules: only the newest sets are kept"
