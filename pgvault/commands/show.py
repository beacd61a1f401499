"""`pgvault show prefix=...`: what one set holds, from its manifest and verify record:
source and versions, files with sizes and checksums, tables with rows and sizes,
sequences, roles, and its verify history. It only reads."""

from __future__ import annotations

import json
from typing import Any

from pgvault import catalog, listing
from pgvault.catalog import BackupSet
from pgvault.commands import Context, Outcome
from pgvault.commands.list import emit
from pgvault.config import OutputFormat, PgvaultConfig
from pgvault.errors import NotFound
from pgvault.manifest import PastVerdict, VerifyRecord
from pgvault.ui import Reporter, mb


def run(cfg: PgvaultConfig, ui: Reporter, ctx: Context) -> Outcome:
    directory, prefix = catalog.resolve_prefix(cfg.show.prefix, cfg.dir, cfg.target)
    sets = catalog.scan(directory)
    found = next((s for s in sets if s.prefix == prefix), None)
    if found is None:
        raise NotFound(
            f"no backup set {prefix} in {directory}", f"`pgvault list dir={directory}` shows them"
        )
    bset = listing.assess(
        found, check=False, locked=catalog.is_locked(directory), newest=found is sets[0]
    )
    if cfg.show.format is OutputFormat.json:
        emit(ui, json.dumps(document(bset), indent=2))
    else:
        emit(ui, render_text(bset))
    return Outcome(prefix, bset.size)


def document(bset: BackupSet) -> dict[str, Any]:
    """The JSON `show format=json` prints: the set's status, its manifest and its verify
    record as written (their schemas are published)."""
    record = bset.verification()
    return {
        "prefix": bset.prefix,
        "directory": str(bset.directory),
        "status": bset.status,
        "problem": bset.problem,
        "manifest": bset.manifest.to_json() if bset.manifest is not None else None,
        "verification": record.to_json() if record is not None else None,
    }


def render_text(bset: BackupSet) -> str:
    m = bset.manifest
    lines = [
        f"{bset.prefix} in {bset.directory}",
        f"  status: {bset.status}" + (f" ({bset.problem})" if bset.problem else ""),
    ]
    if m is None:
        lines.append("  files:")
        lines += [f"    {f.name}  {mb(f.size)}" for f in bset.on_disk]
        return "\n".join(lines)
    lines += [
        f"  kind: {m.kind}"
        + (" (taken by a restore before it replaced the database)" if m.kind == "safety" else ""),
        f"  source: {listing.source_text(bset)} (env {m.env}, profile {m.profile})",
        f"  taken: {m.started_at.isoformat()} to {m.finished_at.isoformat()} on {m.host}",
        f"  versions: PostgreSQL {m.server_version}, pg_dump {m.dump_version}, "
        f"pgvault {m.tool_version} (manifest format {m.format})",
        f"  compression: {m.compression}",
        "  encryption: "
        + (
            f"{m.encryption.method}, to {', '.join(m.encryption.recipients)}"
            if m.encryption is not None
            else "none"
        ),
        "  files:",
    ]
    for entry in m.files.values():
        lines.append(f"    {entry.name}  {mb(entry.size)}  sha256 {entry.sha256}")
    if m.attachments is not None:
        objects = m.attachments.objects
        lines.append(
            f"  attachments: {len(objects)} object(s), {mb(sum(o.size for o in objects))}, "
            f"from bucket(s) {', '.join(m.attachments.buckets) or 'none'}"
        )
    lines.append(f"  tables ({len(m.tables)}, {sum(t.rows for t in m.tables.values())} rows):")
    width = max((len(n) for n in m.tables), default=0)
    for name, t in m.tables.items():
        size = f"  {mb(t.size)}" if t.size is not None else ""
        lines.append(f"    {name.ljust(width)}  {t.rows:>10} rows{size}")
    if m.sequences:
        lines.append(f"  sequences ({len(m.sequences)}):")
        for name, value in m.sequences.items():
            lines.append(f"    {name} = {'not yet used' if value is None else value}")
    lines.append(f"  roles ({len(m.roles)}): {', '.join(m.roles)}")
    if not m.role_passwords:
        lines.append("    (without passwords: the backup was not taken as a superuser)")
    record = bset.verification()
    if record is None:
        lines.append("  verified: never")
    else:
        lines.append("  verify history, newest first:")
        entries: list[VerifyRecord | PastVerdict] = [record, *record.history]
        for past in entries:
            lines.append(
                f"    {past.checked_at.isoformat()}  {past.verdict}"
                + (f"  {'; '.join(past.problems[:3])}" if past.problems else "")
            )
    return "\n".join(lines)
