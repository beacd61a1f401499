"""The set a backup is writing, named in the directory before its first byte.

A backup killed between renaming its files and writing the manifest leaves files under
their final names and no manifest: a set that reads as incomplete and that nothing
else may delete (the seed's sets have no manifest either). The note names the prefix,
so the next backup in the directory (which holds its lock, as the killed one did) knows
that set as its own, removes it and writes a whole one: a retry never leaves a
duplicate or a half set behind.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from pgvault import naming, store

NOTE = ".pgvault-writing"


def begin(directory: Path, prefix: str) -> None:
    store.write_json_atomic(directory / NOTE, {"prefix": prefix})


def end(directory: Path) -> None:
    with contextlib.suppress(OSError):  # a note left names a set that is whole or gone
        (directory / NOTE).unlink()


def clear(directory: Path) -> list[Path]:
    """Remove what a killed backup left of the set it was writing (its manifest absent);
    call only while holding the directory's lock. Returns the files removed."""
    try:
        prefix = str(json.loads((directory / NOTE).read_text())["prefix"])
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError):
        prefix = ""  # unreadable: nothing is known to be ours, only the note goes
    removed = []
    if prefix and not (directory / naming.file_name(prefix, "manifest")).exists():
        for p in sorted(directory.iterdir()):
            parsed = naming.parse_file_name(p.name)
            if parsed is not None and parsed.prefix == prefix and (p.is_symlink() or p.is_file()):
                p.unlink()
                removed.append(p)
    end(directory)
    return removed
