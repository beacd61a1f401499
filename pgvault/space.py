"""Room for the next set: checked before a backup writes anything.

The estimate is the previous complete set of the same source as it lies on disk, else
the size of the database's tables (indexes are not dumped; a compressed dump is taken
to be a third of it). A guide, not a promise: monitor.min_free is the margin on top."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psycopg

from pgvault import catalog, sources, units
from pgvault.errors import PgvaultError

# How much smaller than its tables a gzip or zstd data dump is taken to be, at least.
COMPRESSED_SHARE = 3


class NoRoom(PgvaultError):
    """The backup directory's file system lacks room for the next set."""


def free_bytes(path: Path) -> int:
    """Free bytes for us on path's file system (or its nearest existing parent's)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    vfs = os.statvfs(probe)
    return vfs.f_bavail * vfs.f_frsize


def expected_size(
    directory: Path,
    source: sources.Source,
    pg: psycopg.Connection[tuple[Any, ...]],
    compression: str,
) -> int:
    """The next set's likely size in bytes."""
    if directory.is_dir():
        for bset in catalog.scan(directory):
            if bset.complete and bset.kind == "regular" and bset.source == source:
                if bset.compression == compression:
                    return bset.size
                break
    row = pg.execute(
        "SELECT coalesce(sum(relpages), 0)::bigint"
        " * pg_catalog.current_setting('block_size')::bigint"
        " FROM pg_catalog.pg_class WHERE relkind IN ('r', 'm', 't')"
        " AND relnamespace <> 'pg_catalog'::regnamespace"
    ).fetchone()
    tables = int(row[0]) if row else 0
    return tables // COMPRESSED_SHARE if compression != "none" else tables


def check_room(directory: Path, expected: int, min_free: str | None) -> None:
    """Refuse, before anything is written, when the free space is below the set's
    expected size plus monitor.min_free (None: no check)."""
    if min_free is None:
        return
    margin = units.parse_size(min_free, "monitor.min_free")
    free = free_bytes(directory)
    if free < expected + margin:
        raise NoRoom(
            f"not enough free space in {directory}: {units.size(free)} free, the set needs "
            f"about {units.size(expected)} plus monitor.min_free {min_free}",
            "free some space (pgvault prune), pick another dir, or lower monitor.min_free",
        )
