"""What a backup directory holds, as `pgvault list` shows it: each set's status, and the
table and JSON document made of them.

Listing only reads: it takes no lock and creates nothing, and it reads no backup file's
contents unless check=true (checksums); sizes come from stat and are always compared
with the manifest. Every set is shown, whatever is wrong with it.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from pgvault import catalog, naming, retention
from pgvault.catalog import BackupSet, DiskFile
from pgvault.errors import PgvaultError
from pgvault.ui import mb

SCHEMA_ID = "https://pgvault.dev/schemas/list.schema.json"


def assess(bset: BackupSet, *, check: bool, locked: bool, newest: bool) -> BackupSet:
    """Given a scanned set, whether to compare checksums, whether a pgvault process holds
    the directory's lock and whether this is the newest set, fill in its status, problem
    and files as found; return it."""
    bset.on_disk = _disk_files(bset)
    problem: str | None = None
    if bset.complete:
        problem = retention.damage(bset, check=check)
        status = "damaged" if problem else "complete"
    elif catalog.in_progress(bset, locked=locked, newest=newest):
        status = "in progress"
    elif bset.manifest_error is not None and bset.files["manifest"].exists():
        status, problem = "damaged", bset.manifest_error
    elif bset.manifest_error is not None:  # gone while we read it: a prune at work
        status, problem = "incomplete", "missing manifest.json"
    else:
        status, problem = "incomplete", retention.incomplete_reason(bset)
    bset.status, bset.problem = status, problem
    return bset


def _disk_files(bset: BackupSet) -> tuple[DiskFile, ...]:
    out = []
    partial = {p.name for p in bset.partial}
    for path in sorted(bset.all_paths(), key=lambda p: p.name):  # all in one directory
        parsed = naming.parse_file_name(path.name)
        with contextlib.suppress(FileNotFoundError):  # a concurrent prune removed it
            size = os.stat(path).st_size
            kind = parsed.kind if parsed else "?"
            out.append(DiskFile(path.name, kind, size, path.name in partial))
    return tuple(out)


def _compression(bset: BackupSet) -> str | None:
    if bset.manifest is not None:
        return bset.manifest.compression
    return bset.compression if "data" in bset.files else None


def encryption_of(bset: BackupSet) -> str | None:
    """How the set's files are encrypted ("age"), None when they are not; without a
    manifest, what their names say."""
    if bset.manifest is not None:
        m = bset.manifest.encryption
        return m.method if m is not None else None
    encrypted = any(p.name.endswith(naming.ENCRYPTED_SUFFIX) for p in bset.all_paths())
    return "age" if encrypted else None


def view_directory(directory: Path, *, check: bool) -> list[BackupSet]:
    """Every set in directory, newest first, assessed."""
    try:
        sets = catalog.scan(directory)
    except OSError as e:
        raise PgvaultError(f"cannot read {directory}: {e.strerror}", "check its permissions") from e
    locked = bool(sets) and catalog.is_locked(directory)
    return [assess(s, check=check, locked=locked, newest=(i == 0)) for i, s in enumerate(sets)]


def source_text(bset: BackupSet) -> str:
    """Where a set came from: "crm 127.0.0.1:5432/crm PG 15.8" ("?" without a manifest)."""
    m = bset.manifest
    if m is None:
        return "?"
    where = f"{m.server}/{m.database}" if m.server else m.database
    return f"{m.target} {where} PG {m.server_version.split(' ')[0]}"


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


def _size(bset: BackupSet) -> int:
    return sum(f.size for f in bset.on_disk)


def render_text(directory: Path | str, sets: list[BackupSet], now: datetime, check: bool) -> str:
    """The table `pgvault list` prints: a header, one line per set, a summary."""
    header = (
        "PREFIX",
        "TIME",
        "AGE",
        "SIZE",
        "COMPRESSION",
        "STATUS",
        "VERIFIED",
        "KIND",
        "SOURCE",
    )
    rows = [header]
    for s in sets:
        record = s.verification()
        rows.append(
            (
                s.prefix,
                local_time_text(s.time) if s.time else "?",
                age_text((now - s.time).total_seconds()) if s.time else "?",
                mb(_size(s)),
                (_compression(s) or "?") + (f"+{e}" if (e := encryption_of(s)) else ""),
                s.status,
                record.verdict if record else "never",
                s.kind,
                source_text(s),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"Backups in {directory}, newest first:"]
    problems: list[str | None] = [None, *(s.problem for s in sets)]
    for row, problem in zip(rows, problems, strict=True):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        if problem:
            line += f"  {problem}"
        lines.append(line.rstrip())
    bad = sum(s.status in ("incomplete", "damaged") for s in sets)
    summary = f"{len(sets)} set(s), {mb(sum(_size(s) for s in sets))}"
    if bad:
        summary += f"; {bad} need(s) a look"
    if not check:
        summary += "; sizes checked, checksums not (check=true reads every file)"
    lines.append(summary)
    return "\n".join(lines)


# -- The JSON document (its schema is published: scripts rely on it) -----------------


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListedFile(_Doc):
    name: str
    kind: str
    size_bytes: int
    partial: bool


class ListedSource(_Doc):
    target: str
    env: str
    server: str | None  # host:port as the backup reached it; null for old sets
    database: str
    server_version: str


class ListedSet(_Doc):
    prefix: str
    time: str | None  # UTC, from the prefix; null when the name holds no valid date
    age_seconds: int | None
    size_bytes: int
    compression: str | None
    encryption: str | None = None  # "age" when the set's files are encrypted
    status: str  # complete, incomplete, damaged or in progress
    problem: str | None
    kind: str  # regular or safety
    source: ListedSource | None  # null without a readable manifest
    verification: str  # verified, failed or never
    verification_checked_at: str | None
    files: list[ListedFile]


class ListDocument(_Doc):
    format: Literal[1] = 1  # raised when a field changes meaning or goes away
    directory: str
    now: str
    checksums_checked: bool
    sets: list[ListedSet]


def document(
    directory: Path | str, sets: list[BackupSet], now: datetime, check: bool
) -> ListDocument:
    """The document `pgvault list format=json` prints: exact bytes, UTC times."""
    out = []
    for s in sets:
        record = s.verification()
        m = s.manifest
        source = None
        if m is not None:
            source = ListedSource(
                target=m.target,
                env=m.env,
                server=m.server,
                database=m.database,
                server_version=m.server_version,
            )
        out.append(
            ListedSet(
                prefix=s.prefix,
                time=utc_text(s.time) if s.time else None,
                age_seconds=int((now - s.time).total_seconds()) if s.time else None,
                size_bytes=_size(s),
                compression=_compression(s),
                encryption=encryption_of(s),
                status=s.status,
                problem=s.problem,
                kind=s.kind,
                source=source,
                verification=record.verdict if record else "never",
                verification_checked_at=utc_text(record.checked_at) if record else None,
                files=[
                    ListedFile(name=f.name, kind=f.kind, size_bytes=f.size, partial=f.partial)
                    for f in s.on_disk
                ],
            )
        )
    return ListDocument(
        directory=str(directory), now=utc_text(now), checksums_checked=check, sets=out
    )


def render_json(directory: Path | str, sets: list[BackupSet], now: datetime, check: bool) -> str:
    return document(directory, sets, now, check).model_dump_json(indent=2)


def json_schema() -> dict[str, object]:
    schema = ListDocument.model_json_schema()
    schema["title"] = "pgvault list format=json"
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}
