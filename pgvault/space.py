"""Room for the next set: checked before a backup writes anything.

The estimate is the previous complete set of the same source as it lies on disk, else
the size of the database's tables (indexes are not dumped; a compressed dump is taken
to be a third of it). A killed run's `.partial` files are removed before the check.
A guide, not a promise: monitor.min_free is the margin on top."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

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
    directory: Path, source: sources.Source, compression: str, tables: Callable[[], int | None]
) -> int:
    """The next set's likely size in bytes: the previous regular set of source with the
    same compression, else tables() (the database's table bytes), a third of it compressed."""
    previous = catalog.previous_set(directory, source)
    if previous is not None and previous.compression == compression:
        return previous.size
    size = tables() or 0
    return size // COMPRESSED_SHARE if compression != "none" else size


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
